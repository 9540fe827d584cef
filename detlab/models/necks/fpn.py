"""Feature pyramid network (Lin et al. 2017): lateral 1x1 + top-down + 3x3 outputs, then extra levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative, check_positive

EXTRA_SOURCES = ("c5", "p5", "maxpool")


class FPN(nn.Module):
    """Pyramid levels of `out_channels` over the backbone's features, lowest stride first.

    in_channels, in_strides: the backbone's `out_channels` and `strides` (wired by the builder).
    num_extra_levels: stride-2 levels added on top (RetinaNet: 2, P6 and P7; Faster R-CNN: 1, P6).
    extra_source:     "c5" (P6 = conv(C5), P7 = conv(relu(P6)), as the RetinaNet paper and torchvision's
                      retinanet_resnet50_fpn_v2), "p5" (the same from P5, as torchvision's v1 RetinaNet and its
                      FCOS) or "maxpool" (P6 = max-pool of P5, as Faster R-CNN).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 256,
        num_extra_levels: int = 2,
        extra_source: str = "c5",
    ) -> None:
        super().__init__()
        if extra_source not in EXTRA_SOURCES:
            raise ConfigError(f"model.neck.extra_source={extra_source!r}; use one of {list(EXTRA_SOURCES)}")
        check_positive("model.neck", out_channels=out_channels)
        check_non_negative("model.neck", num_extra_levels=num_extra_levels)
        if not in_channels or len(in_channels) != len(in_strides):
            raise ConfigError(
                f"model.neck: in_channels={list(in_channels)} and in_strides={list(in_strides)} must be "
                "non-empty and one per backbone feature map"
            )
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList()
        if extra_source != "maxpool":
            first_in = in_channels[-1] if extra_source == "c5" else out_channels
            for i in range(num_extra_levels):
                self.extra.append(nn.Conv2d(first_in if i == 0 else out_channels, out_channels, 3, stride=2, padding=1))
        for conv in [*self.lateral, *self.output, *self.extra]:  # torchvision's and detectron2's FPN init
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.extra_source = extra_source
        self.num_extra_levels = num_extra_levels
        self.out_channels = out_channels
        self.strides = tuple(in_strides) + tuple(in_strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """features: backbone maps lowest stride first -> levels [B, out_channels, H_l, W_l], one per stride."""
        if len(features) != len(self.lateral):
            raise ValueError(f"FPN was built for {len(self.lateral)} backbone feature maps but got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down; size= (not scale 2) because odd sizes round up
            upsampled = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + upsampled
        levels = [conv(x) for conv, x in zip(self.output, laterals)]
        if self.extra_source == "maxpool":
            for _ in range(self.num_extra_levels):  # kernel 1, stride 2: subsampling, ceil(size / 2)
                levels.append(F.max_pool2d(levels[-1], kernel_size=1, stride=2))
            return levels
        x = features[-1] if self.extra_source == "c5" else levels[-1]
        for i, conv in enumerate(self.extra):
            x = conv(_wide(x if i == 0 else F.relu(x)))
            levels.append(x)
        return levels


def _wide(x: Tensor) -> Tensor:
    """x [B, C, H, W], a map one pixel wide given the zero column that an extra level's 3x3 stride-2 conv (padding
    1) reads on its right anyway: the same output and gradients. Under bfloat16 (trainer.precision=bf16-mixed) on the
    CPU, torch 2.14's oneDNN convolution leaves the weight gradient of the taps that see only that padding unwritten
    for an input of width 1, whatever the allocator last held there (1e28 or NaN, from run to run): the P7 conv's of
    every RetinaNet input up to 64 px wide. Width 2 takes the kernel that writes them (0)."""
    return F.pad(x, (0, 1)) if x.shape[-1] == 1 else x
