"""YOLOv3's three-scale top-down path (Redmon & Farhadi 2018, section 2.3; darknet's yolov3.cfg).

From the coarsest map down: a set of five convolutions (1x1, 3x3, 1x1, 3x3, 1x1), whose output is both
projected by a 1x1 conv, upsampled 2x and concatenated with the next finer backbone map, and turned into that
scale's output by a 3x3 conv. The per-scale 1x1 predictor is the head's (detlab.models.heads.yolo).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError
from detlab.models.backbones.darknet import conv_bn_leaky


def conv_set(in_channels: int, width: int) -> nn.Sequential:
    """The five alternating 1x1 (width) and 3x3 (2 x width) convolutions of every YOLOv3 scale."""
    return nn.Sequential(
        conv_bn_leaky(in_channels, width, 1),
        conv_bn_leaky(width, 2 * width, 3),
        conv_bn_leaky(2 * width, width, 1),
        conv_bn_leaky(width, 2 * width, 3),
        conv_bn_leaky(2 * width, width, 1),
    )


class YoloNeck(nn.Module):
    """One output per backbone map, lowest stride first, of out_channels[l] = 2 x widths[l] channels.

    in_channels, in_strides: the backbone's `out_channels` and `strides` (wired by the builder).
    widths: the 1x1 width of each scale's conv set, lowest stride first; None takes half the backbone's
            channels (DarkNet-53's 256, 512, 1024 give YOLOv3's 128, 256, 512). The projection from a coarser
            scale to the finer one has the finer scale's width (YOLOv3: 512 -> 256 and 256 -> 128).
    """

    def __init__(
        self, in_channels: Sequence[int], in_strides: Sequence[int], widths: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if not in_channels or len(in_channels) != len(in_strides):
            raise ConfigError(
                f"model.neck: in_channels={list(in_channels)} and in_strides={list(in_strides)} must be "
                "non-empty and one per backbone feature map"
            )
        widths = [c // 2 for c in in_channels] if widths is None else list(widths)
        if len(widths) != len(in_channels) or min(widths) < 1:
            raise ConfigError(
                f"model.neck.widths={widths} must be {len(in_channels)} positive widths, one per backbone map "
                f"(the backbone gives {list(in_channels)} channels), or null for half of those"
            )
        num_levels = len(in_channels)
        # Level l's conv set reads the backbone map plus, below the coarsest level, the projected coarser scale.
        set_inputs = [in_channels[l] + (widths[l] if l < num_levels - 1 else 0) for l in range(num_levels)]
        self.conv_sets = nn.ModuleList(conv_set(c, w) for c, w in zip(set_inputs, widths))
        self.projections = nn.ModuleList(conv_bn_leaky(widths[l + 1], widths[l], 1) for l in range(num_levels - 1))
        self.outputs = nn.ModuleList(conv_bn_leaky(w, 2 * w, 3) for w in widths)
        self.out_channels = tuple(2 * w for w in widths)
        self.strides = tuple(in_strides)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """features: backbone maps lowest stride first -> [B, out_channels[l], H_l, W_l], one per map."""
        if len(features) != len(self.conv_sets):
            raise ValueError(
                f"YoloNeck was built for {len(self.conv_sets)} backbone feature maps but got {len(features)}"
            )
        levels: list[Tensor] = [None] * len(features)  # type: ignore[list-item]
        x = self.conv_sets[-1](features[-1])
        levels[-1] = self.outputs[-1](x)
        for l in range(len(features) - 2, -1, -1):  # top-down; size= (not scale 2) because odd sizes round up
            coarser = F.interpolate(self.projections[l](x), size=features[l].shape[-2:], mode="nearest")
            x = self.conv_sets[l](torch.cat([coarser, features[l]], dim=1))
            levels[l] = self.outputs[l](x)
        return levels
