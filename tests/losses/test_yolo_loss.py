"""YoloLoss against a per-image reference built from torchvision's functions and darknet's decoding formula."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detlab.errors import ConfigError
from detlab.losses.bce import BinaryCrossEntropy
from detlab.losses.box import GIoULoss
from detlab.losses.focal import SigmoidFocalLoss
from detlab.losses.yolo import YoloLoss, YoloXYWHLoss
from detlab.models.box_coder import YoloBoxCoder
from detlab.structures import HeadOutput, Priors
from tests.conftest import make_batch

NUM_PRIORS = 60
STRIDES = torch.tensor([8.0] * 40 + [16.0] * 20)


def make_case(num_images=3, max_gt=4, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(num_images, max_gt, generator=g) < 0.7
    xy = torch.rand(num_images, max_gt, 2, generator=g) * 80
    gt = torch.cat([xy, xy + torch.rand(num_images, max_gt, 2, generator=g) * 30 + 4], dim=-1)
    batch = make_batch(gt, torch.randint(0, num_classes, (num_images, max_gt), generator=g), valid, size=128)
    centres = torch.rand(NUM_PRIORS, 2, generator=g) * 100 + 10
    half = torch.rand(NUM_PRIORS, 2, generator=g) * 15 + 3
    priors = Priors(torch.cat([centres - half, centres + half], dim=1), STRIDES, (40, 20))
    outputs = HeadOutput(
        cls_logits=torch.randn(num_images, NUM_PRIORS, num_classes, generator=g),
        box_reg=torch.randn(num_images, NUM_PRIORS, 4, generator=g) * 0.5,
        objectness=torch.randn(num_images, NUM_PRIORS, generator=g) * 2,
    )
    # A random assignment that only ever points at valid gts (what an assigner guarantees).
    choice = torch.randint(0, max_gt, (num_images, NUM_PRIORS), generator=g)
    kind = torch.randint(0, 4, (num_images, NUM_PRIORS), generator=g)
    matched = torch.where(kind == 0, -2, torch.where(kind == 1, choice, -1))
    matched = torch.where((matched >= 0) & ~valid.gather(1, matched.clamp(min=0)), -1, matched)
    return outputs, priors, matched, batch


def darknet_decode(box_reg, prior_boxes, strides):
    """Boxes [N, 4]: centre = prior centre + (sigmoid(t) - 0.5) * stride, size = prior size * exp(t)."""
    centre = (prior_boxes[:, :2] + prior_boxes[:, 2:]) / 2 + (box_reg[:, :2].sigmoid() - 0.5) * strides[:, None]
    size = (prior_boxes[:, 2:] - prior_boxes[:, :2]) * box_reg[:, 2:].exp()
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def reference(outputs, priors, matched, batch, classification):
    """Sums one image at a time with torchvision's functions; classification(logits, targets) -> sum."""
    obj_sum, cls_sum, box_sum, num_pos = 0.0, 0.0, 0.0, 0
    for i in range(len(batch)):
        keep, pos = matched[i] != -2, matched[i] >= 0
        obj_sum += classification(outputs.objectness[i][keep], pos[keep].float())
        gt = matched[i, pos]
        targets = F.one_hot(batch.gt_labels[i, gt], outputs.cls_logits.shape[-1]).float()
        cls_sum += classification(outputs.cls_logits[i, pos], targets)
        boxes = darknet_decode(outputs.box_reg[i, pos], priors.boxes[pos], priors.strides[pos])
        box_sum += generalized_box_iou_loss(boxes, batch.gt_boxes[i, gt], reduction="sum")
        num_pos += int(pos.sum())
    return obj_sum / num_pos, cls_sum / num_pos, box_sum / num_pos, num_pos


def test_focal_applies_to_objectness_and_classes():
    outputs, priors, matched, batch = make_case()
    criterion = YoloLoss(SigmoidFocalLoss(alpha=0.25, gamma=2.0), GIoULoss(), YoloBoxCoder(), 2.0, 3.0, 5.0)
    losses = criterion(outputs, priors, matched, batch)
    obj, cls, box, num_pos = reference(
        outputs, priors, matched, batch, lambda x, t: sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="sum")
    )
    assert num_pos > 10 and set(losses) == {"obj", "cls", "box"}
    torch.testing.assert_close(losses["obj"], 2.0 * obj)
    torch.testing.assert_close(losses["cls"], 3.0 * cls)
    torch.testing.assert_close(losses["box"], 5.0 * box)


def test_bce_is_yolov3s_logistic_losses_and_focal_with_gamma_0_equals_it():
    outputs, priors, matched, batch = make_case(seed=1)
    losses = YoloLoss(BinaryCrossEntropy(), GIoULoss(), YoloBoxCoder())(outputs, priors, matched, batch)
    obj, cls, box, _ = reference(
        outputs, priors, matched, batch, lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    )
    torch.testing.assert_close(losses["obj"], obj)
    torch.testing.assert_close(losses["cls"], cls)
    torch.testing.assert_close(losses["box"], box)
    plain = YoloLoss(SigmoidFocalLoss(alpha=-1, gamma=0), GIoULoss(), YoloBoxCoder())(outputs, priors, matched, batch)
    for key in losses:
        torch.testing.assert_close(plain[key], losses[key])


def test_paper_box_terms_by_hand():
    # One prior centred at (12, 20), anchor 8 x 4, stride 8; the gt's centre sits at offset (0.75, 0.25) of the
    # cell and its size is (16, 2) = anchor x (2, 1/2).
    prior = torch.tensor([[8.0, 18.0, 16.0, 22.0]])
    gt = torch.tensor([[14.0 - 8.0, 18.0 - 1.0, 14.0 + 8.0, 18.0 + 1.0]])
    box_reg = torch.tensor([[0.3, -0.2, 0.1, 0.4]])
    loss = YoloXYWHLoss()(box_reg, prior, gt, YoloBoxCoder(), torch.tensor([8.0]))
    sx, sy = torch.sigmoid(torch.tensor(0.3)), torch.sigmoid(torch.tensor(-0.2))
    bce = -(0.75 * torch.log(sx) + 0.25 * torch.log(1 - sx)) - (0.25 * torch.log(sy) + 0.75 * torch.log(1 - sy))
    squared = (0.1 - torch.log(torch.tensor(2.0))) ** 2 + (0.4 - torch.log(torch.tensor(0.5))) ** 2
    torch.testing.assert_close(loss, bce + squared)


def test_no_positive_gives_zero_class_and_box_terms():
    outputs, priors, matched, batch = make_case(seed=2)
    matched = torch.where(matched >= 0, -1, matched)
    losses = YoloLoss(SigmoidFocalLoss(), GIoULoss(), YoloBoxCoder())(outputs, priors, matched, batch)
    assert losses["cls"] == 0 and losses["box"] == 0 and losses["obj"] > 0
    keep = matched != -2
    expected = sigmoid_focal_loss(outputs.objectness[keep], torch.zeros(int(keep.sum())), reduction="sum")
    torch.testing.assert_close(losses["obj"], expected)  # normaliser clamped to 1


def test_gradients_reach_every_output():
    outputs, priors, matched, batch = make_case(seed=3)
    for tensor in (outputs.cls_logits, outputs.box_reg, outputs.objectness):
        tensor.requires_grad_(True)
    losses = YoloLoss(BinaryCrossEntropy(), YoloXYWHLoss(), YoloBoxCoder())(outputs, priors, matched, batch)
    sum(losses.values()).backward()
    for tensor in (outputs.cls_logits, outputs.box_reg, outputs.objectness):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_missing_objectness_and_negative_weights_are_refused():
    # Softmax losses are YoloHead's to refuse (tests/models/test_yolo.py): the rule lives once, in the head.
    outputs, priors, matched, batch = make_case()
    outputs.objectness = None
    with pytest.raises(ValueError, match="objectness"):
        YoloLoss(BinaryCrossEntropy(), GIoULoss(), YoloBoxCoder())(outputs, priors, matched, batch)
    with pytest.raises(ValueError, match="model.criterion.box_weight"):
        YoloLoss(BinaryCrossEntropy(), GIoULoss(), YoloBoxCoder(), box_weight=-1)


def test_images_normaliser_is_darknets_mean_over_images_of_per_image_sums():
    outputs, priors, matched, batch = make_case(seed=4)
    criterion = YoloLoss(BinaryCrossEntropy(), GIoULoss(), YoloBoxCoder(), normalize="images")
    losses = criterion(outputs, priors, matched, batch)
    obj, cls, box, num_pos = reference(
        outputs, priors, matched, batch, lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    )
    # reference() divides the batch's sums by its positives; darknet's loss is their mean over the 3 images
    assert num_pos != len(batch) == 3
    for key, term in (("obj", obj), ("cls", cls), ("box", box)):
        torch.testing.assert_close(losses[key], term * num_pos / 3)
    with pytest.raises(ConfigError, match="model.criterion.normalize='image'"):
        YoloLoss(BinaryCrossEntropy(), GIoULoss(), YoloBoxCoder(), normalize="image")
