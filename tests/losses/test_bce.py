"""BinaryCrossEntropy against torch's binary_cross_entropy_with_logits and the focal loss at gamma=0, alpha off."""

import torch
import torch.nn.functional as F

from detlab.losses.bce import BinaryCrossEntropy
from detlab.losses.focal import SigmoidFocalLoss


def random_case(seed: int = 0, num_classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 20, num_classes, generator=g) * 4
    labels = torch.randint(-2, num_classes, (3, 20), generator=g)
    return logits, labels


def test_matches_torch_on_non_ignored_priors():
    logits, labels = random_case()
    keep = labels != -2
    targets = torch.zeros(keep.sum(), 4)
    for row, label in enumerate(labels[keep].tolist()):  # one-hot by hand, background stays all zeros
        if label >= 0:
            targets[row, label] = 1.0
    ours_in = logits.clone().requires_grad_()
    ours = BinaryCrossEntropy()(ours_in, labels)
    ref_in = logits.clone().requires_grad_()
    reference = F.binary_cross_entropy_with_logits(ref_in[keep], targets, reduction="sum")
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_equals_focal_with_gamma_0_and_alpha_off():
    logits, labels = random_case(1)
    focal = SigmoidFocalLoss(alpha=-1, gamma=0)
    torch.testing.assert_close(BinaryCrossEntropy()(logits, labels), focal(logits, labels))


def test_closed_form_and_large_logits():
    # One prior of class 1 among 2 classes: -log(sigmoid(x1)) - log(1 - sigmoid(x0)).
    logits = torch.tensor([[[0.0, 2.0], [100.0, -100.0]]], requires_grad=True)
    labels = torch.tensor([[1, -1]])  # prior 1 is background but says class 0 with certainty
    loss = BinaryCrossEntropy()(logits, labels)
    expected = -torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.tensor(2.0)) + 100.0
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert BinaryCrossEntropy().num_outputs(7) == 7
