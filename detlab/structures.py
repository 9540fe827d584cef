"""The data that crosses boundaries between detlab's parts.

Boxes are xyxy in absolute pixels everywhere inside detlab. "Input pixels" are pixels of the tensor the
model sees (after resize/letterbox, before padding); "original pixels" are pixels of the image file.
The map between them is per image: ``input = original * scale + offset`` with ``scale = (sx, sy)`` and
``offset = (ox, oy)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


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


def boxes_to_original(boxes_xyxy: Tensor, scales: Tensor, offsets: Tensor) -> Tensor:
    """Map input-pixel boxes [B, N, 4] back to original pixels with per-image scales/offsets [B, 2]."""
    offset = offsets.repeat(1, 2)[:, None, :].to(boxes_xyxy.dtype)
    scale = scales.repeat(1, 2)[:, None, :].to(boxes_xyxy.dtype)
    return (boxes_xyxy - offset) / scale
