"""ResNet backbone from torchvision: C2..C5 feature maps, torchvision's ImageNet weights loaded by name."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

DEPTHS = (18, 34, 50, 101)
NORMS = ("bn", "frozen_bn")
STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNet(nn.Module):
    """torchvision's resnet{depth} as a feature extractor.

    out_indices: which stages to return, 1..4 = layer1..layer4 = C2..C5 (strides 4, 8, 16, 32).
    pretrained:  False (random init) | True (torchvision's default ImageNet weights) | a weights name such as
                 "IMAGENET1K_V2"; loaded through torchvision's weights API only when asked.
    norm:        "bn" (trainable BatchNorm, to train from scratch) | "frozen_bn" (statistics and affine fixed).
    frozen_stages: -1 nothing frozen, 0 the stem, N the stem and layer1..layerN (no grad, BN in eval mode).
    """

    def __init__(
        self,
        depth: int = 18,
        pretrained: bool | str = False,
        frozen_stages: int = -1,
        norm: str = "bn",
        out_indices: Sequence[int] = (2, 3, 4),
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"model.backbone.depth={depth} is not a torchvision ResNet; use one of {DEPTHS}")
        if norm not in NORMS:
            raise ValueError(f"model.backbone.norm={norm!r}; use one of {NORMS}")
        if not set(out_indices) <= {1, 2, 3, 4} or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"model.backbone.out_indices={list(out_indices)} must be increasing stages among 1..4")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.backbone.frozen_stages={frozen_stages} must be in -1..4")
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        net = torchvision.models.get_model(f"resnet{depth}", weights=_weights(depth, pretrained), norm_layer=norm_layer)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList(getattr(net, name) for name in STAGES[: max(out_indices)])
        self.out_indices = tuple(out_indices)
        width = 64 if depth < 50 else 256
        self.out_channels = tuple(width * 2 ** (i - 1) for i in out_indices)
        self.strides = tuple(2 ** (i + 1) for i in out_indices)
        self.frozen_stages = frozen_stages
        frozen = [self.stem, *self.stages[:frozen_stages]] if frozen_stages >= 0 else []
        for module in frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.frozen_stages >= 0:  # frozen stages keep their BN statistics, as in detectron2
            for module in [self.stem, *self.stages[: self.frozen_stages]]:
                module.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> the feature maps of out_indices, lowest stride first."""
        x = self.stem(images)
        features = []
        for index, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if index in self.out_indices:
                features.append(x)
        return features


def _weights(depth: int, pretrained: bool | str):
    if pretrained is False or pretrained is None:
        return None
    enum = torchvision.models.get_model_weights(f"resnet{depth}")
    if pretrained is True:
        return enum.DEFAULT
    try:
        return enum[pretrained]
    except KeyError:
        raise ValueError(
            f"model.backbone.pretrained={pretrained!r} is not a resnet{depth} weights name; "
            f"use true, false or one of {[w.name for w in enum]}"
        ) from None
