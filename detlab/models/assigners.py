"""Which prior learns which object: max-IoU assignment (RetinaNet, SSD, and with random sampling the RPN and
Faster R-CNN's RoI stage) and YOLOv3's, on the whole padded batch at once.

The result ``matched_gt [B, A]`` indexes the padded targets of ``Batch`` (0..M-1), with -1 for background
and -2 for ignored priors (no loss at all).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detlab.errors import ConfigError
from detlab.structures import BACKGROUND, IGNORED, Batch, BoxCoder, HeadOutput, Priors


def batched_box_iou(gt_boxes: Tensor, priors: Tensor) -> Tensor:
    """IoU [B, M, A] in float32 between padded gt boxes [B, M, 4] and priors [A, 4] shared by the batch, or
    boxes [B, A, 4] of each image.

    torchvision's box_iou arithmetic, op for op (the same floats), but one coordinate at a time: every op runs
    over contiguous rows of A, where box_iou's corners [B, M, A, 2] broadcast over a last dim of 2 (2 to 3 times
    slower on the CPU).
    """
    gx1, gy1, gx2, gy2 = (c[..., None] for c in gt_boxes.float().unbind(-1))  # [B, M, 1] each
    # [1, A] (shared) or [B, 1, A] (per image) each, contiguous along A
    px1, py1, px2, py2 = priors.float().movedim(-1, 0).contiguous().unsqueeze(-2).unbind(0)
    gt_area = (gx2 - gx1) * (gy2 - gy1)  # [B, M, 1]
    prior_area = (px2 - px1) * (py2 - py1)
    inter = torch.minimum(gx2, px2).sub_(torch.maximum(gx1, px1)).clamp_(min=0)  # [B, M, A] width
    inter.mul_(torch.minimum(gy2, py2).sub_(torch.maximum(gy1, py1)).clamp_(min=0))
    return inter.div_((gt_area + prior_area).sub_(inter))


def max_iou_match(
    gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor, pos_iou: float, neg_iou: float, low_quality_matches: bool
) -> Tensor:
    """matched_gt [B, A] of boxes [A, 4] (shared) or [B, A, 4] (per image) against the padded gts [B, M, 4] with
    gt_valid [B, M]: the rule of ``MaxIoUAssigner`` below. Padded gts are never matched."""
    return match_iou(valid_iou(gt_boxes, gt_valid, boxes), pos_iou, neg_iou, low_quality_matches)


def valid_iou(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor) -> Tensor:
    """IoU [B, M, A] of the padded gts [B, M, 4] with boxes [A, 4] or [B, A, 4]; -1 in the rows of padded gts:
    below any real IoU, so that a padded gt never wins a box nor makes a low-quality or forced match."""
    return batched_box_iou(gt_boxes, boxes).masked_fill_(~gt_valid[:, :, None], -1.0)


def match_iou(iou: Tensor, pos_iou: float, neg_iou: float, low_quality_matches: bool) -> Tensor:
    """matched_gt [B, A] of iou [B, M, A] (valid_iou): the rule of ``MaxIoUAssigner``."""
    best_iou, best_gt = iou.max(dim=1)  # [B, A]
    matched = torch.where(best_iou >= pos_iou, best_gt, IGNORED).masked_fill_(best_iou < neg_iou, BACKGROUND)
    if low_quality_matches:
        matched = torch.where(best_priors(iou, all_ties=True).any(dim=1), best_gt, matched)
    return matched


def best_priors(iou: Tensor, all_ties: bool) -> Tensor:
    """[B, M, A] bool: each gt's best prior by iou [B, M, A], every one tied at its best IoU or the first of them
    (torch's argmax); none for a gt whose best IoU is not > 0 (padded rows are -1)."""
    best_iou, first = iou.max(dim=2, keepdim=True)  # [B, M, 1]
    if all_ties:  # a best IoU not > 0 is replaced by 2, which no IoU equals
        return iou == torch.where(best_iou > 0, best_iou, 2.0)
    return torch.zeros_like(iou, dtype=torch.bool).scatter_(2, first, best_iou > 0)


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
            raise ConfigError(
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
        return max_iou_match(
            batch.gt_boxes, batch.gt_valid, priors.boxes, self.pos_iou, self.neg_iou, self.low_quality_matches
        )


def balanced_sample(matched_gt: Tensor, num_samples: int, positive_fraction: float) -> Tensor:
    """Faster R-CNN's sampler, for every row of matched_gt [B, N] at once: sampled [B, N] bool marks a uniformly
    random subset of at most ``positive_fraction * num_samples`` positives (>= 0), filled up to ``num_samples``
    with random background (-1) entries; ignored (-2) entries are never drawn. The counts are torchvision's
    ``BalancedPositiveNegativeSampler``: pos = min(int(num_samples * fraction), #positives),
    neg = min(num_samples - pos, #background).
    """
    positive, background = matched_gt >= 0, matched_gt == BACKGROUND
    total_pos = positive.sum(1, keepdim=True)  # [B, 1]
    num_pos = total_pos.clamp(max=int(num_samples * positive_fraction))
    num_neg = background.sum(1, keepdim=True).clamp(max=num_samples - num_pos)
    # One sort per row by a random key in [0, 1) plus 0 (positive), 1 (background) or 2 (ignored): a random
    # order of the positives, then of the background entries, then the rest. The first num_pos ranks are the
    # drawn positives, the num_neg ranks from total_pos on the drawn background entries.
    key = torch.rand(matched_gt.shape, device=matched_gt.device) + 2.0 - 2.0 * positive.float() - background.float()
    order = key.argsort(dim=1)  # [B, N]: rank -> entry
    rank = torch.arange(matched_gt.shape[1], device=matched_gt.device)[None]  # [1, N]
    drawn = (rank < num_pos) | ((rank >= total_pos) & (rank < total_pos + num_neg))  # [B, N] by rank
    return torch.zeros_like(drawn).scatter_(1, order, drawn)  # order is a permutation: back to entries


class SSDAssigner(MaxIoUAssigner):
    """SSD's matching (the paper's section 2.2; torchvision's SSDMatcher; mmdetection's SSD): each prior takes the
    gt it overlaps most, positive at IoU >= pos_iou, background below neg_iou; then each gt's best prior is
    matched to that gt, whatever else it overlaps more, so that every object has a prior to learn from. A prior
    that is the best of several gts goes to the last of them, as torchvision's ``matches[best] = arange(M)``.
    (``MaxIoUAssigner``'s low-quality rule instead leaves such a prior with the gt it overlaps most: a small
    object beside a larger one could lose its only prior.)

    all_ties: false forces the first prior tied at a gt's best IoU (torchvision's argmax; the paper and caffe force one
    prior per gt too); true every tied one (experiments/ssd_matching measured it 1.3 AP lower). A gt that overlaps
    no prior at all (best IoU 0) forces nothing; torchvision would force prior 0.
    """

    def __init__(self, pos_iou: float = 0.5, neg_iou: float = 0.5, all_ties: bool = False):
        super().__init__(pos_iou, neg_iou, low_quality_matches=False)
        self.all_ties = all_ties

    def extra_repr(self) -> str:
        return f"pos_iou={self.pos_iou}, neg_iou={self.neg_iou}, all_ties={self.all_ties}"

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> Tensor:
        """matched_gt [B, A] int64: gt index 0..M-1, -1 background, -2 ignored. Padded gts are never matched."""
        _check_inputs(priors, batch)
        iou = valid_iou(batch.gt_boxes, batch.gt_valid, priors.boxes)  # [B, M, A]
        matched = match_iou(iou, self.pos_iou, self.neg_iou, low_quality_matches=False)
        forced = best_priors(iou, self.all_ties)  # [B, M, A]
        gt_number = torch.arange(1, iou.shape[1] + 1, device=iou.device)[None, :, None]  # [1, M, 1]
        last_gt = (forced * gt_number).amax(dim=1) - 1  # [B, A]: the last gt forcing each prior, -1 if none
        return torch.where(last_gt >= 0, last_gt, matched)


class SampledMaxIoUAssigner(MaxIoUAssigner):
    """The RPN's assignment: max-IoU (0.7 / 0.3 with low-quality matches in Faster R-CNN), then per image a
    random ``num_samples`` anchors with at most ``positive_fraction`` positives (``balanced_sample``); every
    anchor not drawn becomes ignored (-2), so the loss sees exactly the sampled ones."""

    def __init__(
        self,
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        low_quality_matches: bool = True,
        num_samples: int = 256,
        positive_fraction: float = 0.5,
    ):
        super().__init__(pos_iou, neg_iou, low_quality_matches)
        _check_sampling("rpn.assigner", num_samples, positive_fraction)
        self.num_samples = num_samples
        self.positive_fraction = positive_fraction

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_samples={self.num_samples}, positive_fraction={self.positive_fraction}"

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> Tensor:
        """matched_gt [B, A] int64: gt index 0..M-1 or -1 background for the sampled anchors, -2 elsewhere."""
        matched = super().forward(outputs, priors, batch)
        return torch.where(balanced_sample(matched, self.num_samples, self.positive_fraction), matched, IGNORED)


class RoISampler(nn.Module):
    """Faster R-CNN's RoI stage in training: which proposals the box head learns from, and from which gt.

    The gt boxes join the proposals (as torchvision does: early in training the proposals are poor, and the gts
    are perfect positives), max-IoU assignment without low-quality matches (positive at IoU >= pos_iou,
    background below neg_iou; torchvision's [0.5, 1] and [0, 0.5)), then per image a random ``num_samples``
    RoIs with at most ``positive_fraction`` positives (``balanced_sample``).
    """

    def __init__(
        self, pos_iou: float = 0.5, neg_iou: float = 0.5, num_samples: int = 512, positive_fraction: float = 0.25
    ):
        super().__init__()
        if not 0.0 <= neg_iou <= pos_iou <= 1.0:
            raise ConfigError(
                f"model.roi.sampler needs 0 <= neg_iou <= pos_iou <= 1, got {neg_iou=}, {pos_iou=}"
            )
        _check_sampling("roi.sampler", num_samples, positive_fraction)
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.num_samples = num_samples
        self.positive_fraction = positive_fraction

    def extra_repr(self) -> str:
        return (
            f"pos_iou={self.pos_iou}, neg_iou={self.neg_iou}, num_samples={self.num_samples}, "
            f"positive_fraction={self.positive_fraction}"
        )

    @torch.no_grad()
    def match(self, boxes: Tensor, valid: Tensor, batch: Batch) -> Tensor:
        """matched_gt [B, R] of boxes [B, R, 4] with valid [B, R]: gt index, -1 background, -2 where not valid."""
        matched = max_iou_match(batch.gt_boxes, batch.gt_valid, boxes, self.pos_iou, self.neg_iou, False)
        return torch.where(valid, matched, IGNORED)

    @torch.no_grad()
    def forward(self, proposals: Tensor, proposal_valid: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """proposals [B, R, 4] with proposal_valid [B, R] -> the sampled RoIs [B, S, 4], roi_valid [B, S] and
        their matched_gt [B, S] (gt index, -1 background, -2 on invalid slots); S = min(num_samples, R + M)."""
        boxes = torch.cat([proposals, batch.gt_boxes.to(proposals)], dim=1)  # [B, R + M, 4]
        valid = torch.cat([proposal_valid, batch.gt_valid], dim=1)  # [B, R + M]
        matched = self.match(boxes, valid, batch)
        sampled = balanced_sample(matched, self.num_samples, self.positive_fraction)  # [B, R + M]
        # The sampled entries first (a stable sort keeps their order), the first S of them per image.
        index = sampled.byte().argsort(dim=1, descending=True, stable=True)[:, : min(self.num_samples, len(valid[0]))]
        roi_valid = sampled.gather(1, index)  # [B, S]: False where an image had fewer than S to draw from
        rois = torch.where(roi_valid[..., None], boxes.gather(1, index[..., None].expand(-1, -1, 4)), 0.0)
        return rois, roi_valid, torch.where(roi_valid, matched.gather(1, index), IGNORED)


def _check_sampling(key: str, num_samples: int, positive_fraction: float) -> None:
    if num_samples < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(
            f"model.{key}: num_samples={num_samples} must be >= 1 and positive_fraction={positive_fraction} in [0, 1]"
        )


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

    def __init__(self, ignore_iou: float | None = 0.5, box_coder: BoxCoder | None = None):
        super().__init__()
        if ignore_iou is not None and not 0.0 < ignore_iou <= 1.0:
            raise ConfigError(f"assigner.ignore_iou must be in (0, 1] or null, got {ignore_iou}")
        if ignore_iou is not None and box_coder is None:
            raise ConfigError("assigner.box_coder is needed to decode the predictions for assigner.ignore_iou")
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
            predicted = self.box_coder.decode(outputs.box_reg, priors.boxes, priors.strides)  # [B, A, 4]
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
