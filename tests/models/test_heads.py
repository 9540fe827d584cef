"""RetinaNet head against torchvision's with the same weights; the prior-probability bias."""

from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead

from detlab.models.heads.common import prior_bias
from detlab.models.heads.retinanet import RetinaNetHead


def layers_with_weights(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.GroupNorm))]


def copy_into_torchvision(ours: RetinaNetHead, tv: TVRetinaNetHead) -> None:
    pairs = [
        (ours.cls_tower, tv.classification_head.conv),
        (ours.box_tower, tv.regression_head.conv),
        (ours.cls_out, tv.classification_head.cls_logits),
        (ours.box_out, tv.regression_head.bbox_reg),
    ]
    for mine, theirs in pairs:
        mine, theirs = layers_with_weights(mine), layers_with_weights(theirs)
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("norm", [None, "gn"])
def test_equals_torchvision_retinanet_head(norm):
    # torchvision's towers are as wide as their input, and its v2 head uses GroupNorm(32) without conv bias.
    ours = RetinaNetHead(in_channels=32, num_anchors=9, num_classes=5, width=32, depth=4, norm=norm)
    tv = TVRetinaNetHead(32, 9, 5, norm_layer=partial(nn.GroupNorm, 32) if norm else None)
    with torch.no_grad():  # outputs of order 1 (not the 0.01 init), so a wrong layout cannot hide in atol
        for p in ours.parameters():
            if p.dim() > 1:  # conv weights
                p.normal_(0, 0.1)
            else:  # biases and GroupNorm's affine
                p.uniform_(0.5, 1.5)
    copy_into_torchvision(ours, tv)
    levels = [torch.randn(2, 32, 6, 10), torch.randn(2, 32, 3, 5), torch.randn(2, 32, 2, 3)]
    expected = tv(levels)
    got = ours(levels)
    assert got.cls_logits.shape == (2, 9 * (60 + 15 + 6), 5) and got.box_reg.shape == (2, 9 * 81, 4)
    assert got.cls_logits.std() > 0.1 and got.box_reg.std() > 0.1
    torch.testing.assert_close(got.cls_logits, expected["cls_logits"])
    torch.testing.assert_close(got.box_reg, expected["bbox_regression"])


def test_prior_probability_init():
    head = RetinaNetHead(in_channels=8, num_anchors=3, num_classes=4, width=8, depth=1, prior_prob=0.01)
    probs = head([torch.zeros(1, 8, 4, 4)]).cls_logits.sigmoid()
    torch.testing.assert_close(probs, torch.full_like(probs, 0.01))
    torch.testing.assert_close(head.cls_out.bias, torch.full((12,), -torch.log(torch.tensor(99.0)).item()))
    assert torch.equal(head.box_out.bias, torch.zeros(12)) and torch.equal(head.cls_tower[0].bias, torch.zeros(8))
    softmax = prior_bias(4, 0.01, background_first=True).softmax(0)
    torch.testing.assert_close(softmax, torch.tensor([0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3]))


def test_weights_start_gaussian_with_std_0_01():
    head = RetinaNetHead(in_channels=64, num_anchors=9, num_classes=20, width=64, depth=2)
    weights = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.01) < 5e-4 and abs(weights.mean().item()) < 5e-4


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="model.head.norm"):
        RetinaNetHead(in_channels=8, num_anchors=9, num_classes=3, norm="bn")
    with pytest.raises(ValueError, match="model.head.prior_prob"):
        RetinaNetHead(in_channels=8, num_anchors=9, num_classes=3, prior_prob=1.0)
    with pytest.raises(ValueError, match="model.head.num_classes"):
        RetinaNetHead(in_channels=8, num_anchors=9, num_classes=0)
    # A neck with one width per level (YOLO's): the towers are shared by the levels, so the neck is what to change
    with pytest.raises(ValueError, match=r"model.head.in_channels=\[8, 16\] from model.neck.*model/neck=fpn"):
        RetinaNetHead(in_channels=[8, 16], num_anchors=9, num_classes=3)
