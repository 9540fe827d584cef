"""SSD's augmentation: the min-IoU crop keeps what the paper's rule keeps, the expand moves boxes with their
pixels, the photometric distortions match their closed forms, and the whole pipeline is repeatable and safe."""

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torchvision import tv_tensors
from torchvision.ops import box_iou, clip_boxes_to_image
from torchvision.transforms.v2 import functional as TF

from detlab.config import compose_train
from detlab.data.ssd_augment import Expand, MinIoURandomCrop, PhotometricDistort
from detlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PAD_RGB, DetectionTransform
from detlab.structures import boxes_to_original

CONF = Path(__file__).resolve().parents[2] / "conf"
SSD = {"hflip": 0.5, "scale_range": (1.0, 1.0), "color_jitter": 0, "min_visibility": 0.3, "min_box_size": 2,
       "photometric": True, "expand_ratio": 4.0, "min_iou_crop": True}


def compose_one(steps: list, seed: int, min_visibility: float = 0.0) -> A.Compose:
    """The steps under DetectionTransform's box rules (pascal_voc, clip), recording the applied params."""
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True)
    return A.Compose(steps, bbox_params=bbox_params, save_applied_params=True, seed=seed)


def random_boxes(rng: np.random.Generator, h: int, w: int, n: int, sides=(0.05, 0.7)) -> np.ndarray:
    """[n, 4] xyxy boxes of sides[0]..sides[1] of each side, inside a w x h image."""
    wh = rng.uniform(*sides, (n, 2)) * [w, h]
    xy = rng.uniform(0, 1, (n, 2)) * ([w, h] - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def strictly_centred(box, patch) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return patch[0] < cx < patch[2] and patch[1] < cy < patch[3]


def test_min_iou_crop_keeps_the_centred_objects_and_meets_the_drawn_threshold():
    rng = np.random.default_rng(0)
    drawn, some_dropped = [], 0
    for seed in range(300):
        h, w = (int(v) for v in rng.integers(40, 200, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        boxes = random_boxes(rng, h, w, int(rng.integers(1, 6)), sides=(0.1, 1.0))
        out = compose_one([MinIoURandomCrop()], seed)(image=image, bboxes=boxes, labels=np.arange(len(boxes)))
        params = dict(out["applied_transforms"])["MinIoURandomCrop"]
        (x1, y1, x2, y2), min_iou = params["crop_coords"], params["min_iou"]
        drawn.append(min_iou)
        np.testing.assert_array_equal(out["image"], image[y1:y2, x1:x2])
        kept = [i for i, box in enumerate(boxes) if strictly_centred(box, (x1, y1, x2, y2))]
        assert list(out["labels"]) == kept
        some_dropped += 0 < len(kept) < len(boxes)
        if min_iou is None:  # the whole image, untouched
            assert (x1, y1, x2, y2) == (0, 0, w, h) and kept == list(range(len(boxes)))
        else:  # torchvision's and mmdetection's patch bounds: sides in [0.3, 1] of the image's, w / h in [0.5, 2]
            assert int(0.3 * w) <= x2 - x1 <= w and int(0.3 * h) <= y2 - y1 <= h and 0 <= x1 and x2 <= w
            assert 0.5 <= (x2 - x1) / (y2 - y1) <= 2 and 0 <= y1 and y2 <= h
            iou = box_iou(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64), torch.from_numpy(boxes[kept]).double())
            assert iou.max() >= min_iou  # caffe's rule: a kept object overlaps the patch by the threshold
            if len(boxes) == 1:  # one object: its IoU is also the minimum over the kept objects
                assert iou.min() >= min_iou
        # Kept boxes as torchvision's crop moves them, clipped to the patch.
        reference = TF.crop(tv_tensors.BoundingBoxes(torch.from_numpy(boxes[kept]), format="XYXY", canvas_size=(h, w)),
                            top=y1, left=x1, height=y2 - y1, width=x2 - x1)
        reference = clip_boxes_to_image(reference.as_subclass(torch.Tensor), (y2 - y1, x2 - x1))
        np.testing.assert_allclose(np.asarray(out["bboxes"]).reshape(-1, 4), reference.numpy(), atol=1e-3)
    # Every constraint comes up: the whole image, a random patch (0) and the five thresholds.
    assert set(drawn) == {None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9}
    assert some_dropped > 30  # the centre rule is exercised


@pytest.mark.parametrize(("min_visibility", "labels", "expected"), [
    (0.0, [0, 1, 4], [[0, 5, 15, 25], [25, 15, 60, 60], [35, 40, 60, 60]]),
    (0.5, [0, 1], [[0, 5, 15, 25], [25, 15, 60, 60]]),  # box 4 keeps 500 / 1400 px of its area: dropped
])
def test_min_iou_crop_on_a_fixed_patch_by_hand(min_visibility, labels, expected):
    """Patch (15, 5, 75, 65) of a 100 x 80 image: centres in it stay, shifted by (-15, -5) and clipped to 60 x 60."""
    crop = MinIoURandomCrop()
    crop.sample_patch = lambda boxes_xyxy, height, width: (0.5, (15, 5, 75, 65))
    boxes = np.array([
        [10, 10, 30, 30],  # centre (20, 20): kept, clipped on the left
        [40, 20, 90, 70],  # centre (65, 45): kept, clipped right and bottom
        [0, 60, 20, 80],   # centre (10, 70): outside, dropped
        [4, 30, 25, 40],   # centre (14.5, 35): half a pixel left of the patch, dropped though 10 px overlap
        [50, 45, 90, 80],  # centre (70, 62.5): kept, 25 x 20 of its 40 x 35 left in the patch
    ], np.float32)
    image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    out = compose_one([crop], seed=0, min_visibility=min_visibility)(image=image, bboxes=boxes, labels=np.arange(5))
    np.testing.assert_array_equal(out["image"], image[5:65, 15:75])
    assert list(out["labels"]) == labels
    np.testing.assert_allclose(np.asarray(out["bboxes"]), expected, atol=1e-4)


def test_min_iou_crop_of_an_image_without_objects_is_a_random_patch():
    image = np.zeros((90, 120, 3), np.uint8)
    shapes = set()
    for seed in range(30):
        out = compose_one([MinIoURandomCrop()], seed)(image=image, bboxes=np.zeros((0, 4)), labels=np.zeros(0))
        assert len(out["bboxes"]) == 0
        shapes.add(out["image"].shape)
    assert len(shapes) > 10 and (90, 120, 3) in shapes  # patches of many sizes, and the whole image


def test_expand_places_the_image_on_a_mean_canvas_and_shifts_the_boxes_by_its_corner():
    rng = np.random.default_rng(1)
    fill = np.array(PAD_RGB, np.uint8)
    corners = []
    for seed in range(60):
        h, w = (int(v) for v in rng.integers(10, 120, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        boxes = random_boxes(rng, h, w, 3)
        out = compose_one([Expand(max_ratio=4.0, fill=PAD_RGB, p=1.0)], seed)(image=image, bboxes=boxes,
                                                                              labels=np.arange(3))
        params = dict(out["applied_transforms"])["Expand"]
        ratio, left, top = params["ratio"], params["pad_left"], params["pad_top"]
        canvas_h, canvas_w = int(h * ratio), int(w * ratio)
        assert 1 <= ratio <= 4 and out["image"].shape == (canvas_h, canvas_w, 3)
        assert 0 <= left <= canvas_w - w and 0 <= top <= canvas_h - h
        np.testing.assert_array_equal(out["image"][top:top + h, left:left + w], image)
        outside = np.ones((canvas_h, canvas_w), bool)
        outside[top:top + h, left:left + w] = False
        assert (out["image"][outside] == fill).all()
        np.testing.assert_allclose(np.asarray(out["bboxes"]), boxes + [left, top, left, top], atol=1e-3)
        assert list(out["labels"]) == [0, 1, 2]
        corners.append((left / max(canvas_w - w, 1), top / max(canvas_h - h, 1)))
    corners = np.array(corners)
    assert corners.min() < 0.1 and corners.max() > 0.9  # the image goes anywhere on the canvas


def test_expand_happens_half_of_the_time():
    expand = compose_one([Expand(max_ratio=2.0, fill=0)], seed=0)
    image, boxes = np.zeros((20, 30, 3), np.uint8), np.array([[2, 2, 8, 8]], np.float32)
    expanded = sum(expand(image=image, bboxes=boxes, labels=[0])["image"].shape != (20, 30, 3) for _ in range(400))
    assert 160 <= expanded <= 240  # p = 0.5: 200 +- 5 standard deviations (a canvas of ratio < 1 + 1/30 is rare)


NONE = {"brightness": None, "contrast": None, "contrast_last": False, "saturation": None, "hue": None}


@pytest.mark.parametrize(("step", "pixels", "expected"), [
    ({}, [[10, 200, 255]], [[10, 200, 255]]),
    ({"brightness": 40.0}, [[10, 200, 230]], [[50, 240, 255]]),  # added, clipped at 255
    ({"brightness": -20.0}, [[10, 200, 230]], [[0, 180, 210]]),
    ({"contrast": 0.5}, [[10, 200, 255]], [[5, 100, 128]]),  # multiplied, no mean centring (caffe, mmdetection)
    ({"contrast": 1.5, "contrast_last": True}, [[10, 200, 100]], [[15, 255, 150]]),
    ({"saturation": 0.0}, [[200, 100, 50]], [[200, 200, 200]]),  # no saturation: grey at V = max(R, G, B)
    ({"saturation": 0.5}, [[200, 100, 50]], [[200, 150, 125]]),  # S 0.75 -> 0.375: min = V (1 - S)
    ({"hue": 120.0}, [[255, 0, 0]], [[0, 255, 0]]),  # red + 120 degrees = green
    ({"hue": -120.0}, [[255, 0, 0]], [[0, 0, 255]]),  # red - 120 degrees = blue (modulo 360)
])
def test_photometric_steps_match_their_closed_forms(step, pixels, expected):
    image = np.array([pixels], np.uint8)  # [1, N, 3]
    out = PhotometricDistort().apply(image, **{**NONE, **step})
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], expected)


def test_photometric_keeps_shape_and_dtype_changes_pixels_and_repeats_with_its_seed():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    first = [A.Compose([PhotometricDistort()], seed=seed)(image=image)["image"] for seed in range(40)]
    again = [A.Compose([PhotometricDistort()], seed=seed)(image=image)["image"] for seed in range(40)]
    assert all(out.shape == image.shape and out.dtype == np.uint8 for out in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    changed = sum(not np.array_equal(out, image) for out in first)
    assert changed >= 32  # no step at all has probability 1/16: about 37 of 40 change
    assert len({out.tobytes() for out in first}) >= changed  # every changed draw is its own


def test_photometric_draws_each_step_half_of_the_time_within_its_range():
    distort = PhotometricDistort()
    distort.set_random_seed(0)
    draws = [distort.get_params() for _ in range(800)]
    for key, low, high in (("brightness", -32, 32), ("contrast", 0.5, 1.5), ("saturation", 0.5, 1.5), ("hue", -18, 18)):
        values = [d[key] for d in draws if d[key] is not None]
        assert 330 <= len(values) <= 470, key  # 400 +- 5 standard deviations
        assert low <= min(values) < low + 0.1 * (high - low) and high - 0.1 * (high - low) < max(values) <= high
    assert 330 <= sum(d["contrast_last"] for d in draws) <= 470


def test_ssd_pipeline_never_returns_a_degenerate_or_outside_box():
    rng = np.random.default_rng(0)
    size = 96
    transform = DetectionTransform(size, seed=0, **SSD)
    kept = moved = 0
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(24, 240, 2))
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, [w - 2, h - 2], (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(0.5, 0.8 * max(h, w), (n, 2)), [w, h])], axis=1)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sample = transform(image, boxes.astype(np.float32), np.arange(n), 0)
        assert sample.image.shape == (3, size, size) and sample.labels.shape == (len(sample.boxes),)
        assert torch.isfinite(sample.boxes).all()
        assert (sample.boxes[:, 2] > sample.boxes[:, 0]).all() and (sample.boxes[:, 3] > sample.boxes[:, 1]).all()
        assert (sample.boxes[:, 2:] - sample.boxes[:, :2] >= 2 - 1e-4).all()  # min_box_size
        assert (sample.boxes >= 0).all() and (sample.boxes <= size).all()
        # `size` is the content: the letterbox fills one side, and what is past the content is the pad colour (~0).
        content_h, content_w = sample.size
        assert max(content_h, content_w) == size
        padding = torch.cat([sample.image[:, content_h:].flatten(), sample.image[:, :, content_w:].flatten()])
        assert (padding.abs() < 0.01).all()
        assert ((sample.boxes[:, 2] <= content_w + 1e-4) & (sample.boxes[:, 3] <= content_h + 1e-4)).all()
        kept += len(sample.boxes)
        moved += sample.offset != (0.0, 0.0)
    assert kept > 300 and moved > 100  # boxes survive, and expand or crop moved most images


@pytest.mark.parametrize("pipeline", [
    {},
    {"resize": "stretch"},  # torchvision's SSD300: the expand and the crop before torch's resize
    {"expand_ratio": 1.0, "min_iou_crop": False, "scale_range": (1.2, 1.6)},  # the random crop of an upscale
], ids=["letterbox", "stretch", "upscale-crop"])
def test_ssd_train_meta_maps_the_boxes_back_into_their_originals(pipeline):
    """Without the flip, (box - offset) / scale lies inside the original box, and equals it when uncut: under each
    resize, and with letterbox's random crop (data.augment.scale_range above 1) moving the image by its corner."""
    rng = np.random.default_rng(2)
    transform = DetectionTransform(128, seed=1, **{**SSD, "hflip": 0.0, "min_visibility": 0.0, **pipeline})
    exact = total = 0
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(40, 300, 2))
        boxes = random_boxes(rng, h, w, 4)
        sample = transform(np.zeros((h, w, 3), np.uint8), boxes, np.arange(4), 0)
        scale, offset = torch.tensor([sample.scale]), torch.tensor([sample.offset])
        back = boxes_to_original(sample.boxes[None].double(), scale, offset)[0]
        original = torch.from_numpy(boxes[sample.labels.numpy()]).double()
        tol = 0.01 / min(sample.scale)  # the input's float32 rounding, in original pixels
        assert (back[:, :2] >= original[:, :2] - tol).all() and (back[:, 2:] <= original[:, 2:] + tol).all()
        exact += int(((back - original).abs().max(dim=1).values <= tol).sum())
        total += len(back)
    assert total > 100 and exact > 0.3 * total


def test_ssd_pipeline_repeats_with_its_seed_and_reseed():
    rng = np.random.default_rng(3)
    inputs = [(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), random_boxes(rng, 60, 80, 3)) for _ in range(10)]

    def run(transform):
        return [transform(image, boxes, np.arange(3), 0) for image, boxes in inputs]

    a, b = run(DetectionTransform(64, seed=7, **SSD)), run(DetectionTransform(64, seed=7, **SSD))
    reseeded = DetectionTransform(64, seed=0, **SSD)
    reseeded.reseed(7)
    for x, y, z in zip(a, b, run(reseeded)):
        assert torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes) and x.offset == y.offset
        assert torch.equal(x.image, z.image) and torch.equal(x.boxes, z.boxes)
    other = run(DetectionTransform(64, seed=8, **SSD))
    assert any(not torch.equal(x.image, y.image) for x, y in zip(a, other))


@pytest.mark.parametrize(("h", "w", "interpolation"), [(50, 100, cv2.INTER_AREA), (30, 40, cv2.INTER_LINEAR)],
                         ids=["shrink", "grow"])
def test_eval_transform_is_resize_pad_normalise(h, w, interpolation):
    """The eval transform, recomputed with cv2: longest side to 64 (area when shrinking, bilinear when growing),
    mean-colour padding at the bottom/right, ImageNet normalisation; boxes scaled by the same factor."""
    image = np.random.default_rng(4).integers(0, 256, (h, w, 3), dtype=np.uint8)
    box = np.array([[4, 3, 20, 25]], np.float32)
    sample = DetectionTransform(64)(image, box, np.array([1]), 5)
    new_h, new_w = round(h * 64 / max(h, w)), round(w * 64 / max(h, w))
    canvas = np.empty((64, 64, 3), np.float32)
    canvas[:] = PAD_RGB
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    expected = (canvas / 255 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(sample.image, torch.from_numpy(expected.transpose(2, 0, 1)).float(), atol=1e-5, rtol=0)
    scaled = torch.from_numpy(box * [new_w / w, new_h / h, new_w / w, new_h / h]).float()
    torch.testing.assert_close(sample.boxes, scaled)
    assert (sample.size, sample.scale, sample.offset) == ((new_h, new_w), (new_w / w, new_h / h), (0.0, 0.0))


@pytest.mark.parametrize("model", ["ssd300", "ssd512"])
def test_ssd_models_turn_on_ssd_augmentation(model):
    cfg = compose_train([f"model={model}"])
    augment = dict(cfg.data.augment)
    assert {k: augment[k] for k in ("photometric", "expand_ratio", "min_iou_crop", "color_jitter")} == {
        "photometric": True, "expand_ratio": 4.0, "min_iou_crop": True, "color_jitter": 0}
    assert list(augment["scale_range"]) == [1.0, 1.0]
    steps = [type(t).__name__ for t in DetectionTransform(cfg.data.image_size, **augment).pipeline.transforms]
    assert steps == ["PhotometricDistort", "Expand", "MinIoURandomCrop", "HorizontalFlip", "LongestMaxSize",
                     "PadIfNeeded", "Normalize", "ToTensorV2"]


@pytest.mark.parametrize("model", ["tv_retinanet_r50_fpn", "tv_fasterrcnn_r50_fpn", "tv_ssd300_vgg16"])
def test_torchvision_presets_drop_no_box_for_its_visible_fraction_or_size(model):
    """torchvision's reference transforms keep every box that has an area (its RandomIoUCrop: every object whose
    centre is in the patch, clipped to it); the SSD300 preset dropped boxes cut below 30% of their area or under
    2 px, detlab's defaults, and so trained on other targets than torchvision's."""
    augment = compose_train([f"model={model}"]).data.augment
    assert augment.min_visibility == 0 and 0 < augment.min_box_size <= 0.001


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_dataset_has_the_ssd_keys_off_and_any_model_can_turn_them_on(data):
    cfg = compose_train([f"data={data}"])
    assert (cfg.data.augment.photometric, cfg.data.augment.expand_ratio, cfg.data.augment.min_iou_crop) == (
        False, 1.0, False)
    cfg = compose_train([f"data={data}", "model=yolov3", "data.augment.expand_ratio=2"])
    expand = DetectionTransform(cfg.data.image_size, **cfg.data.augment).pipeline.transforms[0]
    assert isinstance(expand, Expand) and expand.max_ratio == 2.0


def test_a_bad_expand_ratio_stops_the_data_module_with_its_key(tmp_path):
    cfg = compose_train(["model=ssd300", "data.augment.expand_ratio=0.5", "data.source.num_train_images=2",
                         "data.source.num_val_images=1", "data.source.image_size=64",
                         f"data.source.cache_dir={tmp_path}"])
    with pytest.raises(InstantiationException) as err:  # Hydra wraps what the target raises
        instantiate(cfg.data)
    assert isinstance(err.value.__cause__, ValueError)
    assert "data.augment.expand_ratio=0.5" in str(err.value.__cause__)


def test_the_ssd300_data_module_yields_valid_batches(tmp_path):
    cfg = compose_train(["model=ssd300", "data.num_workers=0", "data.batch_size=3", "data.source.num_train_images=6",
                         "data.source.num_val_images=2", "data.source.image_size=96",
                         f"data.source.cache_dir={tmp_path}"])
    data = instantiate(cfg.data)
    for _ in range(3):  # three epochs of different draws
        for batch in data.train_dataloader():
            assert batch.images.shape[1:] == (3, 300, 300)
            boxes = batch.gt_boxes[batch.gt_valid]
            assert ((boxes >= 0) & (boxes <= 300)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
