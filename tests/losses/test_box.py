"""Box losses against torch's smooth_l1_loss / l1_loss on torchvision-encoded targets and torchvision's GIoU."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss

from detlab.losses.box import GIoULoss, L1Loss, SmoothL1Loss
from detlab.models.box_coder import DeltaXYWHBoxCoder

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def random_case(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def boxes():
        xy = torch.rand(n, 2, generator=g) * 100
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50 + 2], dim=1)

    return torch.randn(n, 4, generator=g) * 0.5, boxes(), boxes()


@pytest.mark.parametrize(
    "ours, reference",
    [
        (SmoothL1Loss(beta=1 / 9), lambda x, y: F.smooth_l1_loss(x, y, beta=1 / 9, reduction="sum")),
        (SmoothL1Loss(beta=0.0), lambda x, y: F.l1_loss(x, y, reduction="sum")),
        (L1Loss(), lambda x, y: F.l1_loss(x, y, reduction="sum")),
    ],
)
def test_delta_losses(ours, reference):
    box_reg, priors, gt = random_case()
    ours_in = box_reg.clone().requires_grad_()
    loss = ours(ours_in, priors, gt, DeltaXYWHBoxCoder(WEIGHTS))
    ref_in = box_reg.clone().requires_grad_()
    expected = reference(ref_in, BoxCoder(WEIGHTS).encode_single(gt, priors))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_giou_loss_matches_torchvision_on_decoded_boxes():
    box_reg, priors, gt = random_case(seed=1)
    ours_in = box_reg.clone().requires_grad_()
    loss = GIoULoss()(ours_in, priors, gt, DeltaXYWHBoxCoder(WEIGHTS))
    ref_in = box_reg.clone().requires_grad_()
    expected = generalized_box_iou_loss(BoxCoder(WEIGHTS).decode_single(ref_in, priors), gt, reduction="sum")
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_closed_forms():
    coder = DeltaXYWHBoxCoder()
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    # Zero deltas decode to the priors: GIoU loss 0 for the perfect box; for the disjoint one,
    # IoU 0 and the enclosing box [0, 0, 30, 10] has 100 of its 300 uncovered: loss 1 + 1/3.
    zero = torch.zeros(2, 4)
    torch.testing.assert_close(GIoULoss()(zero, priors, gt, coder), torch.tensor(1 + 1 / 3))
    # The second target encodes as dx = 2, others 0: L1 = 2, smooth L1 (beta 1) = 2 - 0.5.
    torch.testing.assert_close(L1Loss()(zero, priors, gt, coder), torch.tensor(2.0))
    torch.testing.assert_close(SmoothL1Loss(beta=1.0)(zero, priors, gt, coder), torch.tensor(1.5))


@pytest.mark.parametrize("loss", [SmoothL1Loss(), L1Loss(), GIoULoss()])
def test_no_positives_is_zero_and_differentiable(loss):
    box_reg = torch.zeros(0, 4, requires_grad=True)
    value = loss(box_reg, torch.zeros(0, 4), torch.zeros(0, 4), DeltaXYWHBoxCoder())
    assert value.item() == 0.0
    value.backward()


def test_bad_beta_names_the_key():
    with pytest.raises(ValueError, match="box_loss.beta"):
        SmoothL1Loss(beta=-1.0)
