"""YOLOv3 head: on every scale one 1x1 conv to (4 box + 1 objectness + C classes) outputs per anchor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detlab.errors import ConfigError
from detlab.models.heads.common import flatten_levels, prior_bias
from detlab.structures import HeadOutput


class YoloHead(nn.Module):
    """Per-level 1x1 predictors (not shared: each scale has its own channels), laid out per anchor as darknet's
    (tx, ty, tw, th, objectness, class logits).

    in_channels: one per level (the YOLO neck's out_channels).
    num_anchors: anchors per location, one number or one per level (the prior generator's num_per_location).
    num_classes: C, one independent logistic output per class (YOLOv3, section 2.2).
    prior_prob:  the objectness bias makes every prior start at objectness pi (focal loss paper, section 3.3):
                 without it the thousands of empty cells swamp the first iterations. The class logits start at
                 0 (p = 0.5): they are probabilities given an object, learnt on positives only.
    background_first: must be False. The builder sets it for softmax losses, which YOLO does not take:
                 objectness is its background. This head is where that rule lives.
    """

    has_objectness = True  # the builder pairs it with a criterion that uses it (YoloLoss)

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: int | Sequence[int],
        num_classes: int,
        prior_prob: float = 0.01,
        background_first: bool = False,
    ) -> None:
        super().__init__()
        if background_first:
            raise ConfigError(
                "YoloHead (model=yolov3) takes a sigmoid classification loss, not a softmax loss with a background "
                "logit (loss=ce, ce_ohem, softmax_focal): YOLOv3 predicts objectness and independent logistic "
                "classes (section 2.2), so its background is the objectness and a softmax over K + 1 has nothing "
                "to learn; use loss=focal or loss=bce"
            )
        if isinstance(in_channels, int):
            raise ConfigError(f"model.head (YoloHead) needs one in_channels per level, got {in_channels}")
        per_level = [num_anchors] * len(in_channels) if isinstance(num_anchors, int) else list(num_anchors)
        if len(per_level) != len(in_channels) or num_classes < 1 or min(per_level) < 1:
            raise ConfigError(
                f"model.head: in_channels={list(in_channels)} from model.neck and num_anchors={num_anchors} from "
                f"model.priors must have one entry per level, and num_classes={num_classes} must be >= 1"
            )
        self.num_anchors = per_level
        self.num_classes = num_classes
        self.predictors = nn.ModuleList(nn.Conv2d(c, a * (5 + num_classes), 1) for c, a in zip(in_channels, per_level))
        objectness_bias = prior_bias(1, prior_prob, background_first=False)
        with torch.no_grad():
            for conv, a in zip(self.predictors, per_level):
                nn.init.normal_(conv.weight, std=0.01)
                bias = conv.bias.view(a, 5 + num_classes)  # anchor-major, as the outputs are laid out
                bias.zero_()
                bias[:, 4] = objectness_bias

    def forward(self, levels: list[Tensor]) -> HeadOutput:
        """levels [B, in_channels[l], H_l, W_l] -> box_reg [B, A, 4], objectness [B, A], cls_logits [B, A, C].

        A = sum over levels of H_l * W_l * num_anchors[l], ordered level, y, x, anchor (as the priors).
        """
        if len(levels) != len(self.predictors):
            raise ValueError(f"YoloHead was built for {len(self.predictors)} levels but got {len(levels)}")
        flat = flatten_levels([conv(x) for conv, x in zip(self.predictors, levels)], self.num_anchors)
        box_reg, objectness, cls_logits = flat.split([4, 1, self.num_classes], dim=-1)
        return HeadOutput(cls_logits=cls_logits, box_reg=box_reg, objectness=objectness[..., 0])
