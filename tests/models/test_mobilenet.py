"""MobileNetV3 backbone: the maps torchvision's network makes at each stride, the paper's channels, freezing, and
torchvision's weights loaded by name from a local cache (no network)."""

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from detlab.models.backbones.mobilenet import MobileNetV3


def _last_map_at_each_stride(features: torch.nn.Sequential, images: torch.Tensor) -> dict[int, torch.Tensor]:
    """Run torchvision's blocks one by one; per stride, the output of the last block at that resolution."""
    height = images.shape[-2]
    maps, x = {}, images
    for block in features:
        x = block(x)
        stride = round(height / x.shape[-2])
        maps[stride] = x  # a later block at the same resolution replaces it
    return maps


@pytest.mark.parametrize("variant", ["large", "small"])
def test_maps_equal_torchvision_features_at_the_end_of_each_stage(variant):
    reference = torchvision.models.get_model(f"mobilenet_v3_{variant}").features.eval()
    net = MobileNetV3(variant, out_indices=(1, 2, 3, 4)).eval()
    net.features.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 64, 96)
    expected = _last_map_at_each_stride(reference, images)
    got = net(images)
    assert net.strides == (4, 8, 16, 32)
    for stride, feature in zip(net.strides, got):
        torch.testing.assert_close(feature, expected[stride])


@pytest.mark.parametrize("variant, channels", [("large", (40, 112, 960)), ("small", (24, 48, 576))])
def test_paper_channels_and_odd_sizes(variant, channels):
    """Howard et al. 2019, Tables 1 and 2: 40/112/960 (large) and 24/48/576 (small) at strides 8, 16, 32."""
    net = MobileNetV3(variant)
    assert net.out_channels == channels and net.strides == (8, 16, 32)
    shapes = [tuple(f.shape[1:]) for f in net(torch.randn(1, 3, 50, 75))]
    assert shapes == [(c, -(-50 // s), -(-75 // s)) for c, s in zip(channels, net.strides)]


def test_only_the_stages_asked_for_are_built():
    assert len(MobileNetV3("large", out_indices=(2, 3)).features) == 13  # blocks 0..12: stride 16 ends at 12
    assert len(MobileNetV3("large").features) == 17


def test_frozen_stages_and_frozen_bn():
    net = MobileNetV3("large", frozen_stages=1, norm="frozen_bn")
    assert not any(p.requires_grad for p in net.features[:4].parameters())  # the stem and C2 (blocks 1-3)
    assert all(p.requires_grad for p in net.features[4:].parameters())
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    net = MobileNetV3("large", frozen_stages=1).train()
    assert not net.features[3].training and net.features[4].training
    net(torch.randn(2, 3, 32, 32))
    frozen_bn, trained_bn = net.features[0][1], net.features[4].block[0][1]
    assert torch.equal(frozen_bn.running_mean, torch.zeros_like(frozen_bn.running_mean))
    assert not torch.equal(trained_bn.running_mean, torch.zeros_like(trained_bn.running_mean))
    assert trained_bn.momentum == 0.1 and trained_bn.eps == 0.001


@pytest.mark.parametrize("pretrained, norm", [(True, "bn"), ("IMAGENET1K_V1", "frozen_bn")])
def test_pretrained_weights_load_by_name_from_the_torch_cache(torch_cache, random_bn_state, assert_loaded, pretrained, norm):
    """The real loading path (torchvision's weights API) fed from a cache file the test writes: no network."""
    expected = random_bn_state(torchvision.models.mobilenet_v3_large())
    weights = torchvision.models.MobileNet_V3_Large_Weights
    torch_cache(expected, weights.IMAGENET1K_V1, weights.IMAGENET1K_V2)  # True means DEFAULT, V2; only names differ
    ours = MobileNetV3("large", pretrained=pretrained, norm=norm).state_dict()
    assert_loaded(ours, expected, frozen_bn=norm == "frozen_bn", classifier="classifier.")


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="model.backbone.variant"):
        MobileNetV3("medium")
    with pytest.raises(ValueError, match="model.backbone.norm"):
        MobileNetV3(norm="gn")
    with pytest.raises(ValueError, match="model.backbone.out_indices"):
        MobileNetV3(out_indices=(4, 2))
    with pytest.raises(ValueError, match="model.backbone.frozen_stages"):
        MobileNetV3(frozen_stages=5)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        MobileNetV3(pretrained="IMAGENET9K")
