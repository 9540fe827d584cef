"""VGG16 as SSD's base network (Liu et al. 2016, section 3): torchvision's conv1_1..conv5_3, then pool5 as a
3x3 stride-1 pool and fc6/fc7 as convolutions (fc6 3x3 with dilation 6, fc7 1x1, 1024 channels each)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.models.vgg import cfgs, make_layers

from detlab.errors import ConfigError
from detlab.models.backbones.stages import StagedBackbone
from detlab.models.backbones.weights import fetch, torchvision_weights

# ResNet's numbering (index i has stride 2^(i+1), C3 and C4), so that out_indices reads the same everywhere.
OUTPUTS = {2: "conv4_3", 3: "fc7"}
CONV4_3 = 23  # torchvision's vgg16.features[:23] ends with conv4_3's ReLU, [23] is pool4
POOL3 = 16
POOL5 = 30
BLOCK_ENDS = (4, 9, 16, 23, 30)  # features[:BLOCK_ENDS[n - 1]] holds conv1_x .. convn_x (and the pools between)
# SSD's VGG was trained with caffe's preprocessing (0..255 inputs): detlab normalises with ImageNet mean/std.
CAFFE_WEIGHTS = ("IMAGENET1K_FEATURES",)


class L2Norm(nn.Module):
    """x / ||x||_2 over channels times a learned per-channel scale (ParseNet; SSD's conv4_3, init 20): conv4_3
    has a much larger magnitude than the deeper maps that share the loss with it."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        # The sum of 512 squares overflows float16 under autocast: normalise in float32.
        return (F.normalize(x.float(), dim=1) * self.weight[None, :, None, None].float()).to(x.dtype)


class VGG16(StagedBackbone):
    """torchvision's vgg16 with SSD's changes, as a feature extractor.

    `features` keeps torchvision's layer names (features.0 .. features.28, pool5 dropped), so its state dict
    loads without renaming; pool3 rounds up (ceil_mode) so that a 300 px input gives 38 x 38 at conv4_3.

    out_indices: which maps to return, in ResNet's numbering: 2 = conv4_3 (stride 8, L2-normalised with a
                 learned scale initialised to l2_scale), 3 = fc7 (stride 16: pool5 no longer subsamples).
    pretrained:  False (random init) | True (torchvision's default ImageNet weights) | a weights name such as
                 "IMAGENET1K_V1"; loaded through torchvision's weights API only when asked. fc6 and fc7 then
                 start from the classifier's fc6/fc7 decimated as the paper does (every 4th unit, every 3rd
                 tap of fc6's 7 x 7), as in the paper's "VGG16 fc reduced" model.
    frozen_stages: -1 nothing frozen (0 too: VGG has no stem), N in 1..5 the conv blocks conv1_x .. convN_x (no
                 grad). torchvision's ssd300_vgg16 trains all with a random backbone and freezes conv1_x (its
                 trainable_backbone_layers = 4 = 5 - N) with pretrained ones.
    """

    def __init__(
        self,
        pretrained: bool | str = False,
        out_indices: Sequence[int] = (2, 3),
        l2_scale: float = 20.0,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        if l2_scale <= 0:
            raise ConfigError(f"model.backbone.l2_scale={l2_scale} must be > 0: conv4_3's initial scale (SSD: 20)")
        indices = list(out_indices)
        if not indices or not set(indices) <= set(OUTPUTS) or indices != sorted(set(indices)):
            raise ConfigError(
                f"model.backbone.out_indices={indices} must be increasing among {sorted(OUTPUTS)} "
                f"({', '.join(f'{i} = {name}' for i, name in OUTPUTS.items())})"
            )
        # torchvision's vgg16 without its classifier (120 M parameters we would build only to drop), same init.
        self.features = make_layers(cfgs["D"])[:POOL5]
        self.features[POOL3].ceil_mode = True
        for conv in self.features.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        self.l2norm = L2Norm(512, l2_scale)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        for conv in (self.fc6, self.fc7):  # torchvision's SSD initialises its new layers so
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        weights = _weights(pretrained)
        if weights is not None:
            self._load_torchvision(fetch(weights, pretrained))
        self.out_indices = tuple(indices)
        self.out_channels = tuple({2: 512, 3: 1024}[i] for i in self.out_indices)
        self.strides = tuple(2 ** (i + 1) for i in self.out_indices)
        if not -1 <= frozen_stages <= len(BLOCK_ENDS):
            raise ConfigError(f"model.backbone.frozen_stages={frozen_stages} must be in -1..{len(BLOCK_ENDS)}")
        self.freeze(frozen_stages)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.features[: BLOCK_ENDS[self.frozen_stages - 1]]] if self.frozen_stages > 0 else []

    def _load_torchvision(self, state: dict[str, Tensor]) -> None:
        """Conv weights as they are; fc6/fc7 decimated from the classifier's 4096-unit layers."""
        self.features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
        fc6, fc7 = state["classifier.0.weight"], state["classifier.3.weight"]
        if not (torch.isfinite(fc6).all() and torch.isfinite(fc7).all()):
            return  # a features-only checkpoint: fc6/fc7 keep their init
        with torch.no_grad():
            self.fc6.weight.copy_(fc6.view(4096, 512, 7, 7)[::4, :, ::3, ::3])  # 7x7 dense -> 3x3 dilated 6
            self.fc6.bias.copy_(state["classifier.0.bias"][::4])
            self.fc7.weight.copy_(fc7[::4, ::4, None, None])
            self.fc7.bias.copy_(state["classifier.3.bias"][::4])

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> conv4_3 [B, 512, H8, W8] and/or fc7 [B, 1024, H16, W16] per out_indices, with
        H8 = ceil(floor(floor(H / 2) / 2) / 2) (pool3 rounds up) and H16 = floor(H8 / 2) (300 -> 38, 19)."""
        conv4_3 = self.features[:CONV4_3](images)
        features = [self.l2norm(conv4_3)] if 2 in self.out_indices else []
        if 3 in self.out_indices:
            x = self.pool5(self.features[CONV4_3:](conv4_3))
            features.append(F.relu(self.fc7(F.relu(self.fc6(x), inplace=True)), inplace=True))
        return features


def _weights(pretrained: bool | str | None) -> WeightsEnum | None:
    """The torchvision weights entry that `pretrained` names, or None for a random init."""
    if pretrained in CAFFE_WEIGHTS:
        raise ConfigError(
            f"model.backbone.pretrained={pretrained!r} expects caffe's 0..255 inputs, but detlab normalises images "
            "with the ImageNet mean/std; use pretrained=IMAGENET1K_V1 (or true)"
        )
    return torchvision_weights("vgg16", pretrained)
