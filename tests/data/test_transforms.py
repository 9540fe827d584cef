"""Transforms: boxes stay on their pixels, none comes out degenerate, and eval meta maps back exactly."""

import numpy as np
import pytest
import torch

from detlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform
from detlab.errors import DataError
from detlab.structures import boxes_to_original

AUGMENT = {"hflip": 0.5, "scale_range": (0.6, 1.4), "color_jitter": 0.2, "min_visibility": 0.3, "min_box_size": 2}
MEAN, STD = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]


def brightness(image: torch.Tensor) -> torch.Tensor:
    """[H, W] mean of the de-normalised RGB channels, 0..255."""
    return ((image * STD + MEAN) * 255).mean(0)


def test_normalises_with_imagenet_statistics_and_letterboxes_bottom_right():
    """A black 100x50 (w x h) image at size 64: content [32, 64] is -mean/std, the padding below it ~0."""
    sample = DetectionTransform(64)(np.zeros((50, 100, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int64), 3)
    assert sample.image.shape == (3, 64, 64) and sample.image.dtype == torch.float32
    expected = (-MEAN / STD).expand(3, 32, 64)
    torch.testing.assert_close(sample.image[:, :32], expected)
    assert sample.image[:, 32:].abs().max() < 0.01  # padded with the mean colour, like the collate's zeros
    assert (sample.size, sample.orig_size, sample.offset, sample.image_id) == ((32, 64), (50, 100), (0.0, 0.0), 3)


@pytest.mark.parametrize("seed", range(6))
def test_eval_meta_maps_input_boxes_back_to_the_original_exactly(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 700, 2)
    xy = rng.uniform(0, [w - 8, h - 8], (5, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 8, (5, 2))], axis=1).astype(np.float32)
    size = int(rng.integers(32, 512))
    sample = DetectionTransform(size, min_box_size=1e-3)(np.zeros((h, w, 3), np.uint8), boxes, np.arange(5), 9)
    back = boxes_to_original(sample.boxes[None], torch.tensor([sample.scale]), torch.tensor([sample.offset]))[0]
    torch.testing.assert_close(back, torch.from_numpy(boxes), atol=1e-3, rtol=1e-5)
    assert sample.offset == (0.0, 0.0) and max(sample.size) == size
    # The resized sides are whole pixels: each scale is size / longest side up to half a pixel of its side.
    assert abs(sample.scale[0] - size / max(h, w)) <= 0.5 / w + 1e-9
    assert abs(sample.scale[1] - size / max(h, w)) <= 0.5 / h + 1e-9
    assert sample.labels.tolist() == list(range(5))


def check_box_encloses_rectangle(sample, min_visibility: float, area_in_input: float) -> None:
    """The bright pixels' extent and the box agree to a pixel (resampling blurs one pixel at each edge)."""
    ys, xs = torch.nonzero(brightness(sample.image) > 170, as_tuple=True)
    if len(sample.boxes) == 0:  # dropped: it must have been cut below min_visibility (or to a sliver)
        assert len(xs) <= min_visibility * area_in_input + 2 * np.sqrt(area_in_input) + 4
        return
    extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    assert (sample.boxes[0] - extent).abs().max() <= 1.0 + 1e-4, (sample.boxes[0], extent)


@pytest.mark.parametrize("augment", [{}, AUGMENT, {**AUGMENT, "hflip": 1.0}], ids=["eval", "train", "flipped"])
def test_boxes_stay_on_the_pixels_of_a_drawn_rectangle(augment):
    transform = DetectionTransform(96, seed=0, **augment)
    rng = np.random.default_rng(1)
    for _ in range(12):
        h, w = rng.integers(40, 300, 2)
        x1, y1 = rng.integers(0, [w // 2, h // 2])
        x2, y2 = rng.integers([x1 + w // 5, y1 + h // 5], [w + 1, h + 1])
        image = np.zeros((h, w, 3), np.uint8)
        image[y1:y2, x1:x2] = 255
        sample = transform(image, np.array([[x1, y1, x2, y2]], np.float32), np.array([0]), 1)
        area = (x2 - x1) * (y2 - y1) * sample.scale[0] * sample.scale[1]
        check_box_encloses_rectangle(sample, augment.get("min_visibility", 0.0), area)


def test_flip_mirrors_the_box_in_closed_form():
    image = np.zeros((50, 100, 3), np.uint8)
    sample = DetectionTransform(100, hflip=1.0)(image, np.array([[10, 5, 30, 25]], np.float32), np.array([2]), 0)
    torch.testing.assert_close(sample.boxes, torch.tensor([[70.0, 5.0, 90.0, 25.0]]))



@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("augment", [{}, {"hflip": 1.0}, {"photometric": True}, {"expand_ratio": 1.001}],
                         ids=["eval", "flip", "photometric", "expand"])
def test_min_box_size_is_measured_in_input_pixels_whatever_steps_run_before_the_resize(resize, augment):
    """A 1.5 x 20 px box of a 50 x 50 image upscaled 10x is 15 x 200 input pixels: kept at min_box_size 2 (it was
    dropped, measured in the original's pixels, whenever a step ran before the resize). The same box of a 250 x 250
    image downscaled 5x is 0.3 input pixels wide: dropped."""
    for side, size, kept in ((50, 500, True), (250, 50, False)):
        transform = DetectionTransform(size, min_box_size=2, resize=resize, seed=0, **augment)
        box = np.array([[10, 10, 11.5, 30]], np.float32)
        sample = transform(np.zeros((side, side, 3), np.uint8), box, np.array([4]), 0)
        if not kept:
            assert len(sample.boxes) == 0 and len(sample.labels) == 0
            continue
        scale = size / side  # closed form: x' = side - x under the flip, then input = original * scale
        x1, x2 = (side - 11.5, side - 10) if augment.get("hflip") else (10, 11.5)
        expected = torch.tensor([[x1, 10, x2, 30]]) * scale
        if "expand_ratio" in augment:  # the canvas (at most 1.001 x) moves the box by under a pixel
            torch.testing.assert_close(sample.boxes, expected, atol=scale, rtol=0)
        else:
            torch.testing.assert_close(sample.boxes, expected, atol=1e-3, rtol=1e-5)
        assert sample.labels.tolist() == [4]

def test_augmentation_never_returns_a_degenerate_box():
    transform = DetectionTransform(64, seed=3, **{**AUGMENT, "scale_range": (0.3, 1.6)})
    rng = np.random.default_rng(0)
    kept = 0
    for _ in range(40):
        h, w = rng.integers(32, 400, 2)
        xy = rng.uniform(0, [w - 4, h - 4], (20, 2))
        boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(0.05, 40, (20, 2)), [w, h])], axis=1)
        sample = transform(np.zeros((h, w, 3), np.uint8), boxes.astype(np.float32), np.arange(20), 0)
        wh = sample.boxes[:, 2:] - sample.boxes[:, :2]
        assert torch.isfinite(sample.boxes).all() and (wh >= 2 - 1e-4).all()
        assert (sample.boxes >= 0).all() and (sample.boxes <= 64).all()
        assert sample.labels.shape == (len(sample.boxes),) and sample.labels.dtype == torch.int64
        kept += len(sample.boxes)
    assert kept > 100  # the filter drops the slivers, not everything


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"hflip": 1.5}, "data.augment.hflip"),
        ({"scale_range": (1.2, 0.8)}, "data.augment.scale_range"),
        ({"color_jitter": -0.1}, "data.augment.color_jitter"),
        ({"min_box_size": 0}, "data.augment.min_box_size"),
        ({"expand_ratio": 0.5}, "data.augment.expand_ratio"),
        ({"photometric": "yes"}, "data.augment.photometric"),
        ({"min_iou_crop": 1}, "data.augment.min_iou_crop"),
    ],
)
def test_bad_arguments_name_their_key(args, key):
    with pytest.raises(ValueError, match=key):
        DetectionTransform(64, **args)


@pytest.mark.parametrize(("resize", "extra"), [("keep_ratio", {"max_size": 100}), ("stretch", {})])
@pytest.mark.parametrize("seed", range(3))
def test_torchvision_resize_policies_give_torchvisions_pixels_and_boxes(resize, extra, seed):
    """keep_ratio and stretch are torchvision's GeneralizedRCNNTransform (normalise, bilinear resize, box scaling)
    to the float, on odd sizes of both orientations; the meta maps the boxes back to the original."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 160, 2))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    xy = rng.uniform(0, [w - 10, h - 10], (4, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 10, (4, 2))], axis=1).astype(np.float32)
    mean, std = (0.48, 0.46, 0.41), (0.2, 0.3, 0.25)
    fixed = {"fixed_size": (64, 64)} if resize == "stretch" else {}
    reference = GeneralizedRCNNTransform(64, extra.get("max_size", 64), list(mean), list(std), size_divisible=1, **fixed)
    reference.eval()
    images, targets = reference([torch.from_numpy(image).permute(2, 0, 1).float().div(255)],
                                [{"boxes": torch.from_numpy(boxes), "labels": torch.arange(4)}])
    transform = DetectionTransform(64, min_box_size=1e-3, resize=resize, mean=mean, std=std, **extra)
    sample = transform(image, boxes, np.arange(4), 5)
    h_in, w_in = images.image_sizes[0]
    assert sample.size == (h_in, w_in) and sample.image.shape == (3, h_in, w_in)
    assert torch.equal(sample.image, images.tensors[0, :, :h_in, :w_in])
    assert torch.equal(sample.boxes, targets[0]["boxes"])
    back = boxes_to_original(sample.boxes[None], torch.tensor([sample.scale]), torch.tensor([sample.offset]))[0]
    torch.testing.assert_close(back, torch.from_numpy(boxes), atol=1e-3, rtol=1e-5)



@pytest.mark.parametrize(("h", "w"), [(3, 2000), (2000, 3), (1, 500)])
def test_keep_ratio_refuses_an_image_it_would_resize_to_no_pixel_naming_it(h, w):
    """keep_ratio bounds the longer side at max_size: a 2000 x 3 image at max_size 100 would be 100 x 0.15 px,
    which torch's interpolate refused with a bare RuntimeError; the message names the image and the keys."""
    transform = DetectionTransform(64, resize="keep_ratio", max_size=100)
    with pytest.raises(DataError, match=rf"image id 7 is {w}x{h} .*data.max_size=100"):
        transform(np.zeros((h, w, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int64), 7)


def test_keep_ratio_resizes_a_thin_image_to_one_pixel_as_torchvision_does():
    """The boundary: a 2000 x 20 image at max_size 100 is 100 x 1 px, torchvision's shape and pixels."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    image = np.random.default_rng(0).integers(0, 256, (20, 2000, 3), dtype=np.uint8)
    reference = GeneralizedRCNNTransform(64, 100, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=1).eval()
    images, _ = reference([torch.from_numpy(image).permute(2, 0, 1).float().div(255)])
    transform = DetectionTransform(64, resize="keep_ratio", max_size=100)
    sample = transform(image, np.zeros((0, 4)), np.zeros(0, np.int64), 7)
    assert sample.size == tuple(images.image_sizes[0]) == (1, 100)
    assert torch.equal(sample.image, images.tensors[0])

@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"resize": "crop"}, "data.resize='crop'"),
        ({"resize": "keep_ratio"}, "data.resize=keep_ratio needs data.max_size"),
        ({"max_size": 50}, "data.max_size=50 bounds data.resize=keep_ratio only"),  # before: taken and ignored
        ({"resize": "stretch", "scale_range": (0.5, 1.5)}, "data.augment.scale_range=.*letterbox only"),
        ({"std": (0.2, 0.0, 0.2)}, "data.std"),
        ({"mean": (0.5, 0.5)}, "data.mean"),
    ],
)
def test_bad_resize_settings_name_their_key(args, key):
    with pytest.raises(ValueError, match=key):
        DetectionTransform(64, **args)
