"""SigmoidFocalLoss against torchvision's sigmoid_focal_loss, plain BCE and a closed-form value."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from detlab.losses.focal import SigmoidFocalLoss
from detlab.losses.softmax import SoftmaxFocalLoss


def random_case(seed: int = 0, num_classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 30, num_classes, generator=g) * 3
    labels = torch.randint(-2, num_classes, (2, 30), generator=g)  # -2 ignored, -1 background, else a class
    return logits, labels


def reference_targets(labels: torch.Tensor, num_classes: int):
    keep = labels != -2
    return F.one_hot(labels[keep].clamp(min=0), num_classes).float() * (labels[keep] >= 0)[:, None].float(), keep


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.5), (0.25, 0.0)])
def test_value_and_gradient_match_torchvision(alpha, gamma):
    logits, labels = random_case()
    targets, keep = reference_targets(labels, 5)
    ours_in = logits.clone().requires_grad_()
    ours = SigmoidFocalLoss(alpha, gamma)(ours_in, labels)
    ref_in = logits.clone().requires_grad_()
    reference = sigmoid_focal_loss(ref_in[keep], targets, alpha=alpha, gamma=gamma, reduction="sum")
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_gamma_0_alpha_off_is_binary_cross_entropy():
    logits, labels = random_case(1)
    targets, keep = reference_targets(labels, 5)
    expected = F.binary_cross_entropy_with_logits(logits[keep], targets, reduction="sum")
    torch.testing.assert_close(SigmoidFocalLoss(alpha=-1, gamma=0)(logits, labels), expected)


def test_closed_form():
    # p = 0.9 for the true class 0 of one prior, one class: FL = alpha (1 - p)^gamma (-log p).
    logit = math.log(0.9 / 0.1)
    loss = SigmoidFocalLoss(alpha=0.25, gamma=2.0)(torch.tensor([[[logit]]]), torch.tensor([[0]]))
    torch.testing.assert_close(loss, torch.tensor(0.25 * 0.01 * -math.log(0.9)))


def test_ignored_priors_contribute_nothing():
    logits, labels = random_case(2)
    loss = SigmoidFocalLoss()
    changed = logits.clone()
    changed[labels == -2] = 1000.0  # whatever an ignored prior predicts
    torch.testing.assert_close(loss(changed, labels), loss(logits, labels))
    all_ignored = torch.full_like(labels, -2)
    assert loss(logits, all_ignored).item() == 0.0


def test_stable_at_large_logits():
    logits = torch.tensor([[[100.0, -100.0], [-100.0, 100.0]]], requires_grad=True)
    labels = torch.tensor([[0, 0]])  # prior 0 right with certainty, prior 1 wrong with certainty on both classes
    loss = SigmoidFocalLoss()(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # Only prior 1 is wrong: class 0 (target 1) at logit -100 and class 1 (target 0) at logit 100, ~100 each.
    torch.testing.assert_close(loss, torch.tensor(0.25 * 100 + 0.75 * 100))


def test_half_precision_logits_give_float32_loss():
    logits, labels = random_case(3)
    loss = SigmoidFocalLoss()(logits.half(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, SigmoidFocalLoss()(logits.half().float(), labels))


@pytest.mark.parametrize("focal", [SigmoidFocalLoss, SoftmaxFocalLoss])
def test_both_focal_losses_refuse_bad_parameters(focal):
    with pytest.raises(ValueError, match="loss.alpha"):
        focal(alpha=1.5)
    with pytest.raises(ValueError, match="loss.gamma"):
        focal(gamma=-1.0)
    assert (focal(alpha=-1, gamma=0).alpha, focal(alpha=1.0).alpha) == (-1, 1.0)


def test_num_outputs_and_bad_arguments():
    assert SigmoidFocalLoss().num_outputs(80) == 80
    with pytest.raises(ValueError, match="target_labels"):
        SigmoidFocalLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.int64))
