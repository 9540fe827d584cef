"""Faster R-CNN's RoI box head (with FPN, Lin et al. 2017, section 4.2): RoIAlign of every RoI on the pyramid level
that fits its size, two fully connected layers, then class logits and class-specific box deltas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

from detlab.errors import ConfigError, check_positive
from detlab.models.heads.common import check_shared_channels, prior_bias


def level_names(strides: Sequence[int]) -> list[str]:
    """Names of pyramid levels by stride, as in the FPN paper: stride 4 -> "p2", ..., 64 -> "p6"."""
    return [f"p{round(math.log2(s))}" for s in strides]


class RoIBoxHead(nn.Module):
    """RoIs [B, R, 4] on the neck's levels -> cls_logits [B, R, C] and box_reg [B, R, K, 4].

    in_channels:   the neck's out_channels (the same on every level).
    level_strides: the neck's strides, lowest first; the levels are named by level_names() ("p2" = stride 4).
    num_outputs:   C, the classification outputs the loss asks for (K sigmoid, K + 1 softmax with background 0).
    num_classes:   K; the box regression is class-specific, 4 deltas per object class (none for background).
    featmap_names: the levels RoIAlign pools from, consecutive (the FPN paper: P2..P5; P6 feeds the RPN only).
    output_size, sampling_ratio: torchvision's MultiScaleRoIAlign (7 x 7, 2 samples per bin side).
    canonical_scale, canonical_level: a box of side canonical_scale is pooled from P<canonical_level>, one level
                   per factor 2 of size (the FPN paper's eq. 1: 224 and 4, for ImageNet-sized objects).
    representation_size: width of the two fully connected layers (the paper's 1024).
    prior_prob:    None: zero classification bias (torchvision); a probability sets the bias as the dense heads'
                   prior_prob, in the sigmoid or softmax layout.
    background_first: softmax outputs with the background at index 0 (set by the builder from the loss).
    """

    def __init__(
        self,
        in_channels: int,
        level_strides: Sequence[int],
        num_outputs: int,
        num_classes: int,
        featmap_names: Sequence[str] = ("p2", "p3", "p4", "p5"),
        output_size: int = 7,
        sampling_ratio: int = 2,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        representation_size: int = 1024,
        prior_prob: float | None = None,
        background_first: bool = False,
    ) -> None:
        super().__init__()
        check_shared_channels("model.roi.head", in_channels)
        self.level_names = level_names(level_strides)
        check_featmap_names(list(featmap_names), self.level_names)
        check_positive("model.roi.head", num_outputs=num_outputs, num_classes=num_classes, output_size=output_size,
                       representation_size=representation_size, canonical_scale=canonical_scale,
                       canonical_level=canonical_level)
        self.featmap_names = list(featmap_names)
        self.num_classes = num_classes
        self.pooler = MultiScaleRoIAlign(
            self.featmap_names, output_size, sampling_ratio,
            canonical_scale=canonical_scale, canonical_level=canonical_level,
        )
        self.fc6 = nn.Linear(in_channels * output_size**2, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.cls_score = nn.Linear(representation_size, num_outputs)
        self.bbox_pred = nn.Linear(representation_size, num_classes * 4)
        # detectron2's FastRCNNOutputLayers init: small weights so that the first scores and deltas are ~0
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)
        with torch.no_grad():
            if prior_prob is None:
                self.cls_score.bias.zero_()
            else:
                self.cls_score.bias.copy_(prior_bias(num_outputs, prior_prob, background_first))

    def forward(
        self, levels: list[Tensor], rois: Tensor, roi_valid: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """levels [B, in_channels, H_l, W_l] (one per level_strides), rois [B, R, 4] xyxy input pixels with
        roi_valid [B, R], image_size (H, W) of the padded input -> cls_logits [B, R, C], box_reg [B, R, K, 4];
        invalid rows are zeros: only the valid RoIs are pooled and scored."""
        num_images, num_rois = roi_valid.shape
        features = {name: x for name, x in zip(self.level_names, levels) if name in self.featmap_names}
        # torchvision's pooler takes one box tensor per image; split() only slices, the work is one batched call.
        boxes = list(rois[roi_valid].split(roi_valid.sum(1).tolist()))
        # The pooler infers each level's scale as the power of 2 nearest to feature side / image side (from its
        # first call on). torchvision passes each image's unpadded size; under its resize (batch padded by < 32 px)
        # that gives the same scales as the padded input, which stays right under a square letterbox too, where a
        # batch of wide images would make the unpadded heights infer twice the scale.
        pooled = self.pooler(features, boxes, [image_size] * num_images)  # [N, in_channels, S, S]
        hidden = F.relu(self.fc7(F.relu(self.fc6(pooled.flatten(1)))))
        cls_logits = hidden.new_zeros(num_images, num_rois, self.cls_score.out_features)
        box_reg = hidden.new_zeros(num_images, num_rois, self.num_classes * 4)
        mask = roi_valid[..., None]
        return (
            cls_logits.masked_scatter(mask, self.cls_score(hidden)),
            box_reg.masked_scatter(mask, self.bbox_pred(hidden)).view(num_images, num_rois, self.num_classes, 4),
        )


def check_featmap_names(names: list[str], available: list[str]) -> None:
    """The pooled levels (names) must be among the neck's (available) and consecutive: RoIAlign's level mapper
    indexes them as k - k_min. RoIBoxHead checks them when it is built (detlab.config.validate builds it)."""
    if not names or not set(names) <= set(available):
        raise ConfigError(
            f"model.roi.head.featmap_names={names} must be levels of the neck, which makes {available} "
            "(named by stride: p2 = stride 4)"
        )
    index = [available.index(n) for n in names]
    if index != list(range(index[0], index[0] + len(index))):
        raise ConfigError(
            f"model.roi.head.featmap_names={names} must be consecutive levels in increasing stride, as the neck "
            f"makes them ({available}): the pooler picks level k - k_min for a box"
        )
