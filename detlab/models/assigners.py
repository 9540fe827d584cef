"""Which prior learns which object: RetinaNet's max-IoU assignment, on the whole padded batch at once.

The result ``matched_gt [B, A]`` indexes the padded targets of ``Batch`` (0..M-1), with -1 for background
and -2 for ignored priors (no loss at all).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detlab.structures import Batch, HeadOutput, Priors

BACKGROUND = -1
IGNORED = -2


def batched_box_iou(gt_boxes: Tensor, priors: Tensor) -> Tensor:
    """IoU [B, M, A] in float32 between padded gt boxes [B, M, 4] and priors [A, 4] shared by the batch."""
    num_images, num_gt, _ = gt_boxes.shape
    iou = box_iou(gt_boxes.reshape(-1, 4).float(), priors.float())
    return iou.reshape(num_images, num_gt, priors.shape[0])


class MaxIoUAssigner(nn.Module):
    """Each prior takes the gt it overlaps most: positive at IoU >= pos_iou, ignored in [neg_iou, pos_iou),
    background below neg_iou (the inclusive/exclusive ends of torchvision's ``Matcher``).

    low_quality_matches: as torchvision's ``Matcher(allow_low_quality_matches=True)``, every prior whose IoU
    with a gt equals that gt's highest IoU (ties included) becomes positive, matched to the gt it overlaps
    most. Unlike torchvision, a gt that overlaps no prior at all (highest IoU 0) makes no such match: it would
    turn every non-overlapping prior of the image into a positive.
    """

    def __init__(self, pos_iou: float = 0.5, neg_iou: float = 0.4, low_quality_matches: bool = True):
        super().__init__()
        if not 0.0 <= neg_iou <= pos_iou <= 1.0:
            raise ValueError(
                f"assigner needs 0 <= assigner.neg_iou <= assigner.pos_iou <= 1, got {neg_iou=}, {pos_iou=}"
            )
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.low_quality_matches = low_quality_matches

    def extra_repr(self) -> str:
        return f"pos_iou={self.pos_iou}, neg_iou={self.neg_iou}, low_quality_matches={self.low_quality_matches}"

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> Tensor:
        """matched_gt [B, A] int64: gt index 0..M-1, -1 background, -2 ignored. Padded gts are never matched."""
        _check_inputs(priors, batch)
        iou = batched_box_iou(batch.gt_boxes, priors.boxes)  # [B, M, A]
        # A padded gt scores -1: below any real IoU, so it never wins a prior nor makes a low-quality match.
        iou = torch.where(batch.gt_valid[:, :, None], iou, torch.full_like(iou, -1.0))
        best_iou, best_gt = iou.max(dim=1)  # [B, A]
        matched = torch.where(best_iou >= self.pos_iou, best_gt, torch.full_like(best_gt, IGNORED))
        matched = torch.where(best_iou < self.neg_iou, torch.full_like(best_gt, BACKGROUND), matched)
        if self.low_quality_matches:
            best_per_gt = iou.max(dim=2, keepdim=True).values  # [B, M, 1]
            is_best = (iou == best_per_gt) & (best_per_gt > 0)  # [B, M, A]; padded rows are -1, never > 0
            matched = torch.where(is_best.any(dim=1), best_gt, matched)
        return matched


def _check_inputs(priors: Priors, batch: Batch) -> None:
    """Shapes the assignment relies on, checked up front so that a mismatch names the field."""
    boxes, valid = batch.gt_boxes, batch.gt_valid
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"Batch.gt_boxes must be [B, M, 4], got {list(boxes.shape)}")
    if valid.shape != boxes.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"Batch.gt_valid must be a bool [B, M] = {list(boxes.shape[:2])}, got {valid.dtype} {list(valid.shape)}"
        )
    if priors.boxes.dim() != 2 or priors.boxes.shape[-1] != 4:
        raise ValueError(f"Priors.boxes must be [A, 4], got {list(priors.boxes.shape)}")
