"""Region proposal network head (Ren et al. 2015, section 3.1): a 3x3 conv shared across pyramid levels, then per
anchor one objectness logit and four box deltas."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import check_positive
from detlab.models.heads.common import check_shared_channels, flatten_levels
from detlab.structures import HeadOutput


class RPNHead(nn.Module):
    """A dense head like the others: levels in, HeadOutput over the anchors out.

    in_channels: the neck's out_channels; the 3x3 conv keeps it (torchvision and detectron2).
    num_anchors: anchors per location (the prior generator's num_per_location: 3 aspect ratios x 1 scale).
    The objectness is a single sigmoid logit per anchor (object or not), returned as cls_logits [B, A, 1] so
    that any sigmoid classification loss of detlab.losses scores it. Weights N(0, 0.01), zero biases, as
    torchvision's RPNHead.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        check_shared_channels("model.rpn.head", in_channels)
        check_positive("model.rpn.head", in_channels=in_channels, num_anchors=num_anchors)
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.box = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for conv in (self.conv, self.objectness, self.box):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, levels: list[Tensor]) -> HeadOutput:
        """levels [B, in_channels, H_l, W_l] -> cls_logits [B, A, 1] (objectness), box_reg [B, A, 4].

        A = sum over levels of H_l * W_l * num_anchors, ordered level, y, x, anchor (as the priors).
        """
        hidden = [F.relu(self.conv(x)) for x in levels]
        objectness = [self.objectness(x) for x in hidden]
        box = [self.box(x) for x in hidden]
        return HeadOutput(
            cls_logits=flatten_levels(objectness, self.num_anchors), box_reg=flatten_levels(box, self.num_anchors)
        )
