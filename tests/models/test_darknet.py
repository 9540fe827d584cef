"""DarkNet: DarkNet-53 is the paper's Table 1 layer for layer; maps, strides and channels at any input size."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from detlab.models.backbones.darknet import DarkNet

CONF = Path(__file__).resolve().parents[2] / "conf" / "model" / "backbone"


def table1_parameters() -> int:
    """Parameters of DarkNet-53's 52 convolutions from YOLOv3's Table 1 (each conv: k x k x in x out weights,
    no bias, plus BatchNorm's scale and shift per output channel), without the ImageNet classifier."""
    layers = [(3, 32, 3)]  # (in, out, kernel): the stem
    for channels, repeats in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        layers.append((channels // 2, channels, 3))  # the stride-2 conv
        layers += [(channels, channels // 2, 1), (channels // 2, channels, 3)] * repeats
    assert len(layers) == 52
    return sum(k * k * c_in * c_out + 2 * c_out for c_in, c_out, k in layers)


def test_darknet53_is_table1():
    net = DarkNet()
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 52
    assert sum(p.numel() for p in net.parameters()) == table1_parameters()
    assert net.out_channels == (256, 512, 1024) and net.strides == (8, 16, 32)


@pytest.mark.parametrize("h, w", [(64, 96), (65, 97)])
def test_maps_strides_and_channels(h, w):
    net = DarkNet(depths=(1, 1, 1, 1, 1), widths=(8, 8, 16, 32, 64, 128), out_indices=(1, 3, 5))
    features = net(torch.randn(2, 3, h, w))
    assert net.strides == (2, 8, 32) and net.out_channels == (8, 32, 128)
    assert [tuple(f.shape) for f in features] == [
        (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip(net.out_channels, net.strides)
    ]


def test_stages_above_the_last_output_are_not_built():
    net = DarkNet(out_indices=(2, 3))
    assert len(net.stages) == 3
    assert sum(p.numel() for p in net.parameters()) < table1_parameters() / 10


@pytest.mark.parametrize("name, params", [("darknet53", table1_parameters()), ("darknet_tiny", None)])
def test_configs_build(name, params):
    net = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    if params is not None:
        assert sum(p.numel() for p in net.parameters()) == params
    else:  # small enough for CPU work: under 1/100 of DarkNet-53
        assert sum(p.numel() for p in net.parameters()) < table1_parameters() / 100
    features = net(torch.randn(1, 3, 64, 64))
    assert net.strides == (8, 16, 32)
    assert [f.shape[1] for f in features] == list(net.out_channels)
    assert [f.shape[-1] for f in features] == [8, 4, 2]


def test_gradients_reach_the_stem():
    net = DarkNet(depths=(1, 1, 1, 1, 1), widths=(8, 8, 16, 32, 64, 128))
    sum(f.sum() for f in net(torch.randn(2, 3, 32, 32))).backward()
    assert net.stem[0].weight.grad is not None and net.stem[0].weight.grad.abs().sum() > 0


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="model.backbone.depths"):
        DarkNet(depths=(1, 2, 8, 8))
    with pytest.raises(ValueError, match="model.backbone.widths"):
        DarkNet(widths=(32, 64, 128, 256, 512, 1023))
    with pytest.raises(ValueError, match="model.backbone.out_indices"):
        DarkNet(out_indices=(3, 6))
    with pytest.raises(ValueError, match="model.backbone.out_indices"):
        DarkNet(out_indices=(4, 3))
