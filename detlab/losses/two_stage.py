"""Faster R-CNN's criterion: the RPN's objectness and box terms over the sampled anchors, the RoI head's
classification and class-specific box terms over the sampled RoIs.

Each stage's terms are sums divided by the number of samples it drew (averaged over DDP ranks, at least 1), as
torchvision normalises them: 256 anchors and 512 RoIs per image by default. The classification loss of the RoI
head is the `loss` config group's, exactly as for the dense heads; the RPN has its own sigmoid loss (BCE).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative
from detlab.losses.dense import loss_normaliser
from detlab.structures import IGNORED, Batch, BoxCoder, Priors, TwoStageOutput


class TwoStageLoss(nn.Module):
    """Named loss terms {"rpn_cls", "rpn_box", "cls", "box"}, already weighted; the total is their sum.

    rpn_cls_loss:  a sigmoid classification loss for the objectness (one logit per anchor: object or not).
    rpn_box_loss, rpn_box_coder: the RPN's box loss and the coder of its deltas (shared with the proposals).
    cls_loss:      the RoI head's classification loss (the `loss` group: K sigmoid or K + 1 softmax outputs).
    box_loss, box_coder: the RoI head's box loss and coder (shared with the post-processing); the deltas of
                   the gt's class are the ones that learn.
    *_weight:      multiply the four normalised terms.
    """

    def __init__(
        self,
        rpn_cls_loss: nn.Module,
        rpn_box_loss: nn.Module,
        rpn_box_coder: BoxCoder,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        box_coder: BoxCoder,
        rpn_cls_weight: float = 1.0,
        rpn_box_weight: float = 1.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if rpn_cls_loss.num_outputs(1) != 1:
            raise ConfigError(
                f"model.rpn.loss must be a sigmoid loss, not {type(rpn_cls_loss).__name__}: the RPN scores each "
                "anchor with one objectness logit (object or not), there is no background logit to softmax against; "
                "use loss@model.rpn.loss=bce or loss@model.rpn.loss=focal"
            )
        weights = {"rpn_cls": rpn_cls_weight, "rpn_box": rpn_box_weight, "cls": cls_weight, "box": box_weight}
        check_non_negative("model.criterion", **{f"{key}_weight": value for key, value in weights.items()})
        self.rpn_cls_loss = rpn_cls_loss
        self.rpn_box_loss = rpn_box_loss
        self.rpn_box_coder = rpn_box_coder
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.box_coder = box_coder
        self.weights = weights

    def extra_repr(self) -> str:
        return ", ".join(f"{k}_weight={v}" for k, v in self.weights.items())

    def forward(
        self, outputs: TwoStageOutput, priors: Priors, matched_gt: Tensor, batch: Batch
    ) -> dict[str, Tensor]:
        """matched_gt [B, A]: the RPN assigner's (gt index for sampled positives, -1 sampled background, -2 not
        sampled); the RoI head's matches come with the outputs (roi_matched_gt [B, R])."""
        if outputs.roi_matched_gt is None:
            raise ValueError("TwoStageLoss needs TwoStageOutput.roi_matched_gt: call the model with targets=batch")
        _check_inputs(outputs, priors, matched_gt)
        rpn_cls, rpn_box = self._rpn_terms(outputs, priors, matched_gt, batch)
        cls, box = self._roi_terms(outputs, batch)
        terms = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "cls": cls, "box": box}
        return {key: self.weights[key] * value for key, value in terms.items()}

    def _rpn_terms(
        self, outputs: TwoStageOutput, priors: Priors, matched_gt: Tensor, batch: Batch
    ) -> tuple[Tensor, Tensor]:
        """Objectness (one class: 0 object, -1 background, -2 not sampled) and box terms over sampled anchors."""
        positive = matched_gt >= 0  # [B, A]
        normaliser = loss_normaliser(matched_gt != IGNORED)
        objectness = self.rpn_cls_loss(outputs.rpn.cls_logits, torch.where(positive, 0, matched_gt))
        gt_boxes = _matched_boxes(batch, matched_gt, positive)  # [N, 4]
        anchors = priors.boxes.expand_as(outputs.rpn.box_reg)[positive]  # [N, 4]
        strides = priors.strides.expand_as(positive)[positive]  # [N]
        box = self.rpn_box_loss(outputs.rpn.box_reg[positive], anchors, gt_boxes, self.rpn_box_coder, strides)
        return objectness / normaliser, box / normaliser

    def _roi_terms(self, outputs: TwoStageOutput, batch: Batch) -> tuple[Tensor, Tensor]:
        """Classification over the sampled RoIs, box regression of the positives' own class."""
        matched = outputs.roi_matched_gt  # [B, R]
        positive = matched >= 0
        normaliser = loss_normaliser(matched != IGNORED)
        gt_labels = batch.gt_labels.gather(1, matched.clamp(min=0))  # [B, R]; masked below
        cls = self.cls_loss(outputs.roi_cls_logits, torch.where(positive, gt_labels, matched))
        labels = gt_labels[positive]  # [N]
        deltas = outputs.roi_box_reg[positive]  # [N, K, 4]
        deltas = deltas.gather(1, labels[:, None, None].expand(-1, 1, 4))[:, 0]  # [N, 4]: the gt class's deltas
        gt_boxes = _matched_boxes(batch, matched, positive)
        box = self.box_loss(deltas, outputs.proposals[positive], gt_boxes, self.box_coder)
        return cls / normaliser, box / normaliser


def _matched_boxes(batch: Batch, matched_gt: Tensor, positive: Tensor) -> Tensor:
    """The gt boxes [N, 4] of the positives of matched_gt [B, X], in the (row-major) order of positive [B, X]."""
    image_index = positive.nonzero()[:, 0]
    return batch.gt_boxes[image_index, matched_gt[positive]]


def _check_inputs(outputs: TwoStageOutput, priors: Priors, matched_gt: Tensor) -> None:
    """Shapes the loss relies on, checked up front so that a mismatch names the field."""
    rpn = outputs.rpn
    expected = (len(rpn.box_reg), len(priors))
    if tuple(matched_gt.shape) != expected or tuple(rpn.cls_logits.shape) != (*expected, 1):
        raise ValueError(
            f"loss expects matched_gt [B, A] and TwoStageOutput.rpn.cls_logits [B, A, 1] with B, A = {list(expected)} "
            f"(the anchors); got {list(matched_gt.shape)} and {list(rpn.cls_logits.shape)}"
        )
    rois = tuple(outputs.roi_matched_gt.shape)
    if tuple(outputs.roi_cls_logits.shape[:2]) != rois or tuple(outputs.proposals.shape[:2]) != rois:
        raise ValueError(
            f"loss expects TwoStageOutput.roi_cls_logits [B, R, C], proposals [B, R, 4] and roi_matched_gt [B, R]; got "
            f"{list(outputs.roi_cls_logits.shape)}, {list(outputs.proposals.shape)} and {list(rois)}"
        )
