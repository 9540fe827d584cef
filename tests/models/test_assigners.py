"""MaxIoUAssigner: hand-made cases at the thresholds, and equality with torchvision's Matcher per image.

Convention (torchvision's Matcher): IoU >= pos_iou is positive, neg_iou <= IoU < pos_iou is ignored (-2),
IoU < neg_iou is background (-1).
"""

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from detlab.models.assigners import MaxIoUAssigner
from detlab.structures import Batch, HeadOutput, Priors


def make_batch(gt_boxes: torch.Tensor, gt_valid: torch.Tensor, size: int = 256) -> Batch:
    b, m = gt_valid.shape
    return Batch(
        images=torch.zeros(b, 3, size, size),
        gt_boxes=torch.where(gt_valid[..., None], gt_boxes, 0.0),
        gt_labels=torch.zeros(b, m, dtype=torch.int64),
        gt_valid=gt_valid,
        image_sizes=torch.full((b, 2), size),
        image_ids=torch.arange(b),
        orig_sizes=torch.full((b, 2), size),
        scales=torch.ones(b, 2),
        offsets=torch.zeros(b, 2),
    )


def assign(assigner: MaxIoUAssigner, prior_boxes: torch.Tensor, batch: Batch) -> torch.Tensor:
    priors = Priors(boxes=prior_boxes, strides=torch.full((len(prior_boxes),), 8), level_sizes=(len(prior_boxes),))
    num_images, num_priors = len(batch), len(priors)
    outputs = HeadOutput(torch.zeros(num_images, num_priors, 1), torch.zeros(num_images, num_priors, 4))
    return assigner(outputs, priors, batch)


# gt 0 = [0, 0, 10, 10]; gt 1 = [100, 100, 110, 110]; gt 2 is padding that sits exactly on prior 5.
PRIORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with gt 0: positive
        [0.0, 0.0, 10.0, 25.0],  # IoU 0.4 with gt 0: ignored
        [0.0, 0.0, 10.0, 30.0],  # IoU 1/3 with gt 0: background
        [100.0, 100.0, 110.0, 140.0],  # IoU 0.25 with gt 1, tied best for gt 1: low-quality positive
        [70.0, 100.0, 110.0, 110.0],  # IoU 0.25 with gt 1, the other tie
        [200.0, 200.0, 210.0, 210.0],  # overlaps only the padded gt: background
    ]
)
GT = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [200.0, 200.0, 210.0, 210.0]]])


def test_thresholds_ignore_band_ties_and_padding():
    batch = make_batch(GT, torch.tensor([[True, True, False]]))
    matched = assign(MaxIoUAssigner(0.5, 0.4, low_quality_matches=True), PRIORS, batch)
    assert matched.dtype == torch.int64
    assert matched.tolist() == [[0, -2, -1, 1, 1, -1]]
    matched = assign(MaxIoUAssigner(0.5, 0.4, low_quality_matches=False), PRIORS, batch)
    assert matched.tolist() == [[0, -2, -1, -1, -1, -1]]


def test_low_quality_match_upgrades_an_ignored_prior():
    # gt's best IoU is 0.4 (prior 1 alone): without low-quality matches it would be ignored.
    batch = make_batch(torch.tensor([[[0.0, 0.0, 10.0, 10.0]]]), torch.tensor([[True]]))
    matched = assign(MaxIoUAssigner(), PRIORS[1:3], batch)
    assert matched.tolist() == [[0, -1]]


def test_image_without_objects_is_all_background():
    gt = torch.tensor(
        [[[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 0.0, 0.0]]]
    )
    batch = make_batch(gt, torch.tensor([[False, False], [True, False]]))
    matched = assign(MaxIoUAssigner(), PRIORS, batch)
    assert matched[0].tolist() == [-1] * len(PRIORS)  # nothing ignored either
    assert matched[1].tolist() == [0, 0, 0, -1, -1, -1]  # the other image is unaffected (IoU 1, 0.8, 2/3)


def test_gt_overlapping_no_prior_makes_no_low_quality_match():
    # torchvision would match every prior to it (all tie at IoU 0); we match none.
    batch = make_batch(torch.tensor([[[300.0, 300.0, 310.0, 310.0]]]), torch.tensor([[True]]))
    assert assign(MaxIoUAssigner(), PRIORS, batch).tolist() == [[-1] * len(PRIORS)]


def anchor_grid(size: int, stride: int, box_sizes: list[float]) -> torch.Tensor:
    centres = torch.arange(stride / 2, size, stride)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    boxes = []
    for s in box_sizes:
        for ratio in (0.5, 1.0, 2.0):
            w, h = s * ratio**0.5, s / ratio**0.5
            boxes.append(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).reshape(-1, 4))
    return torch.cat(boxes)


@pytest.mark.parametrize("low_quality", [True, False])
def test_batched_equals_torchvision_matcher_per_image(low_quality):
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([anchor_grid(128, 8, [12.0, 20.0]), anchor_grid(128, 16, [32.0, 48.0])])
    num_images, max_gt = 5, 7
    xy = torch.rand(num_images, max_gt, 2, generator=g) * 100
    wh = torch.rand(num_images, max_gt, 2, generator=g) * 60 + 4
    gt = torch.cat([xy, (xy + wh).clamp(max=128)], dim=-1)
    valid = torch.rand(num_images, max_gt, generator=g) < 0.6  # not a prefix: padding sits anywhere
    valid[0] = False  # one image without objects
    valid[1] = True  # one image full
    batch = make_batch(gt, valid, size=128)

    matched = assign(MaxIoUAssigner(0.5, 0.4, low_quality), priors, batch)

    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    for i in range(num_images):  # the reference goes one image at a time, on the valid gts only
        valid_index = valid[i].nonzero()[:, 0]
        expected = torch.full((len(priors),), -1)
        if len(valid_index):
            result = matcher(box_iou(gt[i, valid_index], priors))
            expected = torch.where(result >= 0, valid_index[result.clamp(min=0)], result)
        assert torch.equal(matched[i], expected), f"image {i}"
    assert (matched >= 0).sum() > 20 and (matched == -2).sum() > 20  # the case is not trivial


def test_bad_thresholds_and_shapes_name_the_field():
    with pytest.raises(ValueError, match="assigner.neg_iou"):
        MaxIoUAssigner(pos_iou=0.4, neg_iou=0.5)
    batch = make_batch(GT, torch.tensor([[True, True, False]]))
    batch.gt_valid = batch.gt_valid[:, :2]
    with pytest.raises(ValueError, match="gt_valid"):
        assign(MaxIoUAssigner(), PRIORS, batch)
