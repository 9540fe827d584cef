"""RetinaNet head: classification and box towers shared across pyramid levels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative, check_positive
from detlab.models.heads.common import check_shared_channels, flatten_levels, prior_bias
from detlab.structures import HeadOutput

NORMS = (None, "gn")


def _tower(in_channels: int, width: int, depth: int, norm: str | None) -> nn.Sequential:
    """depth x [3x3 conv + optional GroupNorm + ReLU]; no conv bias before GN (torchvision's v2 head)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=norm is None))
        if norm == "gn":
            layers.append(nn.GroupNorm(min(32, width), width))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Towers of `depth` 3x3 convs of `width` channels, then per-anchor class logits and box deltas.

    num_anchors: anchors per location (the prior generator's num_per_location).
    num_classes: the number of classification outputs C the loss asks for (K sigmoid, K + 1 softmax).
    prior_prob:  the classification bias makes every class start at probability pi (focal loss paper,
                 section 3.3): without it the many background anchors swamp the first iterations.
    norm:        None (the paper) or "gn" (GroupNorm(32) in the towers, as torchvision's v2 and FCOS).
    background_first: the outputs are softmax logits with the background at index 0, which changes the
                 prior-probability bias (set by the builder from the loss; False for sigmoid losses).
    """

    has_objectness = False  # the builder pairs it with a criterion without one (DenseDetectionLoss)

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        width: int = 256,
        depth: int = 4,
        prior_prob: float = 0.01,
        norm: str | None = None,
        background_first: bool = False,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"model.head.norm={norm!r}; use null or gn")
        check_shared_channels("model.head", in_channels)
        check_positive("model.head", num_anchors=num_anchors, num_classes=num_classes, width=width)
        check_non_negative("model.head", depth=depth)
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, width, depth, norm)
        self.box_tower = _tower(in_channels, width, depth, norm)
        tower_out = width if depth else in_channels
        self.cls_out = nn.Conv2d(tower_out, num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(tower_out, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():  # one bias per (anchor, class), anchor-major as the outputs are laid out
            self.cls_out.bias.copy_(prior_bias(num_classes, prior_prob, background_first).repeat(num_anchors))

    def forward(self, levels: list[Tensor]) -> HeadOutput:
        """levels [B, in_channels, H_l, W_l] -> cls_logits [B, A, C], box_reg [B, A, 4].

        A = sum over levels of H_l * W_l * num_anchors, ordered level, y, x, anchor (as the priors).
        """
        cls = [self.cls_out(self.cls_tower(x)) for x in levels]
        box = [self.box_out(self.box_tower(x)) for x in levels]
        return HeadOutput(
            cls_logits=flatten_levels(cls, self.num_anchors), box_reg=flatten_levels(box, self.num_anchors)
        )
