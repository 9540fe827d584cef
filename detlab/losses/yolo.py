"""YOLOv3's criterion: objectness over every non-ignored prior, classes and box over the positives.

The classification loss of the `loss` config group scores both the objectness (one logit per prior: positives
target 1, background 0) and the classes (K logits per positive), so loss=focal puts the same focal term
(alpha, gamma) on both and loss=bce is YOLOv3's logistic losses. Every term is a sum divided by the number of
positive priors, averaged over DDP ranks (the house normaliser of DenseDetectionLoss), or by the number of images
(darknet's), then weighted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative
from detlab.losses.dense import loss_normaliser
from detlab.structures import Batch, BoxCoder, HeadOutput, Priors


class YoloLoss(nn.Module):
    """Named loss terms {"obj", "cls", "box"} of a YOLO head, already weighted; the total is their sum.

    cls_loss:  a sigmoid classification loss (``forward(logits [B, A, C], target_labels [B, A])`` -> sum), used
               for the objectness (C = 1) and the classes (C = K). YoloHead, the head this criterion goes with,
               refuses softmax losses: its background is the objectness' business.
    box_loss:  a box loss (``forward(box_reg [N, 4], priors [N, 4], gt_boxes [N, 4], coder, strides [N])`` -> sum):
               detlab.losses.box.GIoULoss, or YoloXYWHLoss below (the paper's terms).
    box_coder: the coder shared with the post-processing (YoloBoxCoder: it reads each positive's stride).
    obj_weight, cls_weight, box_weight: multiply the three normalised terms.
    normalize: "positives": each sum / the batch's positive priors (averaged over DDP ranks, at least 1), as
               detlab's other dense detectors; "images": each sum / the batch's images, darknet's (its loss sums
               over each image's priors and its update divides the learning rate by the batch; mmdetection's
               yolov3_d53 sums over the batch, the same up to the constant batch size).
    """

    uses_objectness = True  # the builder pairs it with a head that predicts one (YoloHead)

    def __init__(
        self,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        box_coder: BoxCoder,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        normalize: str = "positives",
    ) -> None:
        super().__init__()
        if normalize not in ("positives", "images"):
            raise ConfigError(
                f"model.criterion.normalize={normalize!r}: use 'positives' (the batch's positive priors) or 'images' "
                "(the batch's images, darknet's)"
            )
        check_non_negative("model.criterion", obj_weight=obj_weight, cls_weight=cls_weight, box_weight=box_weight)
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.box_coder = box_coder
        self.obj_weight = obj_weight
        self.cls_weight = cls_weight
        self.box_weight = box_weight
        self.normalize = normalize

    def extra_repr(self) -> str:
        return (
            f"obj_weight={self.obj_weight}, cls_weight={self.cls_weight}, box_weight={self.box_weight}, "
            f"normalize={self.normalize}"
        )

    def forward(self, outputs: HeadOutput, priors: Priors, matched_gt: Tensor, batch: Batch) -> dict[str, Tensor]:
        """matched_gt [B, A]: gt index into the padded targets, -1 background, -2 ignored (see assigners)."""
        _check_inputs(outputs, priors, matched_gt)
        positive = matched_gt >= 0  # [B, A]
        if self.normalize == "positives":
            normaliser = loss_normaliser(positive)
        else:  # every rank has its own images: the gradient's mean over ranks is the mean over all images
            normaliser = torch.tensor(float(len(positive)), device=positive.device)
        # Objectness as a one-class problem: class 0 for positives, -1 background and -2 ignored kept as they are.
        obj_labels = torch.where(positive, 0, matched_gt)
        obj = self.cls_loss(outputs.objectness[..., None], obj_labels)

        gt_index = matched_gt[positive]  # [N]
        image_index = positive.nonzero()[:, 0]  # [N], in the same (row-major) order as the boolean mask
        gt_labels = batch.gt_labels[image_index, gt_index]
        cls = self.cls_loss(outputs.cls_logits[positive][None], gt_labels[None])

        strides = priors.strides.expand_as(positive)[positive]  # [N]
        prior_boxes = priors.boxes.expand_as(outputs.box_reg)[positive]  # [N, 4]
        gt_boxes = batch.gt_boxes[image_index, gt_index]  # [N, 4]
        box = self.box_loss(outputs.box_reg[positive], prior_boxes, gt_boxes, self.box_coder, strides)
        return {
            "obj": self.obj_weight * obj / normaliser,
            "cls": self.cls_weight * cls / normaliser,
            "box": self.box_weight * box / normaliser,
        }


class YoloXYWHLoss(nn.Module):
    """YOLOv3's own box terms: binary cross-entropy between the predicted and the target centre offsets inside
    the cell, plus the squared error of the log size ratios tw, th, summed over N.

    The targets come from the coder (YoloBoxCoder: logit offsets, whose sigmoid is the offset in [0, 1]).
    darknet also weights each box by 2 - w * h (w, h as fractions of the image) to favour small boxes; that
    needs the image size, which the box-loss interface does not carry, so it is left out.
    """

    def forward(
        self, box_reg: Tensor, priors: Tensor, gt_boxes: Tensor, coder: BoxCoder, strides: Tensor | None = None
    ) -> Tensor:
        """Sum over predictions box_reg [N, 4] against gt_boxes [N, 4] (xyxy) on priors [N, 4] of strides [N]."""
        box_reg = box_reg.float()
        targets = coder.encode(gt_boxes, priors, strides)
        xy = F.binary_cross_entropy_with_logits(box_reg[:, :2], targets[:, :2].sigmoid(), reduction="sum")
        return xy + (box_reg[:, 2:] - targets[:, 2:]).square().sum()


def _check_inputs(outputs: HeadOutput, priors: Priors, matched_gt: Tensor) -> None:
    """Shapes the loss relies on, checked up front so that a mismatch names the field."""
    expected = tuple(outputs.cls_logits.shape[:2])
    if outputs.objectness is None:
        raise ConfigError("YoloLoss needs HeadOutput.objectness [B, A]: use it with model.head=yolo")
    shapes = (tuple(matched_gt.shape), tuple(outputs.objectness.shape), tuple(outputs.box_reg.shape))
    if shapes != (expected, expected, (*expected, 4)):
        raise ValueError(
            f"loss expects matched_gt [B, A], HeadOutput.objectness [B, A] and box_reg [B, A, 4] with B, A = "
            f"{list(expected)} from cls_logits; got {[list(s) for s in shapes]}"
        )
    if priors.boxes.shape != (expected[1], 4):
        raise ValueError(
            f"Priors.boxes must be [A, 4] with A = {expected[1]} (the head's priors), got {list(priors.boxes.shape)}"
        )
