"""Softmax losses against per-image references written with plain torch."""

import math

import pytest
import torch
import torch.nn.functional as F

from detlab.losses.softmax import HardNegativeMiningCE, SoftmaxCrossEntropy, SoftmaxFocalLoss


def random_case(seed=0, b=3, a=50, k=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, a, k + 1, generator=g) * 3
    labels = torch.randint(-2, k, (b, a), generator=g)
    labels[1] = torch.where(labels[1] >= 0, -1, labels[1])  # an image without positives
    return logits, labels


def test_ce_equals_torch_cross_entropy_over_kept_priors():
    logits, labels = random_case()
    keep = labels != -2
    expected = F.cross_entropy(logits[keep], (labels[keep] + 1).clamp(min=0), reduction="sum")
    assert SoftmaxCrossEntropy()(logits, labels) == pytest.approx(float(expected), rel=1e-6)
    assert SoftmaxCrossEntropy().num_outputs(4) == 5


def test_hard_negative_mining_picks_the_ratio_hardest_negatives_per_image():
    logits, labels = random_case(seed=1, a=200)
    expected = 0.0
    for i in range(logits.shape[0]):  # the reference: one image at a time, sorted losses
        target = (labels[i] + 1).clamp(min=0)
        ce = F.cross_entropy(logits[i], target, reduction="none")
        pos = labels[i] >= 0
        neg = labels[i] == -1
        k = min(3 * int(pos.sum()), int(neg.sum()))
        expected += float(ce[pos].sum()) + float(ce[neg].sort(descending=True).values[:k].sum())
    got = HardNegativeMiningCE(neg_pos_ratio=3)(logits, labels)
    assert got == pytest.approx(expected, rel=1e-6)


def test_hard_negative_mining_without_positives_is_zero_and_gradients_flow():
    logits = torch.randn(2, 10, 3, requires_grad=True)
    labels = torch.full((2, 10), -1)
    assert float(HardNegativeMiningCE()(logits, labels).detach()) == 0.0
    labels[0, 0] = 1
    HardNegativeMiningCE()(logits, labels).backward()
    assert int((logits.grad.abs().sum(-1) > 0).sum()) == 4  # 1 positive + 3 negatives


def test_softmax_focal_reduces_to_ce_and_matches_closed_form():
    logits, labels = random_case(seed=2)
    assert SoftmaxFocalLoss(alpha=-1, gamma=0)(logits, labels) == pytest.approx(
        float(SoftmaxCrossEntropy()(logits, labels)), rel=1e-6
    )
    # Two outputs (background, class 0) with p_t = 0.9 for the object: 0.25 * 0.1^2 * -log(0.9).
    p = torch.tensor([[[math.log(0.1), math.log(0.9)]]])
    got = SoftmaxFocalLoss(alpha=0.25, gamma=2)(p, torch.tensor([[0]]))
    assert float(got) == pytest.approx(0.25 * 0.01 * -math.log(0.9), rel=1e-5)
    # Every kept prior of a random case, in float64: alpha on the objects, 1 - alpha on the background ones.
    keep = labels != -2
    target = (labels[keep] + 1).clamp(min=0)
    p_t = logits[keep].double().softmax(-1).gather(-1, target[:, None])[:, 0]
    weight = torch.where(labels[keep] >= 0, 0.25, 0.75).double()
    expected = (-weight * (1 - p_t) ** 2 * p_t.log()).sum()
    assert (labels == -1).sum() > 10 and (labels >= 0).sum() > 10  # both weights count
    assert float(SoftmaxFocalLoss(alpha=0.25, gamma=2)(logits, labels)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 0.0, 2.0])
def test_softmax_focal_gradient_is_finite_on_certain_priors(gamma):
    """A logit margin of 30 makes CE exactly 0 in float32, where (1 - p_t)^gamma has an infinite derivative for
    gamma < 1. The reference, -alpha_t (1 - p_t)^gamma log(p_t) in float64 (CE ~1e-13, not 0), has a finite
    gradient ~0 there; an ignored prior takes no gradient at all."""
    logits = torch.tensor([[[30.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 30.0, 0.0], [30.0, 0.0, 0.0]]])
    labels = torch.tensor([[-1, 1, 0, -2]])  # certain background, an object, a certain object, ignored
    ours_in = logits.clone().requires_grad_()
    ours = SoftmaxFocalLoss(alpha=0.25, gamma=gamma)(ours_in, labels)
    ours.backward()
    ref_in = logits.double().requires_grad_()
    target = (labels + 1).clamp(min=0)[..., None]
    p_t = ref_in.softmax(-1).gather(-1, target)[..., 0]
    weight = torch.where(labels >= 0, 0.25, 0.75).double()
    reference = (-weight * (1 - p_t) ** gamma * p_t.log())[labels != -2].sum()
    reference.backward()
    assert torch.isfinite(ours_in.grad).all()
    torch.testing.assert_close(ours, reference.float())
    torch.testing.assert_close(ours_in.grad, ref_in.grad.float())
    assert ours_in.grad[0, 3].abs().sum() == 0
