"""Box regression losses over the positive priors, each summed over N (the criterion normalises).

Smooth L1 and L1 compare deltas (the targets encoded by the box coder); GIoU compares boxes (the predictions
decoded by the same coder), so a coder's weights matter to the first two only.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from detlab.errors import ConfigError
from detlab.structures import BoxCoder


class SmoothL1Loss(nn.Module):
    """Huber-like loss on deltas: quadratic below ``beta``, linear above (beta=0 is L1)."""

    def __init__(self, beta: float = 1 / 9):
        super().__init__()
        if beta < 0:
            raise ConfigError(f"box_loss.beta must be >= 0, got {beta}")
        self.beta = beta

    def extra_repr(self) -> str:
        return f"beta={self.beta:.4f}"

    def forward(
        self, box_reg: Tensor, priors: Tensor, gt_boxes: Tensor, coder: BoxCoder, strides: Tensor | None = None
    ) -> Tensor:
        """Sum over predicted deltas box_reg [N, 4] against gt_boxes [N, 4] encoded on priors [N, 4] of strides [N]."""
        targets = coder.encode(gt_boxes, priors, strides)
        return F.smooth_l1_loss(box_reg.float(), targets, beta=self.beta, reduction="sum")


class L1Loss(nn.Module):
    """Absolute difference of deltas."""

    def forward(
        self, box_reg: Tensor, priors: Tensor, gt_boxes: Tensor, coder: BoxCoder, strides: Tensor | None = None
    ) -> Tensor:
        """Sum over predicted deltas box_reg [N, 4] against gt_boxes [N, 4] encoded on priors [N, 4] of strides [N]."""
        return F.l1_loss(box_reg.float(), coder.encode(gt_boxes, priors, strides), reduction="sum")


class GIoULoss(nn.Module):
    """1 - generalised IoU between the decoded predictions and the gt boxes (Rezatofighi et al. 2019)."""

    def forward(
        self, box_reg: Tensor, priors: Tensor, gt_boxes: Tensor, coder: BoxCoder, strides: Tensor | None = None
    ) -> Tensor:
        """Sum over the boxes decoded from box_reg [N, 4] on priors [N, 4] of strides [N] against gt_boxes [N, 4]."""
        return generalized_box_iou_loss(coder.decode(box_reg, priors, strides), gt_boxes.float(), reduction="sum")
