"""SSD's extra feature layers (Liu et al. 2016, Fig. 2): smaller maps added on top of the backbone's."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative, check_positive


class SSDNeck(nn.Module):
    """The backbone's maps pass through unchanged; each extra level is a 1x1 conv to `extra_mid_channels[i]`,
    then a `extra_kernels[i]` conv with `extra_strides[i]` and `extra_paddings[i]` to `extra_channels[i]`, both
    followed by ReLU, applied to the previous level.

    SSD300 (conv8_2..conv11_2): 19 -> 10 -> 5 -> 3 -> 1, the last two unpadded 3x3 convs with stride 1.
    SSD512 (conv8_2..conv12_2): 32 -> 16 -> 8 -> 4 -> 2 -> 1, the last a 4x4 conv with padding 1.

    in_channels, in_strides: the backbone's `out_channels` and `strides` (wired by the builder).
    out_channels: one per level (backbone maps, then extra levels). strides: the nominal strides (product of
    the conv strides); SSD's default boxes do not use them, they spread each level over the whole input.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        extra_channels: Sequence[int],
        extra_mid_channels: Sequence[int],
        extra_kernels: Sequence[int],
        extra_strides: Sequence[int],
        extra_paddings: Sequence[int],
    ) -> None:
        super().__init__()
        if not in_channels or len(in_channels) != len(in_strides):
            raise ConfigError(
                f"model.neck: in_channels={list(in_channels)} and in_strides={list(in_strides)} must be "
                "non-empty and one per backbone feature map"
            )
        extra = {
            "extra_channels": extra_channels, "extra_mid_channels": extra_mid_channels,
            "extra_kernels": extra_kernels, "extra_strides": extra_strides, "extra_paddings": extra_paddings,
        }
        if len({len(v) for v in extra.values()}) != 1:
            keys = ", ".join(f"model.neck.{key}" for key in extra)
            raise ConfigError(f"{keys} must have one entry per extra level; got {extra}")
        check_positive("model.neck", extra_channels=extra_channels, extra_mid_channels=extra_mid_channels,
                       extra_kernels=extra_kernels, extra_strides=extra_strides)
        check_non_negative("model.neck", extra_paddings=extra_paddings)
        self.extra = nn.ModuleList()
        previous = in_channels[-1]
        for out, mid, kernel, stride, padding in zip(*extra.values()):
            self.extra.append(
                nn.Sequential(
                    nn.Conv2d(previous, mid, kernel_size=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(mid, out, kernel_size=kernel, stride=stride, padding=padding),
                    nn.ReLU(inplace=True),
                )
            )
            previous = out
        for module in self.extra.modules():  # SSD's (and torchvision's) init of the new layers
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.out_channels = tuple(in_channels) + tuple(extra_channels)
        strides = list(in_strides)
        for stride in extra_strides:
            strides.append(strides[-1] * stride)
        self.strides = tuple(strides)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Backbone maps [B, C_i, H_i, W_i] -> those maps followed by the extra levels, one per out_channels."""
        if len(features) != len(self.out_channels) - len(self.extra):
            raise ValueError(
                f"SSDNeck was built for {len(self.out_channels) - len(self.extra)} backbone feature maps "
                f"but got {len(features)}"
            )
        levels = list(features)
        for i, layer in enumerate(self.extra):
            conv = layer[2]
            height, width = levels[-1].shape[-2:]
            if min(height, width) + 2 * conv.padding[0] < conv.kernel_size[0]:
                raise ConfigError(
                    f"the input is too small for model.neck's extra level {i} ({conv.kernel_size[0]}x"
                    f"{conv.kernel_size[0]} conv on a {height}x{width} map): raise data.image_size (SSD300's and "
                    "SSD512's layers on VGG16 need at least 268 px) or change model.neck.extra_strides / extra_paddings"
                )
            levels.append(layer(levels[-1]))
        return levels
