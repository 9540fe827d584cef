"""FPN against torchvision's FeaturePyramidNetwork with the same weights; shapes and strides at odd sizes."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from detlab.models.necks.fpn import FPN

CHANNELS, STRIDES = [16, 32, 64], [8, 16, 32]


def features(h: int = 136, w: int = 200) -> list[torch.Tensor]:
    """C3..C5 of an h x w image, sized as a ResNet makes them: ceil(size / stride)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, c, -(-h // s), -(-w // s), generator=g) for c, s in zip(CHANNELS, STRIDES)]


def torchvision_fpn(ours: FPN, extra_blocks) -> FeaturePyramidNetwork:
    tv = FeaturePyramidNetwork(CHANNELS, ours.out_channels, extra_blocks=extra_blocks)
    for mine, theirs in zip(ours.lateral, tv.inner_blocks):
        theirs[0].load_state_dict(mine.state_dict())
    for mine, theirs in zip(ours.output, tv.layer_blocks):
        theirs[0].load_state_dict(mine.state_dict())
    if isinstance(extra_blocks, LastLevelP6P7):
        extra_blocks.p6.load_state_dict(ours.extra[0].state_dict())
        extra_blocks.p7.load_state_dict(ours.extra[1].state_dict())
    return tv


def run_torchvision(tv: FeaturePyramidNetwork, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())


def test_retinanet_fpn_equals_torchvision_p6p7_from_c5():
    ours = FPN(CHANNELS, STRIDES, out_channels=24, num_extra_levels=2, extra_source="c5")
    # torchvision takes P6 from C5 when C5's channels differ from the output's (64 != 24 here).
    tv = torchvision_fpn(ours, LastLevelP6P7(64, 24))
    got, expected = ours(features()), run_torchvision(tv, features())
    assert len(got) == len(expected) == 5 and ours.strides == (8, 16, 32, 64, 128)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_p5_source_equals_torchvision_p6p7_from_p5():
    ours = FPN(CHANNELS, STRIDES, out_channels=24, num_extra_levels=2, extra_source="p5")
    tv = torchvision_fpn(ours, LastLevelP6P7(24, 24))  # equal channels: torchvision's v1 RetinaNet and FCOS, from P5
    for a, b in zip(ours(features()), run_torchvision(tv, features())):
        torch.testing.assert_close(a, b)


def test_maxpool_extra_level_equals_torchvision():
    ours = FPN(CHANNELS, STRIDES, out_channels=24, num_extra_levels=1, extra_source="maxpool")
    tv = torchvision_fpn(ours, LastLevelMaxPool())
    got, expected = ours(features(64, 96)), run_torchvision(tv, features(64, 96))
    assert len(got) == len(expected) == 4 and ours.strides == (8, 16, 32, 64)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("source", ["c5", "p5", "maxpool"])
def test_non_square_odd_sizes_give_ceil_shapes(source):
    ours = FPN(CHANNELS, STRIDES, out_channels=8, extra_source=source)
    levels = ours(features(136, 200))
    assert ours.strides == (8, 16, 32, 64, 128)
    assert [tuple(x.shape) for x in levels] == [(2, 8, -(-136 // s), -(-200 // s)) for s in ours.strides]


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="model.neck.extra_source"):
        FPN([16], [8], extra_source="p4")
    with pytest.raises(ValueError, match="in_strides"):
        FPN([16, 32], [8])
    with pytest.raises(ValueError, match="3 backbone feature maps but got 2"):
        FPN(CHANNELS, STRIDES)(features()[:2])


def test_extra_levels_on_a_one_pixel_map_have_bf16_gradients_equal_to_float32():
    """RetinaNet's inputs up to 64 px wide give P6 one pixel wide, and the P7 conv (3x3, stride 2) reads it under
    trainer.precision=bf16-mixed: torch's CPU bf16 convolution left the weight gradient of the taps that see only
    padding unwritten (whatever the allocator held: NaN or 1e28 from run to run). Its reference: the float32
    gradient, whose taps off the centre are exactly 0 (they multiply the zero padding)."""
    ours = FPN(CHANNELS, STRIDES, out_channels=16, num_extra_levels=2, extra_source="c5")
    feats = features(64, 64)  # C5 2 x 2, P6 1 x 1
    ours(feats)[-1].sum().backward()
    expected = ours.extra[1].weight.grad.clone()
    assert ours(feats)[-2].shape[-2:] == (1, 1) and expected[..., 1, 1].abs().sum() > 0
    assert torch.equal(expected[..., [0, 2], :], torch.zeros_like(expected[..., [0, 2], :]))
    for _ in range(5):
        ours.zero_grad()  # the gradients are allocated afresh, where this freed NaN tensor was: what showed the bug
        torch.full((1 << 16,), float("nan"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            level = ours(feats)[-1]
        level.float().sum().backward()
        torch.testing.assert_close(ours.extra[1].weight.grad, expected, atol=0.05 * expected.abs().max().item(), rtol=0)
