"""DarkNet (Redmon & Farhadi 2018, YOLOv3 Table 1): strided 3x3 convs and residual 1x1/3x3 blocks, ours.

DarkNet-53 is depths (1, 2, 8, 8, 4) at widths (32 stem, then 64, 128, 256, 512, 1024): 52 convolutions
(the 53rd layer is the ImageNet classifier, not built here). Every convolution is conv (no bias) + BatchNorm +
LeakyReLU(0.1), as in darknet. Narrower and shallower settings give small variants for CPU work.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detlab.errors import ConfigError

NUM_STAGES = 5


def conv_bn_leaky(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """darknet's convolutional layer: 'same' padding, BatchNorm instead of a bias, LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    )


class Residual(nn.Module):
    """x + conv3x3(conv1x1(x)), the 1x1 halving the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn_leaky(channels, channels // 2, 1)
        self.expand = conv_bn_leaky(channels // 2, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(self.reduce(x))


class DarkNet(nn.Module):
    """DarkNet feature extractor: a 3x3 stem, then five stages, each a stride-2 3x3 conv and residual blocks.

    depths:      residual blocks per stage (DarkNet-53: 1, 2, 8, 8, 4).
    widths:      the stem's channels, then each stage's (DarkNet-53: 32, 64, 128, 256, 512, 1024).
    out_indices: which stages to return, 1..5 = C1..C5 (strides 2, 4, 8, 16, 32); YOLOv3 uses 3, 4, 5.
    """

    def __init__(
        self,
        depths: Sequence[int] = (1, 2, 8, 8, 4),
        widths: Sequence[int] = (32, 64, 128, 256, 512, 1024),
        out_indices: Sequence[int] = (3, 4, 5),
    ) -> None:
        super().__init__()
        _check(depths, widths, out_indices)
        self.stem = conv_bn_leaky(3, widths[0], 3)
        self.num_stages = max(out_indices)  # stages above the last returned one are never run: not built
        self.stages = nn.ModuleList(
            nn.Sequential(
                conv_bn_leaky(widths[i], widths[i + 1], 3, stride=2),
                *(Residual(widths[i + 1]) for _ in range(depths[i])),
            )
            for i in range(self.num_stages)
        )
        self.out_indices = tuple(out_indices)
        self.out_channels = tuple(widths[i] for i in self.out_indices)
        self.strides = tuple(2**i for i in self.out_indices)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> [B, out_channels[i], ceil(H / strides[i]), ceil(W / strides[i])] per index."""
        x = self.stem(images)
        features = []
        for index, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if index in self.out_indices:
                features.append(x)
        return features


def _check(depths: Sequence[int], widths: Sequence[int], out_indices: Sequence[int]) -> None:
    if len(depths) != NUM_STAGES or min(depths) < 0:
        raise ConfigError(f"model.backbone.depths={list(depths)} must be {NUM_STAGES} block counts >= 0, one per stage")
    if len(widths) != NUM_STAGES + 1 or min(widths) < 2 or any(w % 2 for w in widths[1:]):
        raise ConfigError(
            f"model.backbone.widths={list(widths)} must be {NUM_STAGES + 1} channel counts (the stem's, then one "
            "per stage), the stages' even (the residual blocks halve them)"
        )
    indices = list(out_indices)
    if not indices or not set(indices) <= set(range(1, NUM_STAGES + 1)) or indices != sorted(set(indices)):
        raise ConfigError(f"model.backbone.out_indices={indices} must be increasing stages among 1..5 (C1..C5)")
