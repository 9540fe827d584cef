"""ResNet backbone: shapes, freezing, and torchvision's weights loaded by name from a local cache (no network)."""

import urllib.error

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from detlab.errors import ConfigError
from detlab.models.backbones.resnet import ResNet


@pytest.mark.parametrize("depth, channels", [(18, (128, 256, 512)), (50, (512, 1024, 2048))])
def test_outputs_strides_and_channels(depth, channels):
    net = ResNet(depth=depth)
    features = net(torch.randn(1, 3, 64, 96))
    assert net.out_channels == channels and net.strides == (8, 16, 32)
    assert [tuple(f.shape[1:]) for f in features] == [(c, 64 // s, 96 // s) for c, s in zip(channels, net.strides)]


def test_c2_for_faster_rcnn_and_odd_sizes():
    net = ResNet(depth=18, out_indices=(1, 2, 3, 4))
    assert net.strides == (4, 8, 16, 32) and net.out_channels == (64, 128, 256, 512)
    # Every stride-2 layer pads by half its kernel: each level is ceil(size / stride).
    shapes = [tuple(f.shape[-2:]) for f in net(torch.randn(1, 3, 50, 75))]
    assert shapes == [(13, 19), (7, 10), (4, 5), (2, 3)]


def test_features_equal_torchvision_resnet_with_the_same_weights():
    reference = torchvision.models.resnet18().eval()
    net = ResNet(depth=18, out_indices=(3,)).eval()
    net.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith(("layer4", "fc"))})
    images = torch.randn(1, 3, 64, 64)
    r = reference
    expected = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(images)))))))
    (got,) = net(images)
    torch.testing.assert_close(got, expected)


def test_frozen_stages_and_frozen_bn():
    net = ResNet(depth=18, frozen_stages=1, norm="frozen_bn")
    assert not any(p.requires_grad for p in [*net.conv1.parameters(), *net.layer1.parameters()])
    assert all(p.requires_grad for p in net.layer2.parameters())
    assert isinstance(net.bn1, FrozenBatchNorm2d) and isinstance(net.layer4[1].bn2, FrozenBatchNorm2d)
    net = ResNet(depth=18, frozen_stages=1).train()
    assert not net.bn1.training and not net.layer1[0].bn1.training and net.layer2[0].bn1.training
    net(torch.randn(2, 3, 32, 32))
    assert torch.equal(net.layer1[0].bn1.running_mean, torch.zeros(64))  # frozen BN statistics did not move
    assert not torch.equal(net.layer2[0].bn1.running_mean, torch.zeros(128))


@pytest.mark.parametrize("pretrained, norm", [(True, "bn"), ("IMAGENET1K_V1", "frozen_bn")])
def test_pretrained_weights_load_by_name_from_the_torch_cache(torch_cache, random_bn_state, assert_loaded, pretrained, norm):
    """The real loading path (torchvision's weights API) fed from a cache file the test writes: no network."""
    expected = random_bn_state(torchvision.models.resnet18())
    torch_cache(expected, torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    ours = ResNet(depth=18, pretrained=pretrained, norm=norm).state_dict()
    assert_loaded(ours, expected, frozen_bn=norm == "frozen_bn", classifier="fc.")


def test_missing_weights_without_network_name_the_key_and_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match=r"model.backbone.pretrained=True.*hub/checkpoints/resnet18-"):
        ResNet(depth=18, pretrained=True)


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="model.backbone.depth"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="model.backbone.norm"):
        ResNet(norm="gn")
    with pytest.raises(ValueError, match="model.backbone.out_indices"):
        ResNet(out_indices=(4, 3))
    with pytest.raises(ValueError, match="model.backbone.frozen_stages"):
        ResNet(frozen_stages=5)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        ResNet(depth=18, pretrained="IMAGENET9K")
