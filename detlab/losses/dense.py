"""The criterion of dense detectors: a classification loss over all non-ignored priors plus a box loss over
the positive ones, both divided by the number of positives: the batch's (averaged over DDP ranks, at least 1;
Detectron's and mmdetection's RetinaNet, torchvision's SSD) or each image's (at least 1, then the mean over the
images; torchvision's RetinaNet).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative
from detlab.structures import Batch, BoxCoder, HeadOutput, Priors


class DenseDetectionLoss(nn.Module):
    """Named loss terms {"cls", "box"} of a dense head, already weighted; the total is their sum.

    cls_loss:  a classification loss (``forward(cls_logits [B, A, C], target_labels [B, A])`` -> sum).
    box_loss:  a box loss (``forward(box_reg [N, 4], priors [N, 4], gt_boxes [N, 4], coder, strides [N])`` -> sum).
    box_coder: the coder shared with the post-processing.
    normalize: "batch": each term's sum over the batch / the batch's positives; "image": each image's sum / its
               own positives, then the mean over the images. They agree when every image has as many positives;
               per image, the priors of an image with few positives weigh more.
    """

    uses_objectness = False  # the builder pairs it with heads without one (RetinaNet's, SSD's)

    def __init__(self, cls_loss: nn.Module, box_loss: nn.Module, box_coder: BoxCoder, box_weight: float = 1.0,
                 normalize: str = "batch"):
        super().__init__()
        if normalize not in ("batch", "image"):
            raise ConfigError(f"model.criterion.normalize={normalize!r}: use 'batch' (the batch's positives) or "
                              f"'image' (each image's positives, then the mean over the images)")
        check_non_negative("model.criterion", box_weight=box_weight)
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.box_coder = box_coder
        self.box_weight = box_weight
        self.normalize = normalize

    def forward(self, outputs: HeadOutput, priors: Priors, matched_gt: Tensor, batch: Batch) -> dict[str, Tensor]:
        """matched_gt [B, A]: gt index into the padded targets, -1 background, -2 ignored (see assigners)."""
        _check_inputs(outputs, priors, matched_gt)
        positive = matched_gt >= 0  # [B, A]
        gt_index = matched_gt.clamp(min=0)
        # One gather per target tensor; background/ignored priors gather gt 0 and are masked out below.
        gt_boxes = batch.gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # [B, A, 4]
        gt_labels = batch.gt_labels.gather(1, gt_index)  # [B, A]
        target_labels = torch.where(positive, gt_labels, matched_gt)  # keeps -1 background, -2 ignored

        prior_boxes = priors.boxes.expand_as(outputs.box_reg)  # [B, A, 4] view
        strides = priors.strides.expand_as(positive)  # [B, A]
        if self.normalize == "batch":
            normaliser = loss_normaliser(positive)
            cls = self.cls_loss(outputs.cls_logits, target_labels) / normaliser
            box = self.box_loss(outputs.box_reg[positive], prior_boxes[positive], gt_boxes[positive], self.box_coder,
                                strides[positive])
            return {"cls": cls, "box": self.box_weight * box / normaliser}
        # Per image: one call per image, because every classification and box loss returns one sum over what it is
        # given (the contract the batch path and DDP's normaliser rest on). Batching this path would need per-image
        # sums from every loss; it runs only for normalize=image (the torchvision preset), with B small.
        cls, box = [], []
        for i, pos in enumerate(positive):
            normaliser = pos.sum().clamp(min=1).float()
            cls.append(self.cls_loss(outputs.cls_logits[i : i + 1], target_labels[i : i + 1]) / normaliser)
            box.append(self.box_loss(outputs.box_reg[i][pos], prior_boxes[i][pos], gt_boxes[i][pos], self.box_coder,
                                     strides[i][pos]) / normaliser)
        return {"cls": torch.stack(cls).mean(), "box": self.box_weight * torch.stack(box).mean()}


def loss_normaliser(counted: Tensor) -> Tensor:
    """Number of True entries of a mask (the positive priors here; the sampled anchors and RoIs of Faster R-CNN)
    [] float32, averaged over DDP ranks (so every rank divides by the same number and the gradient is the mean
    over ranks of equally normalised losses), at least 1."""
    count = counted.sum().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def _check_inputs(outputs: HeadOutput, priors: Priors, matched_gt: Tensor) -> None:
    """Shapes the loss relies on, checked up front so that a mismatch names the field."""
    expected = tuple(outputs.cls_logits.shape[:2])
    if tuple(matched_gt.shape) != expected or tuple(outputs.box_reg.shape) != (*expected, 4):
        raise ValueError(
            f"loss expects HeadOutput.cls_logits [B, A, C], HeadOutput.box_reg [B, A, 4] and matched_gt [B, A] "
            f"with the same B, A; got {list(outputs.cls_logits.shape)}, {list(outputs.box_reg.shape)}, "
            f"{list(matched_gt.shape)}"
        )
    if priors.boxes.shape != (expected[1], 4):
        raise ValueError(
            f"Priors.boxes must be [A, 4] with A = {expected[1]} (the head's priors), got {list(priors.boxes.shape)}"
        )
