"""ResNet backbone: shapes, freezing, and torchvision's weights loaded by name from a local cache."""

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from detlab.models.backbones.resnet import ResNet


@pytest.mark.parametrize("depth, channels", [(18, (128, 256, 512)), (50, (512, 1024, 2048))])
def test_outputs_strides_and_channels(depth, channels):
    net = ResNet(depth=depth)
    features = net(torch.randn(1, 3, 64, 96))
    assert net.out_channels == channels and net.strides == (8, 16, 32)
    assert [tuple(f.shape[1:]) for f in features] == [(c, 64 // s, 96 // s) for c, s in zip(channels, net.strides)]


def test_c2_for_faster_rcnn():
    net = ResNet(depth=18, out_indices=(1, 2, 3, 4))
    assert net.strides == (4, 8, 16, 32) and net.out_channels == (64, 128, 256, 512)


def test_frozen_stages_and_frozen_bn():
    net = ResNet(depth=18, frozen_stages=1, norm="frozen_bn")
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.stages[0].parameters())
    assert all(p.requires_grad for p in net.stages[1].parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    net = ResNet(depth=18, frozen_stages=1).train()
    assert not net.stem[1].training and not net.stages[0][0].bn1.training and net.stages[1][0].bn1.training


def test_pretrained_weights_load_by_name_from_the_torch_cache(tmp_path, monkeypatch):
    """The real loading path (torchvision's weights API) fed from a cache file the test writes: no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / weights.url.split("/")[-1])
    net = ResNet(depth=18, pretrained=True)
    assert torch.equal(net.stem[0].weight, reference.conv1.weight)
    assert torch.equal(net.stages[2][1].conv2.weight, reference.layer3[1].conv2.weight)
    named = ResNet(depth=18, pretrained="IMAGENET1K_V1")
    assert torch.equal(named.stages[0][0].conv1.weight, reference.layer1[0].conv1.weight)


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="model.backbone.depth"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="model.backbone.norm"):
        ResNet(norm="gn")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        ResNet(depth=18, pretrained="IMAGENET9K")
