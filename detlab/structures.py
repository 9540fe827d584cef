"""The data that crosses boundaries between detlab's parts.

Boxes are xyxy in absolute pixels everywhere inside detlab. "Input pixels" are pixels of the tensor the
model sees (after resize/letterbox, before padding); "original pixels" are pixels of the image file.
The map between them is per image: ``input = original * scale + offset`` with ``scale = (sx, sy)`` and
``offset = (ox, oy)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

# The two values of an assignment ``matched_gt [B, A]`` that are not an index into the padded targets: the prior
# learns background, or it takes no classification loss at all. Assigners write them, losses read them.
BACKGROUND = -1
IGNORED = -2


@dataclass
class Batch:
    """A padded batch of images and targets (not frozen: Lightning moves it between devices).

    images:      [B, 3, H, W] float32, normalised, zero-padded bottom/right to a common size.
    gt_boxes:    [B, M, 4] float32 xyxy in input pixels; rows where ``gt_valid`` is False are zeros.
    gt_labels:   [B, M] int64 contiguous class index 0..K-1; 0 where not valid (the mask says which).
    gt_valid:    [B, M] bool. M >= 1 even when no image of the batch has an object.
    image_sizes: [B, 2] int64 (h, w) of each image's content in input pixels, before padding.
    image_ids:   [B] int64 the dataset's original image ids.
    orig_sizes:  [B, 2] int64 (h, w) of the original image.
    scales:      [B, 2] float32 (sx, sy) with input = original * scale + offset.
    offsets:     [B, 2] float32 (ox, oy).
    """

    images: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_valid: Tensor
    image_sizes: Tensor
    image_ids: Tensor
    orig_sizes: Tensor
    scales: Tensor
    offsets: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class HeadOutput:
    """Raw outputs of a dense head, concatenated over pyramid levels (level-major, then y, x, anchor).

    cls_logits: [B, A, C] with C = K for sigmoid losses and K + 1 (index 0 = background) for softmax losses.
    box_reg:    [B, A, 4] regression deltas, decoded by the box coder against the priors.
    objectness: [B, A] optional (YOLO, RPN).
    """

    cls_logits: Tensor
    box_reg: Tensor
    objectness: Tensor | None = None


@dataclass
class TwoStageOutput:
    """Raw outputs of a two-stage detector (Faster R-CNN): the RPN's dense outputs, the RoIs the second stage ran
    on and its per-RoI outputs. The same type in training and evaluation; R differs (see proposals).

    rpn:            the RPN's HeadOutput over the anchors (the Priors returned beside it): cls_logits [B, A, 1]
                    objectness logits (one sigmoid logit per anchor, so any sigmoid loss applies), box_reg [B, A, 4].
    proposals:      [B, R, 4] xyxy input pixels, detached: the boxes the RoI head ran on. In training the RoIs
                    sampled from the proposals plus the gt boxes (R = the sampler's num_samples at most); in
                    evaluation all the RPN's proposals (R = its post-NMS top-n).
    proposal_valid: [B, R] bool; padded rows (fewer proposals or samples than R) are False and carry zeros.
    roi_cls_logits: [B, R, C] with C = K (sigmoid losses) or K + 1 (softmax losses, background at index 0).
    roi_box_reg:    [B, R, K, 4] class-specific deltas of each RoI, decoded by the RoI box coder against proposals.
    roi_matched_gt: [B, R] index into the padded targets, -1 background, -2 not sampled or not valid; None when
                    the model got no targets. In evaluation with targets, every valid proposal is matched (for
                    the validation loss), none sampled.
    """

    rpn: HeadOutput
    proposals: Tensor
    proposal_valid: Tensor
    roi_cls_logits: Tensor
    roi_box_reg: Tensor
    roi_matched_gt: Tensor | None = None


@dataclass(frozen=True)
class Priors:
    """Anchors / default boxes for one input size, concatenated over levels in the head's order.

    boxes:       [A, 4] xyxy in input pixels.
    strides:     [A] stride of the level each prior belongs to.
    level_sizes: number of priors on each level; sums to A.
    """

    boxes: Tensor
    strides: Tensor
    level_sizes: tuple[int, ...]

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass
class Detections:
    """Detections of one image: boxes [N, 4] xyxy in original pixels, scores [N], labels [N] (0..K-1)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


class BoxCoder(Protocol):
    """What the losses, the assigners and the post-processing ask of a box coder (detlab.models.box_coder), so
    that every coder fits every caller: ``encode`` and ``decode`` over any leading dims.

    strides [...] is the stride of each prior's level. Coders whose deltas are relative to the prior's size
    alone (DeltaXYWHBoxCoder) do not read it, so the RoI head, whose proposals have no level, passes None.
    """

    def encode(self, gt_boxes: Tensor, priors: Tensor, strides: Tensor | None = None) -> Tensor:
        """Targets [..., 4] that take ``priors`` [..., 4] to ``gt_boxes`` [..., 4] (xyxy)."""
        ...

    def decode(self, box_reg: Tensor, priors: Tensor, strides: Tensor | None = None) -> Tensor:
        """Boxes [..., 4] xyxy from ``box_reg`` [..., 4] on ``priors`` [..., 4]."""
        ...


def boxes_to_original(boxes_xyxy: Tensor, scales: Tensor, offsets: Tensor) -> Tensor:
    """Map input-pixel boxes [B, N, 4] back to original pixels with per-image scales/offsets [B, 2]."""
    offset = offsets.repeat(1, 2)[:, None, :].to(boxes_xyxy.dtype)
    scale = scales.repeat(1, 2)[:, None, :].to(boxes_xyxy.dtype)
    return (boxes_xyxy - offset) / scale
