"""SSD's training augmentation (Liu et al. 2016, sections 2.2 and 3.6) as albumentations transforms.

PhotometricDistort -> Expand -> MinIoURandomCrop, then DetectionTransform's flip and letterbox. The references
are the paper's caffe code (weiliu89/caffe, branch ssd), torchvision's RandomPhotometricDistort, RandomZoomOut
and RandomIoUCrop, and mmdetection's PhotoMetricDistortion, Expand and MinIoURandomCrop; where they disagree,
each place says which it follows (the distortion: caffe's; the crop: torchvision's).

Every draw comes from albumentations' generators (`self.py_random`, `self.random_generator`), so the
pipeline's seed repeats it. Boxes reach `apply_to_bboxes` in albumentations' internal format, xyxy divided by
the input's width and height; after each step the pipeline's BboxParams clip them to the new image and drop
those cut below `min_visibility`; DetectionTransform drops those under `min_box_size` input pixels at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.bbox_utils import denormalize_bboxes
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field
from torchvision.ops import box_iou


class PhotometricDistort(A.ImageOnlyTransform):
    """Howard (2013)'s colour distortions as SSD's caffe code applies them to a uint8 RGB image.

    Each step happens with probability 0.5, in the order brightness, contrast, saturation, hue, or (also with
    probability 0.5) brightness, saturation, hue, contrast:
    brightness: add d ~ U(-brightness_delta, brightness_delta) to every channel (0..255 pixel values).
    contrast:   multiply every channel by a ~ U(contrast_range) (caffe and mmdetection: no mean centring).
    saturation: multiply HSV's S by s ~ U(saturation_range).
    hue:        add h ~ U(-hue_delta, hue_delta) degrees to HSV's H, modulo 360 (18 degrees: mmdetection's
                delta, torchvision's 0.05 of the circle).
    Values are clipped to [0, 255] after each step, as caffe's uint8 steps saturate. Caffe's optional channel
    reordering is off in SSD's configs and left out.
    """

    class InitSchema(BaseTransformInitSchema):
        brightness_delta: float = Field(ge=0, le=255)
        contrast_range: tuple[float, float]
        saturation_range: tuple[float, float]
        hue_delta: float = Field(ge=0, le=180)

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        """Each factor, or None where its step is skipped."""
        rand = self.py_random

        def maybe(low: float, high: float) -> float | None:
            return rand.uniform(low, high) if rand.random() < 0.5 else None

        return {
            "brightness": maybe(-self.brightness_delta, self.brightness_delta),
            "contrast": maybe(*self.contrast_range),
            "contrast_last": rand.random() < 0.5,
            "saturation": maybe(*self.saturation_range),
            "hue": maybe(-self.hue_delta, self.hue_delta),
        }

    def apply(
        self,
        img: np.ndarray,
        brightness: float | None,
        contrast: float | None,
        contrast_last: bool,
        saturation: float | None,
        hue: float | None,
        **params: Any,
    ) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise TypeError(f"PhotometricDistort takes a uint8 RGB image [H, W, 3], got {img.dtype} {img.shape}")
        out = img.astype(np.float32)
        if brightness is not None:
            out = np.clip(out + brightness, 0, 255)
        if contrast is not None and not contrast_last:
            out = np.clip(out * contrast, 0, 255)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # float32: H in degrees [0, 360), S in [0, 1], V = max
            if saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
            if hue is not None:
                hsv[..., 0] = np.mod(hsv[..., 0] + hue, 360)
            out = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 255)
        if contrast is not None and contrast_last:
            out = np.clip(out * contrast, 0, 255)
        return np.round(out).astype(np.uint8)


class Expand(A.Pad):
    """SSD's zoom out: place the image at a random position of a canvas `ratio` times its size, ratio ~
    U(1, max_ratio), filled with `fill` (the mean colour). The canvas is int(h * ratio) x int(w * ratio) and the
    image's top-left corner (left, top) is uniform over the positions where it fits (mmdetection's Expand,
    torchvision's RandomZoomOut). A constant Pad whose four paddings are drawn per call, so boxes, masks and
    keypoints shift by (left, top) exactly as albumentations' Pad moves them.
    """

    class InitSchema(BaseTransformInitSchema):
        max_ratio: float = Field(ge=1)
        fill: tuple[float, ...] | float

    def __init__(self, max_ratio: float = 4.0, fill: tuple[float, ...] | float = 0, p: float = 0.5) -> None:
        super().__init__(padding=0, fill=fill, border_mode=cv2.BORDER_CONSTANT, p=p)
        self.max_ratio = max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        left = int(self.py_random.uniform(0, canvas_w - width))
        top = int(self.py_random.uniform(0, canvas_h - height))
        return {
            "ratio": ratio,
            "pad_left": left,
            "pad_top": top,
            "pad_right": canvas_w - width - left,
            "pad_bottom": canvas_h - height - top,
        }


class MinIoURandomCrop(BaseCrop):
    """SSD's patch sampling: crop the image to a patch that overlaps its objects, keep the objects whose centre
    lies in the patch and clip them to it.

    A constraint is drawn uniformly from (whole image, *min_ious); the whole image leaves the input as it is.
    For a threshold t, `trials` patches are drawn with sides of U(min_scale, 1) times the image's, whole pixels,
    uniformly placed; the first that fits is taken. A patch fits when its aspect ratio (width / height in
    pixels) is in aspect_range and at least one object with its centre strictly inside it has IoU >= t with it
    (torchvision's RandomIoUCrop; mmdetection asks it of every object). The caffe code differs: any object's IoU
    counts, centre inside or not; each constraint draws its own patches (area scale^2 of the image, scale ~
    U(0.3, 1), aspect ratio in image-normalised units) and one of the constraints' fitting patches, the whole
    image among them, is picked at random (caffe/src/caffe/util/sampler.cpp).
    When no trial fits, another constraint is drawn; the whole image ends that loop. An image without objects
    takes any patch of the right shape. min_iou 0 is the paper's "randomly sample a patch" (caffe,
    torchvision and mmdetection all have it).

    Applied params (`save_applied_params`): crop_coords (x1, y1, x2, y2) in input pixels and min_iou (None for
    the whole image). The objects' clipping, and the size and visibility filters, are the pipeline's BboxParams.
    """

    class InitSchema(BaseTransformInitSchema):
        min_ious: tuple[float, ...]
        min_scale: float = Field(gt=0, le=1)
        aspect_range: tuple[float, float]
        trials: int = Field(ge=1)

    def __init__(
        self,
        min_ious: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
        min_scale: float = 0.3,
        aspect_range: tuple[float, float] = (0.5, 2.0),
        trials: int = 50,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.min_ious = tuple(min_ious)
        self.min_scale = min_scale
        self.aspect_range = aspect_range
        self.trials = trials

    @property
    def targets_as_params(self) -> list[str]:
        return ["bboxes"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        boxes_xyxy = denormalize_bboxes(np.asarray(data["bboxes"]), params["shape"][:2])[:, :4]
        min_iou, crop_coords = self.sample_patch(boxes_xyxy.reshape(-1, 4), *params["shape"][:2])
        return {"crop_coords": crop_coords, "min_iou": min_iou}

    def sample_patch(
        self, boxes_xyxy: np.ndarray, height: int, width: int
    ) -> tuple[float | None, tuple[int, int, int, int]]:
        """`boxes_xyxy [N, 4]` in pixels of a `height` x `width` image -> (threshold or None, patch x1 y1 x2 y2)."""
        options = (None, *self.min_ious)
        while True:  # ends: each round draws the whole image with probability 1 / len(options)
            min_iou = self.py_random.choice(options)
            if min_iou is None:
                return None, (0, 0, width, height)
            patches = self._random_patches(height, width)
            fits = _shape_fits(patches, self.aspect_range) & _overlap_fits(boxes_xyxy, patches, min_iou)
            if fits.any():  # the first trial that fits, as a loop over the trials would take
                return min_iou, tuple(int(v) for v in patches[fits.argmax()])

    def _random_patches(self, height: int, width: int) -> np.ndarray:
        """[trials, 4] candidate patches x1 y1 x2 y2 in whole pixels, uniformly placed (torchvision's draws)."""
        image_wh = np.array([width, height])
        size_wh = (image_wh * self.random_generator.uniform(self.min_scale, 1.0, (self.trials, 2))).astype(int)
        corner = ((image_wh - size_wh) * self.random_generator.random((self.trials, 2))).astype(int)
        return np.concatenate([corner, corner + size_wh], axis=1)

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        """Drop the boxes whose centre is outside the patch, then shift the rest into it (BaseCrop)."""
        if len(bboxes) == 0:
            return bboxes
        keep = centres_inside(denormalize_bboxes(bboxes, params["shape"][:2])[:, :4], crop_coords)
        return super().apply_to_bboxes(bboxes[keep], crop_coords, **params)


def centres_inside(boxes_xyxy: np.ndarray, patches: np.ndarray | Sequence[float]) -> np.ndarray:
    """[..., N] bool: the centre of each of `boxes_xyxy [N, 4]` lies strictly inside each of `patches [..., 4]`."""
    patches = np.asarray(patches, dtype=np.float64)[..., None, :]
    cx = (boxes_xyxy[:, 0] + boxes_xyxy[:, 2]) / 2
    cy = (boxes_xyxy[:, 1] + boxes_xyxy[:, 3]) / 2
    return (patches[..., 0] < cx) & (cx < patches[..., 2]) & (patches[..., 1] < cy) & (cy < patches[..., 3])


def _shape_fits(patches: np.ndarray, aspect_range: tuple[float, float]) -> np.ndarray:
    """[T] bool: each of `patches [T, 4]` has an area and a width / height within aspect_range."""
    w, h = patches[:, 2] - patches[:, 0], patches[:, 3] - patches[:, 1]
    aspect = w / np.maximum(h, 1)
    return (w > 0) & (h > 0) & (aspect_range[0] <= aspect) & (aspect <= aspect_range[1])


def _overlap_fits(boxes_xyxy: np.ndarray, patches: np.ndarray, min_iou: float) -> np.ndarray:
    """[T] bool: an object with its centre in the patch overlaps it by IoU >= min_iou; any patch fits no object."""
    if len(boxes_xyxy) == 0:
        return np.ones(len(patches), dtype=bool)
    iou = box_iou(torch.from_numpy(patches).double(), torch.from_numpy(boxes_xyxy).double()).numpy()  # [T, N]
    return (centres_inside(boxes_xyxy, patches) & (iou >= min_iou)).any(axis=1)
