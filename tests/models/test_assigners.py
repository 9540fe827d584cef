"""MaxIoUAssigner: hand-made cases at the thresholds, and equality with torchvision's Matcher per image.
SSDAssigner: equality with torchvision's SSDMatcher per image, where objects compete for their best prior.
YoloAssigner: hand-made cases, and equality with the paper's rule one gt at a time.

Convention (torchvision's Matcher): IoU >= pos_iou is positive, neg_iou <= IoU < pos_iou is ignored (-2),
IoU < neg_iou is background (-1).
"""

import pytest
import torch
from torchvision.models.detection._utils import Matcher, SSDMatcher
from torchvision.ops import box_iou

from detlab.models.assigners import MaxIoUAssigner, SSDAssigner, YoloAssigner
from detlab.models.box_coder import YoloBoxCoder
from detlab.structures import Batch, HeadOutput, Priors
from tests.conftest import make_batch
from tests.models.conftest import (
    ANCHORS, NUM_PRIORS, STRIDES, cxcywh, darknet_decode, prior_cells, prior_index, tiny_priors,
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
    batch = make_batch(GT, gt_valid=torch.tensor([[True, True, False]]), size=256)
    matched = assign(MaxIoUAssigner(0.5, 0.4, low_quality_matches=True), PRIORS, batch)
    assert matched.dtype == torch.int64
    assert matched.tolist() == [[0, -2, -1, 1, 1, -1]]
    matched = assign(MaxIoUAssigner(0.5, 0.4, low_quality_matches=False), PRIORS, batch)
    assert matched.tolist() == [[0, -2, -1, -1, -1, -1]]


def test_low_quality_match_upgrades_an_ignored_prior():
    # gt's best IoU is 0.4 (prior 1 alone): without low-quality matches it would be ignored.
    batch = make_batch(torch.tensor([[[0.0, 0.0, 10.0, 10.0]]]), size=256)
    matched = assign(MaxIoUAssigner(), PRIORS[1:3], batch)
    assert matched.tolist() == [[0, -1]]


def test_image_without_objects_is_all_background():
    gt = torch.tensor(
        [[[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 0.0, 0.0]]]
    )
    batch = make_batch(gt, gt_valid=torch.tensor([[False, False], [True, False]]), size=256)
    matched = assign(MaxIoUAssigner(), PRIORS, batch)
    assert matched[0].tolist() == [-1] * len(PRIORS)  # nothing ignored either
    assert matched[1].tolist() == [0, 0, 0, -1, -1, -1]  # the other image is unaffected (IoU 1, 0.8, 2/3)


def test_gt_overlapping_no_prior_makes_no_low_quality_match():
    # torchvision would match every prior to it (all tie at IoU 0); we match none.
    batch = make_batch(torch.tensor([[[300.0, 300.0, 310.0, 310.0]]]), size=256)
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
    batch = make_batch(gt, gt_valid=valid, size=128)

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


def test_ssd_forces_each_objects_best_prior_to_that_object_as_torchvisions_ssd_matcher():
    """A 12 px object inside a 40 px one: its best prior (IoU 0.18) overlaps the large object more (0.49), and
    is the small object's. Two objects share a best prior: the last takes it. A tie at an object's best IoU:
    the first prior (torchvision), or all of them (all_ties). Padded rows and an image without objects."""
    priors = torch.tensor([
        [96.0, 96.0, 124.0, 124.0],  # 0: the small gt's best (IoU 0.18); the large one's IoU 0.49 with it
        [90.0, 90.0, 130.0, 130.0],  # 1: IoU 1 with the large gt
        [10.0, 10.0, 30.0, 30.0],  # 2, 3: the best of gts 3 and 4 (IoU 0.25 and 0.16), shared
        [40.0, 10.0, 60.0, 30.0],  # 3
        [200.0, 200.0, 220.0, 220.0],  # 4, 5: tied best of gt 5 (it lies inside both, IoU 0.25)
        [202.0, 203.0, 222.0, 223.0],
    ])
    gt = torch.tensor([[
        [90.0, 90.0, 130.0, 130.0], [104.0, 104.0, 116.0, 116.0], [0.0, 0.0, 0.0, 0.0],  # row 2: padding
        [15.0, 15.0, 25.0, 25.0], [20.0, 12.0, 28.0, 20.0], [205.0, 205.0, 215.0, 215.0],
    ]] * 2)
    valid = torch.tensor([[True, True, False, True, True, True], [False] * 6])
    batch = make_batch(gt, gt_valid=valid, size=256)
    for all_ties in (False, True):
        matched = assign(SSDAssigner(0.5, 0.5, all_ties=all_ties), priors, batch)
        index = valid[0].nonzero()[:, 0]
        expected = SSDMatcher(0.5)(box_iou(gt[0, index], priors))  # the valid gts only
        expected = torch.where(expected >= 0, index[expected.clamp(min=0)], expected)
        if all_ties:
            expected[5] = 5
        assert matched[0].tolist() == expected.tolist() == [1, 0, 4, -1, 5, 5 if all_ties else -1], all_ties
        assert matched[1].tolist() == [-1] * len(priors)
    # MaxIoUAssigner's low-quality rule gives prior 0 to the large object: the small one has no prior at all.
    assert assign(MaxIoUAssigner(0.5, 0.5, True), priors, batch)[0, :2].tolist() == [0, 0]


def test_bad_thresholds_and_shapes_name_the_field():
    with pytest.raises(ValueError, match="assigner.neg_iou"):
        MaxIoUAssigner(pos_iou=0.4, neg_iou=0.5)
    batch = make_batch(GT, gt_valid=torch.tensor([[True, True, False]]), size=256)
    batch.gt_valid = batch.gt_valid[:, :2]
    with pytest.raises(ValueError, match="gt_valid"):
        assign(MaxIoUAssigner(), PRIORS, batch)


# --- YoloAssigner on a tiny grid (tests.models.conftest) ------------------------------------------------


def yolo_assign(assigner, batch, box_reg=None):
    priors = tiny_priors()
    b = len(batch)
    box_reg = torch.zeros(b, NUM_PRIORS, 4) if box_reg is None else box_reg
    outputs = HeadOutput(torch.zeros(b, NUM_PRIORS, 1), box_reg, torch.zeros(b, NUM_PRIORS))
    return assigner(outputs, priors, batch)


def test_assignment_on_hand_made_boxes():
    gt = torch.tensor(
        [
            [
                cxcywh(13, 21, 8, 4),  # anchor (8, 4) of level 0, cell x 1, y 2
                cxcywh(32, 24, 22, 10),  # anchor (20, 10) of level 1; x = 32 is a cell edge: cell 2, not 1
                cxcywh(50, 14, 30, 30),  # anchor (32, 32) of level 2, cell x 1, y 0
                cxcywh(4, 4, 4, 4),  # padding, exactly on prior 0
            ]
        ]
    )
    matched = yolo_assign(YoloAssigner(ignore_iou=None), make_batch(gt, gt_valid=torch.tensor([[True, True, True, False]])))
    expected = torch.full((1, NUM_PRIORS), -1)
    expected[0, prior_index(0, 2, 1, 1)] = 0
    expected[0, prior_index(1, 1, 2, 1)] = 1
    expected[0, prior_index(2, 0, 1, 0)] = 2
    assert matched.dtype == torch.int64 and torch.equal(matched, expected)


def test_two_gts_on_one_prior_the_better_shape_wins():
    gt = torch.tensor(
        [
            [cxcywh(12, 20, 7, 4), cxcywh(13, 21, 8, 4)],  # both: anchor (8, 4), cell (1, 2); IoU 0.875 and 1
            [cxcywh(13, 21, 8, 4), cxcywh(13, 21, 8, 4)],  # a tie: the lower index
        ]
    )
    matched = yolo_assign(YoloAssigner(ignore_iou=None), make_batch(gt))
    a = prior_index(0, 2, 1, 1)
    assert matched[0, a] == 1 and matched[1, a] == 0
    assert (matched >= 0).sum() == 2  # the losing gt is learnt by no other prior


def reference_assignment(gt, valid, box_reg, ignore_iou):
    """The paper's rule one gt at a time: the best of the 9 anchor shapes, then its level's centre cell;
    then darknet's ignore rule against the predictions decoded one box at a time."""
    cells = prior_cells()
    matched = torch.full((len(gt), NUM_PRIORS), -1)
    for i in range(len(gt)):
        index = valid[i].nonzero()[:, 0].tolist()
        if ignore_iou is not None and index:
            predicted = torch.stack([darknet_decode(box_reg[i, a], *cell) for a, cell in enumerate(cells)])
            overlaps = box_iou(gt[i, index], predicted).max(dim=0).values > ignore_iou
            matched[i, overlaps] = -2
        best = {}
        for m in index:
            x1, y1, x2, y2 = gt[i, m].tolist()
            w, h = x2 - x1, y2 - y1
            shapes = [(level, k, wh) for level in range(3) for k, wh in enumerate(ANCHORS[level])]
            ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for _, _, (aw, ah) in shapes]
            level, k, _ = shapes[max(range(9), key=lambda j: ious[j])]
            cx, cy = int((x1 + x2) / 2 // STRIDES[level]), int((y1 + y2) / 2 // STRIDES[level])
            a = prior_index(level, cy, cx, k)
            if a not in best or max(ious) > best[a][1]:
                best[a] = (m, max(ious))
        for a, (m, _) in best.items():
            matched[i, a] = m
    return matched


@pytest.mark.parametrize("ignore_iou", [None, 0.3])
def test_batched_assignment_equals_per_gt_reference(ignore_iou):
    g = torch.Generator().manual_seed(1)
    num_images, max_gt = 4, 6
    centres = torch.rand(num_images, max_gt, 2, generator=g) * 63
    sizes = torch.rand(num_images, max_gt, 2, generator=g) * 44 + 3
    gt = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
    valid = torch.rand(num_images, max_gt, generator=g) < 0.7
    valid[0] = False  # an image without objects
    box_reg = torch.randn(num_images, NUM_PRIORS, 4, generator=g) * 0.5
    batch = make_batch(gt, gt_valid=valid)
    matched = yolo_assign(YoloAssigner(ignore_iou=ignore_iou, box_coder=YoloBoxCoder()), batch, box_reg)
    expected = reference_assignment(batch.gt_boxes, valid, box_reg, ignore_iou)
    assert torch.equal(matched, expected)
    assert ((matched >= 0).sum(dim=1) <= valid.sum(dim=1)).all()  # at most one prior per gt
    assert (matched >= 0).sum() >= 8 and (ignore_iou is None or (matched == -2).sum() >= 8)
    assert (matched[0] == -1).all()


def test_bad_assigner_settings_name_the_key():
    with pytest.raises(ValueError, match="assigner.ignore_iou"):
        YoloAssigner(ignore_iou=1.5, box_coder=YoloBoxCoder())
    with pytest.raises(ValueError, match="assigner.box_coder"):
        YoloAssigner(ignore_iou=0.5)
