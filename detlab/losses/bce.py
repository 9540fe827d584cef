"""Binary cross-entropy over K sigmoid outputs: each class is an independent yes/no, background is all "no".

Also home of the one-hot targets every sigmoid classification loss builds from ``target_labels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.structures import IGNORED


def sigmoid_targets(cls_logits: Tensor, target_labels: Tensor) -> tuple[Tensor, Tensor]:
    """One-hot targets [B, A, C] float32 (all zeros for background and ignored priors) and keep [B, A, 1] bool.

    cls_logits [B, A, C]; target_labels [B, A] int64: 0..C-1 object, -1 background, -2 ignored.
    """
    if cls_logits.dim() != 3 or target_labels.shape != cls_logits.shape[:2]:
        raise ValueError(
            f"classification loss expects cls_logits [B, A, C] and target_labels [B, A], "
            f"got {list(cls_logits.shape)} and {list(target_labels.shape)}"
        )
    classes = torch.arange(cls_logits.shape[-1], device=cls_logits.device)
    targets = (target_labels[..., None] == classes).float()
    return targets, (target_labels != IGNORED)[..., None]


class BinaryCrossEntropy(nn.Module):
    """Sum of the binary cross-entropy over the classes of every non-ignored prior (the caller normalises)."""

    def num_outputs(self, num_classes: int) -> int:
        """Sigmoid losses want one logit per class, no background logit."""
        return num_classes

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        """Scalar loss from cls_logits [B, A, C] and target_labels [B, A] (-1 background, -2 ignored)."""
        targets, keep = sigmoid_targets(cls_logits, target_labels)
        loss = F.binary_cross_entropy_with_logits(cls_logits.float(), targets, reduction="none")
        return torch.where(keep, loss, 0.0).sum()
