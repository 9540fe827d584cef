"""collate: padding to a multiple of the size divisor, padded targets with masks, Batch dtypes."""

import pytest
import torch

from detlab.data.collate import collate
from detlab.data.transforms import Sample


def sample(h: int, w: int, n: int, image_id: int) -> Sample:
    boxes = torch.rand(n, 4) * 10
    boxes[:, 2:] += boxes[:, :2] + 1
    return Sample(
        image=torch.rand(3, h, w),
        boxes=boxes,
        labels=torch.arange(n) + 1,
        image_id=image_id,
        size=(h - 2, w),
        orig_size=(2 * h, 2 * w),
        scale=(0.5, 0.5),
        offset=(0.0, -3.0),
    )


def test_pads_images_and_targets_with_masks():
    samples = [sample(50, 70, 3, 1000), sample(64, 64, 0, 7), sample(40, 33, 1, 123456789012)]
    batch = collate(samples, size_divisor=32)
    assert batch.images.shape == (3, 3, 64, 96)
    for image, s in zip(batch.images, samples):
        h, w = s.image.shape[1:]
        torch.testing.assert_close(image[:, :h, :w], s.image)
        assert image[:, h:].abs().sum() == 0 and image[:, :, w:].abs().sum() == 0
    assert batch.gt_boxes.shape == (3, 3, 4) and batch.gt_labels.shape == batch.gt_valid.shape == (3, 3)
    assert batch.gt_valid.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    torch.testing.assert_close(batch.gt_boxes[0], samples[0].boxes)
    torch.testing.assert_close(batch.gt_boxes[2, :1], samples[2].boxes)
    assert batch.gt_boxes[~batch.gt_valid].abs().sum() == 0 and batch.gt_labels[~batch.gt_valid].abs().sum() == 0
    assert batch.gt_labels[0].tolist() == [1, 2, 3]
    assert batch.image_ids.tolist() == [1000, 7, 123456789012]
    assert batch.image_sizes.tolist() == [[48, 70], [62, 64], [38, 33]]
    assert batch.orig_sizes.tolist() == [[100, 140], [128, 128], [80, 66]]
    assert batch.scales.tolist() == [[0.5, 0.5]] * 3 and batch.offsets.tolist() == [[0.0, -3.0]] * 3
    assert len(batch) == 3


def test_dtypes_follow_the_batch_contract():
    batch = collate([sample(32, 32, 2, 1)])
    assert batch.images.dtype == batch.gt_boxes.dtype == batch.scales.dtype == batch.offsets.dtype == torch.float32
    for name in ("gt_labels", "image_sizes", "image_ids", "orig_sizes"):
        assert getattr(batch, name).dtype == torch.int64, name
    assert batch.gt_valid.dtype == torch.bool


def test_a_batch_without_objects_still_has_one_masked_row():
    batch = collate([sample(32, 40, 0, 1), sample(20, 20, 0, 2)])
    assert batch.gt_boxes.shape == (2, 1, 4) and not batch.gt_valid.any()
    assert batch.gt_labels.shape == (2, 1) and batch.gt_boxes.abs().sum() == 0


def test_size_divisor_one_pads_to_the_largest_image_only():
    assert collate([sample(50, 70, 1, 1), sample(64, 33, 1, 2)], size_divisor=1).images.shape == (2, 3, 64, 70)
    with pytest.raises(ValueError, match="data.size_divisor"):
        collate([sample(8, 8, 0, 1)], size_divisor=0)
