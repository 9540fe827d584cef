"""Which prior learns which object: RetinaNet's max-IoU assignment, on the whole padded batch at once.

The result ``matched_gt [B, A]`` indexes the padded targets of ``Batch`` (0..M-1), with -1 for background
and -2 for ignored priors (no loss at all).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detlab.models.box_coder import YoloBoxCoder, bind_strides
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


class YoloAssigner(nn.Module):
    """YOLOv3's assignment (section 2.1): each gt is learnt by one prior only, the one whose anchor shape best
    matches its own among all levels' anchors (IoU of the (w, h) boxes centred together), in the cell of that
    anchor's level that contains the gt's centre.

    Batched over the padded batch: a [B, M, A] table of shape IoUs, kept only where prior a's cell contains gt
    m's centre (one cell per level, so the candidates are exactly the anchors of all levels), argmax over A.
    A gt whose centre lies on no cell (outside the padded input) is not matched.

    Two gts that pick the same prior (same cell, same best anchor): the one whose shape matches the anchor
    better takes it, the lower gt index on a tie; the other is not learnt at all in this batch (as in darknet,
    where the later one silently overwrites the earlier).

    ignore_iou: YOLOv3's ignore rule, against the predicted boxes (as the paper and darknet): a background
                prior whose current prediction, decoded by box_coder, overlaps some gt by more than ignore_iou
                is ignored (-2: no objectness loss) rather than pushed towards background. None disables it.
    box_coder:  the coder of the predictions (the model's box_coder); needed when ignore_iou is set.
    """

    def __init__(self, ignore_iou: float | None = 0.5, box_coder: YoloBoxCoder | None = None):
        super().__init__()
        if ignore_iou is not None and not 0.0 < ignore_iou <= 1.0:
            raise ValueError(f"assigner.ignore_iou must be in (0, 1] or null, got {ignore_iou}")
        if ignore_iou is not None and box_coder is None:
            raise ValueError("assigner.box_coder is needed to decode the predictions for assigner.ignore_iou")
        self.ignore_iou = ignore_iou
        self.box_coder = box_coder

    def extra_repr(self) -> str:
        return f"ignore_iou={self.ignore_iou}"

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> Tensor:
        """matched_gt [B, A] int64: gt index 0..M-1, -1 background, -2 ignored. Padded gts are never matched."""
        _check_inputs(priors, batch)
        gt_boxes, valid = batch.gt_boxes.float(), batch.gt_valid
        matched = torch.full(outputs.box_reg.shape[:2], BACKGROUND, dtype=torch.int64, device=gt_boxes.device)
        if self.ignore_iou is not None:
            coder = bind_strides(self.box_coder, priors.strides)
            predicted = coder.decode(outputs.box_reg, priors.boxes)  # [B, A, 4]
            iou = box_iou(gt_boxes, predicted)  # [B, M, A]: torchvision's box_iou broadcasts leading dims
            overlaps = (torch.where(valid[:, :, None], iou, 0.0) > self.ignore_iou).any(dim=1)  # [B, A]
            matched = torch.where(overlaps, IGNORED, matched)

        best_prior, best_iou = _best_shape_prior(gt_boxes, valid, priors)  # [B, M] each
        # Several gts may pick one prior: a [B, M, A] table of their claims, where the best-matching one wins.
        claims = torch.full((*best_prior.shape, len(priors)), -1.0, device=gt_boxes.device)
        claims.scatter_(2, best_prior.clamp(min=0)[..., None], torch.where(best_prior >= 0, best_iou, -1.0)[..., None])
        claim, winner = claims.max(dim=1)  # [B, A]; max returns the first (lowest) gt index on ties
        return torch.where(claim >= 0, winner, matched)


def _best_shape_prior(gt_boxes: Tensor, valid: Tensor, priors: Priors) -> tuple[Tensor, Tensor]:
    """Per gt [B, M]: the index of the prior that learns it (-1 for padded or off-grid gts) and its shape IoU."""
    # IoU of the shapes alone: both boxes centred at the origin, (cx, cy, w, h) = (0, 0, w, h).
    gt_shapes = torch.cat([torch.zeros_like(gt_boxes[..., :2]), gt_boxes[..., 2:] - gt_boxes[..., :2]], dim=-1)
    prior_boxes = priors.boxes.float()
    prior_shapes = torch.cat([torch.zeros_like(prior_boxes[:, :2]), prior_boxes[:, 2:] - prior_boxes[:, :2]], dim=-1)
    shape_iou = box_iou(gt_shapes, prior_shapes, fmt="cxcywh")  # [B, M, A]
    # A prior's cell spans its centre +- stride / 2; a centre on a cell's edge belongs to the cell after it.
    stride = priors.strides.float()[:, None]  # [A, 1]
    cell_start = (priors.boxes[:, :2] + priors.boxes[:, 2:]) / 2 - stride / 2  # [A, 2]
    gt_centre = ((gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2)[:, :, None]  # [B, M, 1, 2]
    in_cell = ((gt_centre >= cell_start) & (gt_centre < cell_start + stride)).all(dim=-1)  # [B, M, A]
    in_cell &= valid[:, :, None]
    best_iou, best_prior = torch.where(in_cell, shape_iou, -1.0).max(dim=2)
    return torch.where(best_iou >= 0, best_prior, -1), best_iou
