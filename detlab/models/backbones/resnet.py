"""ResNet backbone from torchvision: C2..C5 feature maps, torchvision's ImageNet weights loaded by name."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from detlab.errors import ConfigError
from detlab.models.backbones.stages import StagedBackbone, check_stage_args, run_collecting
from detlab.models.backbones.weights import fetch, torchvision_weights

DEPTHS = (18, 34, 50, 101)
STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNet(StagedBackbone):
    """torchvision's resnet{depth} without its classifier, as a feature extractor.

    The submodules keep torchvision's names (conv1, bn1, layer1..layer4), so a torchvision ResNet state dict,
    or the `backbone.body.*` part of a torchvision detection checkpoint, loads with no key renaming.

    out_indices: which stages to return, 1..4 = layer1..layer4 = C2..C5 (strides 4, 8, 16, 32).
    pretrained:  False (random init) | True (torchvision's default ImageNet weights) | a weights name such as
                 "IMAGENET1K_V2"; loaded through torchvision's weights API only when asked.
    norm:        "bn" (trainable BatchNorm, to train from scratch) | "frozen_bn" (statistics and affine fixed,
                 the usual choice with pretrained weights and small batches).
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
        _check(depth, norm, frozen_stages, out_indices)
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        net = torchvision.models.get_model(f"resnet{depth}", weights=None, norm_layer=norm_layer)
        weights = torchvision_weights(f"resnet{depth}", pretrained)
        if weights is not None:
            net.load_state_dict(fetch(weights, pretrained))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.num_stages = max(out_indices)  # stages above the last returned one are never run: not built
        for name in STAGES[: self.num_stages]:
            self.add_module(name, getattr(net, name))
        self.out_indices = tuple(out_indices)
        width = 64 if depth < 50 else 256  # layer1's output channels: BasicBlock 64, Bottleneck 64 * 4
        self.out_channels = tuple(width * 2 ** (i - 1) for i in self.out_indices)
        self.strides = tuple(2 ** (i + 1) for i in self.out_indices)
        self.freeze(frozen_stages)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.conv1, self.bn1]
        return stem + [getattr(self, name) for name in STAGES[: min(self.frozen_stages, self.num_stages)]]

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> [B, out_channels[i], ceil(H / strides[i]), ceil(W / strides[i])] per index."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        stages = [getattr(self, name) for name in STAGES[: self.num_stages]]
        return run_collecting(x, stages, {i - 1 for i in self.out_indices})


def _check(depth: int, norm: str, frozen_stages: int, out_indices: Sequence[int]) -> None:
    if depth not in DEPTHS:
        raise ConfigError(f"model.backbone.depth={depth} is not a torchvision ResNet; use one of {list(DEPTHS)}")
    check_stage_args(norm, frozen_stages, out_indices)

