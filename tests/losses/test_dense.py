"""DenseDetectionLoss: the normaliser, an image-free batch, and equality with a per-image reference."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import sigmoid_focal_loss

import detlab.losses.dense as dense
from detlab.errors import ConfigError
from detlab.losses.bce import BinaryCrossEntropy
from detlab.losses.box import L1Loss, SmoothL1Loss
from detlab.losses.dense import DenseDetectionLoss
from detlab.losses.focal import SigmoidFocalLoss
from detlab.models.box_coder import DeltaXYWHBoxCoder
from detlab.structures import HeadOutput, Priors
from tests.conftest import make_batch


def random_boxes(shape, g):
    xy = torch.rand(*shape, 2, generator=g) * 100
    return torch.cat([xy, xy + torch.rand(*shape, 2, generator=g) * 40 + 2], dim=-1)


def make_case(num_images=3, num_priors=50, max_gt=4, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(num_images, max_gt, generator=g) < 0.7
    batch = make_batch(
        random_boxes((num_images, max_gt), g), torch.randint(0, num_classes, (num_images, max_gt), generator=g), valid,
        size=32,
    )
    priors = Priors(random_boxes((num_priors,), g), torch.full((num_priors,), 8), (num_priors,))
    outputs = HeadOutput(
        cls_logits=torch.randn(num_images, num_priors, num_classes, generator=g),
        box_reg=torch.randn(num_images, num_priors, 4, generator=g) * 0.3,
    )
    # A random assignment that only ever points at valid gts (what an assigner guarantees).
    choice = torch.randint(0, max_gt, (num_images, num_priors), generator=g)
    kind = torch.randint(0, 3, (num_images, num_priors), generator=g)
    matched = torch.where(kind == 0, -1, torch.where(kind == 1, -2, choice))
    matched = torch.where((matched >= 0) & ~valid.gather(1, matched.clamp(min=0)), -1, matched)
    return outputs, priors, matched, batch


def test_batched_equals_per_image_reference():
    outputs, priors, matched, batch = make_case()
    criterion = DenseDetectionLoss(SigmoidFocalLoss(), SmoothL1Loss(beta=1 / 9), DeltaXYWHBoxCoder(), box_weight=2.0)
    losses = criterion(outputs, priors, matched, batch)

    cls_sum, box_sum, num_pos = 0.0, 0.0, 0
    for i in range(len(batch)):  # the reference: one image at a time, torchvision's own functions
        keep, pos = matched[i] != -2, matched[i] >= 0
        targets = torch.zeros_like(outputs.cls_logits[i])
        targets[pos, batch.gt_labels[i, matched[i, pos]]] = 1.0
        cls_sum += sigmoid_focal_loss(outputs.cls_logits[i][keep], targets[keep], reduction="sum")
        deltas = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(batch.gt_boxes[i, matched[i, pos]], priors.boxes[pos])
        box_sum += F.smooth_l1_loss(outputs.box_reg[i, pos], deltas, beta=1 / 9, reduction="sum")
        num_pos += int(pos.sum())
    assert num_pos > 10
    assert set(losses) == {"cls", "box"}
    torch.testing.assert_close(losses["cls"], cls_sum / num_pos)
    torch.testing.assert_close(losses["box"], 2.0 * box_sum / num_pos)


def test_normaliser_is_the_number_of_positives():
    outputs, priors, _, batch = make_case(num_images=2, num_priors=6, num_classes=2, seed=1)
    batch.gt_valid[:] = True
    batch.gt_labels[:] = torch.tensor([1, 0, 1, 0])
    matched = torch.tensor([[0, -1, -2, 1, -1, -1], [-2, -2, 2, 3, 3, -1]])  # 5 positives
    target = torch.tensor(  # by hand: gt 0 -> class 1, gt 1 -> class 0, gt 2 -> 1, gt 3 -> 0
        [[[0, 1], [0, 0], [0, 0], [1, 0], [0, 0], [0, 0]], [[0, 0], [0, 0], [0, 1], [1, 0], [1, 0], [0, 0]]]
    ).float()
    keep = matched != -2
    bce = F.binary_cross_entropy_with_logits(outputs.cls_logits[keep], target[keep], reduction="sum")
    losses = DenseDetectionLoss(BinaryCrossEntropy(), L1Loss(), DeltaXYWHBoxCoder())(outputs, priors, matched, batch)
    torch.testing.assert_close(losses["cls"], bce / 5)


def test_batch_without_objects():
    outputs, priors, _, batch = make_case(seed=2)
    batch.gt_valid[:] = False
    batch.gt_boxes[:] = 0.0
    matched = torch.full(outputs.cls_logits.shape[:2], -1)
    matched[:, :3] = -2
    outputs.cls_logits.requires_grad_()
    outputs.box_reg.requires_grad_()
    criterion = DenseDetectionLoss(SigmoidFocalLoss(), SmoothL1Loss(), DeltaXYWHBoxCoder())
    losses = criterion(outputs, priors, matched, batch)
    assert losses["box"].item() == 0.0
    # No positives: the normaliser is clamped at 1, so cls is the plain sum over the non-ignored priors.
    not_ignored = outputs.cls_logits[:, 3:]
    expected = sigmoid_focal_loss(not_ignored, torch.zeros_like(not_ignored), reduction="sum")
    torch.testing.assert_close(losses["cls"], expected)
    (losses["cls"] + losses["box"]).backward()  # both terms stay in the graph (DDP needs every parameter used)
    assert outputs.box_reg.grad is not None and torch.isfinite(outputs.cls_logits.grad).all()


def test_normaliser_is_averaged_over_ranks(monkeypatch):
    """Two pretend ranks: this one has 5 positives, the other 9, so both divide by 7."""
    outputs, priors, matched, batch = make_case(seed=3)
    matched = torch.full_like(matched, -1)
    batch.gt_valid[:, 0] = True
    matched[0, :5] = 0
    monkeypatch.setattr(dense.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dense.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dense.dist, "all_reduce", lambda tensor, op: tensor.add_(9.0))
    criterion = DenseDetectionLoss(BinaryCrossEntropy(), L1Loss(), DeltaXYWHBoxCoder())
    losses = criterion(outputs, priors, matched, batch)
    monkeypatch.undo()
    single = criterion(outputs, priors, matched, batch)
    torch.testing.assert_close(losses["cls"], single["cls"] * 5 / 7)
    torch.testing.assert_close(losses["box"], single["box"] * 5 / 7)


def test_an_unknown_normalisation_names_the_key():
    with pytest.raises(ConfigError, match="model.criterion.normalize='images'"):
        DenseDetectionLoss(SigmoidFocalLoss(), L1Loss(), DeltaXYWHBoxCoder(), normalize="images")
