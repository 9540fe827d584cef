"""Resize, augment and normalise one image with its boxes, and record the geometry.

Three resize policies (`resize`):
- "letterbox" (detlab's default): the longest side to image_size, padded to a square (albumentations, below).
- "keep_ratio" (torchvision's detectors): the shorter side to image_size unless the longer would then exceed
  max_size, keeping the aspect ratio; the collate pads the batch to a multiple of size_divisor.
- "stretch" (torchvision's SSD): exactly image_size x image_size, aspect ratio not kept.
The last two follow torchvision's GeneralizedRCNNTransform to the float: pixels / 255, normalised, then
resized with torch's bilinear interpolation (`recompute_scale_factor=True`), so that a torchvision preset sees
the pixels torchvision's own model sees. Their augmentations (flip, colour, SSD's expand and crop) run before
the resize, in albumentations, as in the letterbox pipeline.

The letterbox pipeline:

Train: SSD's photometric distortions -> SSD's expand (zoom out) -> SSD's min-IoU crop (the three default off;
detlab.data.ssd_augment) -> horizontal flip -> resize the longest side to image_size * r (r drawn from
scale_range) -> colour jitter -> pad bottom/right to image_size x image_size -> random image_size crop when
r > 1 -> normalise. Eval is the same transform with every augmentation off: resize the longest side to
image_size, pad bottom/right, normalise. Boxes follow the pixels (pascal_voc xyxy); after every step, boxes cut
below `min_visibility` of their area are dropped; at the end, under every resize policy, boxes narrower or
shorter than `min_box_size` input pixels are dropped (once, in the input's pixels: a step before the resize
measures the original's, which an upscale would enlarge), so no degenerate box comes out.

The letterbox pads with the ImageNet mean colour, which normalises to ~0 like the collate's zero padding.

Meta (`scale`, `offset`, content `size`) is read from the parameters the pipeline actually applied
(albumentations' `save_applied_params`), not re-derived, so it is exact in eval and in train:
sx = resized width / width before the resize (the factor albumentations applies to boxes, and cv2 to pixels),
offset = sx * (expand's corner - SSD crop's corner) - the random crop's corner. The meta leaves the flip out:
in training it maps the original to the input up to that mirror; nothing uses train meta to map boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from detlab.data.ssd_augment import Expand, MinIoURandomCrop, PhotometricDistort
from detlab.errors import ConfigError, DataError, check_non_negative, is_number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)
RESIZE_POLICIES = ("letterbox", "keep_ratio", "stretch")


@dataclass
class Sample:
    """One transformed image with its targets and the map back to the original (see detlab.structures).

    image:     [3, H, W] float32, normalised.
    boxes:     [N, 4] float32 xyxy in input pixels.
    labels:    [N] int64 contiguous class index.
    image_id:  the dataset's original image id.
    size:      (h, w) of the image content in input pixels; the rest of `image` is padding.
    orig_size: (h, w) of the original image.
    scale, offset: (sx, sy), (ox, oy) with input = original * scale + offset.
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor
    image_id: int
    size: tuple[int, int]
    orig_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]


class DetectionTransform:
    """`transform(image [H, W, 3] uint8 RGB, boxes_xyxy [N, 4], labels [N], image_id) -> Sample`.

    DetectionTransform(image_size) is the eval transform; the augmentation arguments make it the train one:
    hflip:          probability of a horizontal flip.
    scale_range:    (low, high) factors of image_size for the resized longest side; (1, 1) disables.
    color_jitter:   strength of brightness/contrast/saturation jitter (hue a quarter of it); 0 disables.
    min_visibility: drop a box that keeps less than this fraction of its area after a crop.
    min_box_size:   drop a box narrower or shorter than this, in input pixels.
    photometric:    SSD's brightness, contrast, saturation and hue distortions, each with probability 0.5.
    expand_ratio:   SSD's zoom out: with probability 0.5, the image on a mean-colour canvas U(1, expand_ratio)
                    times its size; 1 disables (SSD: 4).
    min_iou_crop:   SSD's crop to a patch overlapping an object by a min IoU drawn from (0, 0.1, 0.3, 0.5, 0.7,
                    0.9) or the whole image; the objects whose centre is in the patch stay, clipped to it.
    seed:           seed of the augmentation random state (see `reseed`); None = a random one.
    resize:         "letterbox" | "keep_ratio" | "stretch" (see the module's docstring).
    max_size:       keep_ratio's bound on the longer side (torchvision: 1333 for image_size 800).
    mean, std:      per-channel normalisation of pixels in [0, 1] (ImageNet's by default; torchvision's
                    SSD300: mean (0.48235, 0.45882, 0.40784), std 1 / 255).
    """

    def __init__(
        self,
        image_size: int,
        hflip: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        color_jitter: float = 0.0,
        min_visibility: float = 0.0,
        min_box_size: float = 1.0,
        photometric: bool = False,
        expand_ratio: float = 1.0,
        min_iou_crop: bool = False,
        seed: int | None = None,
        resize: str = "letterbox",
        max_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        low, high = _scale_range(scale_range)
        _check(image_size, hflip, low, high, color_jitter, min_visibility, min_box_size,
               photometric, expand_ratio, min_iou_crop)
        _check_resize(resize, max_size, low, high, mean, std)
        self.image_size = image_size
        self.resize, self.max_size, self.min_box_size = resize, max_size, float(min_box_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        pad_rgb = tuple(round(255 * m) for m in self.mean)
        longest = list(range(max(1, round(image_size * low)), round(image_size * high) + 1))
        steps: list = [PhotometricDistort()] if photometric else []
        if expand_ratio > 1:
            steps.append(Expand(max_ratio=float(expand_ratio), fill=pad_rgb, p=0.5))
        if min_iou_crop:
            steps.append(MinIoURandomCrop())
        if hflip > 0:
            steps.append(A.HorizontalFlip(p=hflip))
        letterbox = resize == "letterbox"
        if letterbox:
            steps.append(
                A.LongestMaxSize(max_size=longest if len(longest) > 1 else longest[0], area_for_downscale="image")
            )
        if color_jitter > 0:
            c = color_jitter
            steps.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5), p=0.8))
        if letterbox:
            steps.append(
                A.PadIfNeeded(image_size, image_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=pad_rgb)
            )
            if longest[-1] > image_size:
                steps.append(A.RandomCrop(image_size, image_size))
            steps += [A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0), ToTensorV2()]
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=min_visibility,
            # min_box_size is in input pixels: `_large` applies it after the resize, not here after every step
            min_width=0.0,
            min_height=0.0,
            clip=True,
            filter_invalid_bboxes=True,
        )
        # keep_ratio / stretch at eval time have no albumentations step at all: the image goes straight to the resize
        self.pipeline = A.Compose(steps, bbox_params=bbox_params, save_applied_params=True, seed=seed) if steps else None

    def reseed(self, seed: int) -> None:
        """New augmentation random state; called in each DataLoader worker, which otherwise all inherit one."""
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, image_id: int) -> Sample:
        h, w = image.shape[:2]
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        if self.pipeline is None:
            out = {"image": image, "bboxes": boxes, "labels": labels, "applied_transforms": []}
        else:
            out = self.pipeline(image=image, bboxes=boxes, labels=labels)
        applied = dict(out["applied_transforms"])  # a random step that did not happen is absent
        if self.resize != "letterbox":
            return self._torchvision_resize(out, applied, image_id, (h, w))
        before_h, before_w = applied["LongestMaxSize"]["shape"][:2]  # after expand and SSD crop: the resize's input
        resized_h, resized_w = applied["PadIfNeeded"]["shape"][:2]  # the input shape of the step after resize
        sx, sy = resized_w / before_w, resized_h / before_h
        expand = applied.get("Expand", {"pad_left": 0, "pad_top": 0})  # where the original lies on the canvas
        patch_x, patch_y = applied.get("MinIoURandomCrop", {"crop_coords": (0, 0)})["crop_coords"][:2]
        crop_x, crop_y = applied.get("RandomCrop", {"crop_coords": (0, 0)})["crop_coords"][:2]
        size = self.image_size
        boxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
        labels = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        large = self._large(boxes)
        return Sample(
            image=out["image"],
            boxes=boxes[large],
            labels=labels[large],
            image_id=int(image_id),
            size=(min(resized_h - crop_y, size), min(resized_w - crop_x, size)),
            orig_size=(h, w),
            scale=(sx, sy),
            offset=(sx * (expand["pad_left"] - patch_x) - crop_x, sy * (expand["pad_top"] - patch_y) - crop_y),
        )

    def _large(self, boxes_xyxy: Tensor) -> Tensor:
        """[N] bool: each of `boxes_xyxy [N, 4]` (input pixels) is at least min_box_size wide and high."""
        return ((boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]) >= self.min_box_size).all(dim=1)

    def _torchvision_resize(self, out: dict, applied: dict, image_id: int, orig_size: tuple[int, int]) -> Sample:
        """keep_ratio / stretch on the augmented uint8 image, with torchvision's arithmetic (see the module)."""
        image = np.ascontiguousarray(out["image"])
        image = image if image.flags.writeable else image.copy()  # a decoded file may be a read-only buffer
        pixels = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        pixels = (pixels - mean[:, None, None]) / std[:, None, None]
        before_h, before_w = pixels.shape[-2:]
        if self.resize == "stretch":
            resized = F.interpolate(pixels[None], size=[self.image_size] * 2, mode="bilinear", align_corners=False)
        else:
            factor = min(self.image_size / min(before_h, before_w), self.max_size / max(before_h, before_w))
            if min(math.floor(before_h * factor), math.floor(before_w * factor)) < 1:  # torch's output size
                raise DataError(
                    f"image id {image_id} is {before_w}x{before_h} (w x h): data.resize=keep_ratio with "
                    f"data.max_size={self.max_size} bounds its longer side at {self.max_size} px, which leaves its "
                    f"shorter side {min(before_h, before_w) * factor:.2g} px, no pixel at all; raise data.max_size, "
                    "use data.resize=letterbox or stretch, or leave the image out"
                )
            resized = F.interpolate(
                pixels[None], scale_factor=factor, mode="bilinear", recompute_scale_factor=True, align_corners=False
            )
        resized_h, resized_w = resized.shape[-2:]
        # the box scaling of torchvision's resize_boxes: float32 ratios of the new to the old side
        ratio = torch.tensor([resized_w, resized_h], dtype=torch.float32) / torch.tensor(
            [before_w, before_h], dtype=torch.float32
        )
        boxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)) * ratio.repeat(2)
        labels = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        large = self._large(boxes)
        sx, sy = resized_w / before_w, resized_h / before_h
        expand = applied.get("Expand", {"pad_left": 0, "pad_top": 0})
        patch_x, patch_y = applied.get("MinIoURandomCrop", {"crop_coords": (0, 0)})["crop_coords"][:2]
        return Sample(
            image=resized[0],
            boxes=boxes[large],
            labels=labels[large],
            image_id=int(image_id),
            size=(resized_h, resized_w),
            orig_size=orig_size,
            scale=(sx, sy),
            offset=(sx * (expand["pad_left"] - patch_x), sy * (expand["pad_top"] - patch_y)),
        )


def _check_resize(resize, max_size, low, high, mean, std) -> None:
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"data.resize={resize!r}: use one of {list(RESIZE_POLICIES)}")
    if resize == "keep_ratio" and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise ConfigError(f"data.resize=keep_ratio needs data.max_size, the bound on the longer side (torchvision: "
                         f"1333 for data.image_size=800), got {max_size!r}")
    if resize != "keep_ratio" and max_size is not None:  # a bound no resize would read
        raise ConfigError(f"data.max_size={max_size} bounds data.resize=keep_ratio only; with data.resize={resize} "
                          "set it to null (the input side is data.image_size)")
    if resize != "letterbox" and (low, high) != (1.0, 1.0):
        raise ConfigError(f"data.augment.scale_range=[{low}, {high}] works with data.resize=letterbox only; "
                         f"set it to [1, 1] with data.resize={resize}")
    for key, values in (("mean", mean), ("std", std)):
        if not _is_sequence(values) or len(values) != 3 or not all(is_number(v) for v in values):
            raise ConfigError(f"data.{key}={values!r} must be 3 finite numbers (R, G, B, for pixels in [0, 1])")
    if min(std) <= 0:
        raise ConfigError(f"data.std={list(std)} must be positive")


def _check(image_size, hflip, low, high, color_jitter, min_visibility, min_box_size,
           photometric, expand_ratio, min_iou_crop) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"data.image_size={image_size!r} must be a positive integer")
    # numbers first: the comparisons below would fail on a string or a null with a TypeError
    check_non_negative("data.augment", hflip=hflip, color_jitter=color_jitter, min_visibility=min_visibility,
                       min_box_size=min_box_size)
    if not 0 <= hflip <= 1:
        raise ConfigError(f"data.augment.hflip={hflip} is a probability: use a value in [0, 1]")
    if not 0 < low <= high:
        raise ConfigError(f"data.augment.scale_range=[{low}, {high}] must satisfy 0 < low <= high")
    if not 0 <= min_visibility <= 1:
        raise ConfigError(f"data.augment.min_visibility={min_visibility} must be in [0, 1]")
    if min_box_size <= 0:
        raise ConfigError(f"data.augment.min_box_size={min_box_size} must be > 0 pixels")
    for key, value in (("photometric", photometric), ("min_iou_crop", min_iou_crop)):
        if not isinstance(value, bool):
            raise ConfigError(f"data.augment.{key}={value!r} must be true or false")
    if not is_number(expand_ratio) or not expand_ratio >= 1:
        raise ConfigError(f"data.augment.expand_ratio={expand_ratio!r} is the largest canvas / image side ratio: use a "
                         "number >= 1 (1 disables, SSD uses 4)")


def _scale_range(scale_range) -> tuple[float, float]:
    """data.augment.scale_range as (low, high), or a ConfigError naming it."""
    if not _is_sequence(scale_range) or len(scale_range) != 2 or not all(is_number(v) for v in scale_range):
        raise ConfigError(f"data.augment.scale_range={scale_range!r} must be [low, high], two numbers (factors of "
                          "data.image_size; [1, 1] disables)")
    low, high = scale_range
    return float(low), float(high)


def _is_sequence(value) -> bool:
    """A list or tuple from a config (Hydra's ListConfig is one), not a string."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))
