"""MobileNetV3 backbone from torchvision (Howard et al. 2019): C2..C5 feature maps, torchvision's ImageNet
weights loaded by name. A fraction of ResNet-18's cost (0.22 against 1.8 GFLOPs at 224 px for the large one)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from detlab.errors import ConfigError
from detlab.models.backbones.stages import StagedBackbone, check_stage_args, run_collecting
from detlab.models.backbones.weights import fetch, torchvision_weights

VARIANTS = ("large", "small")
# torchvision's MobileNetV3 normalises with eps 0.001 (its weights were trained so). Its momentum of 0.01 is
# left out: from scratch and over a few thousand steps, running statistics that slow lag behind the weights.
BN_EPS = 0.001


class MobileNetV3(StagedBackbone):
    """torchvision's mobilenet_v3_{variant}.features without its classifier, as a feature extractor.

    `features` keeps torchvision's layout, so a torchvision MobileNetV3 state dict loads with no renaming.
    Stage k ends just before the block that halves the resolution once more (torchvision marks those blocks
    `_is_cn`); the last stage ends with the final 1x1 convolution (960 / 576 channels), as in torchvision's
    detection models.

    out_indices: ResNet's numbering, 1..4 = C2..C5 (strides 4, 8, 16, 32), so that necks read it the same.
    pretrained:  False | True (torchvision's default ImageNet weights) | a weights name such as "IMAGENET1K_V1".
    norm:        "bn" (trainable BatchNorm, momentum 0.1) | "frozen_bn" (fixed, with pretrained weights).
    frozen_stages: -1 nothing frozen, 0 the stem, N the stem and stages C2..C(N+1) (no grad, BN in eval mode).
    """

    def __init__(
        self,
        variant: str = "large",
        pretrained: bool | str = False,
        frozen_stages: int = -1,
        norm: str = "bn",
        out_indices: Sequence[int] = (2, 3, 4),
    ) -> None:
        super().__init__()
        _check(variant, norm, frozen_stages, out_indices)
        norm_layer = partial(FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d, eps=BN_EPS)
        name = f"mobilenet_v3_{variant}"
        net = torchvision.models.get_model(name, weights=None, norm_layer=norm_layer)
        weights = torchvision_weights(name, pretrained)
        if weights is not None:
            net.load_state_dict(fetch(weights, pretrained))
        blocks = list(net.features)
        halving = [i for i, block in enumerate(blocks) if getattr(block, "_is_cn", False)]  # strides 4, 8, 16, 32
        self.stage_ends = tuple(i - 1 for i in halving[1:]) + (len(blocks) - 1,)  # last block of C2, C3, C4, C5
        self.out_indices = tuple(out_indices)
        self.features = nn.Sequential(*blocks[: self.stage_ends[max(out_indices) - 1] + 1])  # nothing unused built
        self.out_channels = tuple(blocks[self.stage_ends[i - 1]].out_channels for i in self.out_indices)
        self.strides = tuple(2 ** (i + 1) for i in self.out_indices)
        self.freeze(frozen_stages)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        last = 0 if self.frozen_stages == 0 else self.stage_ends[self.frozen_stages - 1]  # the stem is block 0
        return list(self.features[: last + 1])

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> [B, out_channels[i], ceil(H / strides[i]), ceil(W / strides[i])] per index."""
        return run_collecting(images, self.features, {self.stage_ends[i - 1] for i in self.out_indices})


def _check(variant: str, norm: str, frozen_stages: int, out_indices: Sequence[int]) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"model.backbone.variant={variant!r} is not a torchvision MobileNetV3; use one of {list(VARIANTS)}")
    check_stage_args(norm, frozen_stages, out_indices)
