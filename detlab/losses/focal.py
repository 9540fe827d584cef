"""Sigmoid focal loss (Lin et al. 2017): binary CE scaled down on easy examples by (1 - p_t)^gamma and
balanced by alpha_t. gamma=0 and alpha<0 give plain binary CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.losses.bce import sigmoid_targets


class SigmoidFocalLoss(nn.Module):
    """FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), summed over the classes of every non-ignored prior.

    alpha: weight of the positives in [0, 1] (negatives get 1 - alpha); a negative value disables it, as
           torchvision's alpha=-1.
    gamma: focusing exponent >= 0.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if alpha > 1:
            raise ValueError(f"loss.alpha must be in [0, 1], or negative to disable it; got {alpha}")
        if gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}")
        self.alpha = alpha
        self.gamma = gamma

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def num_outputs(self, num_classes: int) -> int:
        """Sigmoid losses want one logit per class, no background logit."""
        return num_classes

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        """Scalar loss from cls_logits [B, A, C] and target_labels [B, A] (-1 background, -2 ignored)."""
        targets, keep = sigmoid_targets(cls_logits, target_labels)
        logits = cls_logits.float()
        positive = targets > 0
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if self.gamma != 0:
            # 1 - p_t as a sigmoid of the signed logit keeps its precision where p_t is close to 1,
            # which 1 - sigmoid(x) would round to 0.
            one_minus_pt = torch.sigmoid(torch.where(positive, -logits, logits))
            loss = loss * one_minus_pt**self.gamma
        if self.alpha >= 0:
            loss = loss * torch.where(positive, self.alpha, 1 - self.alpha)
        return torch.where(keep, loss, 0.0).sum()
