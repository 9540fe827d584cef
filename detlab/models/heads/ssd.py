"""SSD head (Liu et al. 2016, Fig. 2): on every source map, one 3x3 conv for class logits, one for box deltas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detlab.errors import ConfigError
from detlab.models.heads.common import flatten_levels, prior_bias
from detlab.structures import HeadOutput


class SSDHead(nn.Module):
    """Per-level predictors, not shared: each level has its own channels and number of default boxes.

    in_channels: one per level (the SSD neck's out_channels).
    num_anchors: default boxes per location, one per level (the prior generator's num_per_location).
    num_classes: the number of classification outputs C the loss asks for (K sigmoid, K + 1 softmax).
    prior_prob:  None keeps SSD's zero bias; a probability pi sets the classification bias so that every class
                 starts at pi (focal loss paper, section 3.3), in the sigmoid or the softmax layout.
    background_first: the outputs are softmax logits with the background at index 0, which changes the
                 prior-probability bias (set by the builder from the loss; False for sigmoid losses).
    """

    has_objectness = False  # the builder pairs it with a criterion without one (DenseDetectionLoss)

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_classes: int,
        prior_prob: float | None = 0.01,
        background_first: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, int) or isinstance(num_anchors, int) or len(in_channels) != len(num_anchors):
            raise ConfigError(
                f"model.head (SSDHead) needs one in_channels and one num_anchors per level, got in_channels="
                f"{in_channels} from model.neck and num_anchors={num_anchors} from model.priors"
            )
        if num_classes < 1 or min(num_anchors) < 1:
            raise ConfigError(f"model.head: num_classes={num_classes} and num_anchors={list(num_anchors)} must be >= 1")
        self.num_anchors = list(num_anchors)
        self.num_classes = num_classes
        self.cls_convs = nn.ModuleList(
            nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(in_channels, self.num_anchors)
        )
        self.box_convs = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, self.num_anchors))
        for conv in [*self.cls_convs, *self.box_convs]:  # SSD's (and torchvision's) init
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        if prior_prob is not None:
            bias = prior_bias(num_classes, prior_prob, background_first)
            with torch.no_grad():  # one bias per (anchor, class), anchor-major as the outputs are laid out
                for conv, a in zip(self.cls_convs, self.num_anchors):
                    conv.bias.copy_(bias.repeat(a))

    def forward(self, levels: list[Tensor]) -> HeadOutput:
        """levels [B, in_channels[l], H_l, W_l] -> cls_logits [B, A, C], box_reg [B, A, 4].

        A = sum over levels of H_l * W_l * num_anchors[l], ordered level, y, x, anchor (as the priors).
        """
        if len(levels) != len(self.cls_convs):
            raise ValueError(f"SSDHead was built for {len(self.cls_convs)} levels but got {len(levels)}")
        cls = [conv(x) for conv, x in zip(self.cls_convs, levels)]
        box = [conv(x) for conv, x in zip(self.box_convs, levels)]
        return HeadOutput(
            cls_logits=flatten_levels(cls, self.num_anchors), box_reg=flatten_levels(box, self.num_anchors)
        )
