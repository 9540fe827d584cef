"""FPN against torchvision's FeaturePyramidNetwork with the same weights."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from detlab.models.necks.fpn import FPN


def copy_into_torchvision(ours: FPN, tv: FeaturePyramidNetwork) -> None:
    for mine, theirs in zip(ours.lateral, tv.inner_blocks):
        theirs[0].load_state_dict(mine.state_dict())
    for mine, theirs in zip(ours.output, tv.layer_blocks):
        theirs[0].load_state_dict(mine.state_dict())


def features(shape=(136, 200)):
    g = torch.Generator().manual_seed(0)
    h, w = shape
    return [torch.randn(2, c, -(-h // s), -(-w // s), generator=g) for c, s in ((16, 8), (32, 16), (64, 32))]


def test_retinanet_fpn_equals_torchvision_p6p7_from_c5():
    ours = FPN([16, 32, 64], [8, 16, 32], out_channels=24, num_extra_levels=2, extra_source="c5")
    tv = FeaturePyramidNetwork([16, 32, 64], 24, extra_blocks=LastLevelP6P7(64, 24))
    copy_into_torchvision(ours, tv)
    tv.extra_blocks.p6.load_state_dict(ours.extra[0].state_dict())
    tv.extra_blocks.p7.load_state_dict(ours.extra[1].state_dict())
    feats = features()
    expected = list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
    got = ours(feats)
    assert len(got) == 5 and ours.strides == (8, 16, 32, 64, 128)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_maxpool_extra_level_equals_torchvision():
    ours = FPN([16, 32, 64], [8, 16, 32], out_channels=24, num_extra_levels=1, extra_source="maxpool")
    tv = FeaturePyramidNetwork([16, 32, 64], 24, extra_blocks=LastLevelMaxPool())
    copy_into_torchvision(ours, tv)
    feats = features((64, 96))
    for a, b in zip(ours(feats), tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values()):
        torch.testing.assert_close(a, b)


def test_odd_sizes_give_ceil_shapes():
    ours = FPN([16, 32, 64], [8, 16, 32], out_channels=8, extra_source="p5")
    shapes = [tuple(x.shape[-2:]) for x in ours(features((136, 200)))]
    assert shapes == [(17, 25), (9, 13), (5, 7), (3, 4), (2, 2)]


def test_bad_extra_source_names_the_key():
    with pytest.raises(ValueError, match="model.neck.extra_source"):
        FPN([16], [8], extra_source="p4")
