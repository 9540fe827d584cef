"""Binary cross-entropy over K sigmoid outputs: each class is an independent yes/no, background is all "no"."""

from __future__ import annotations

from torch import Tensor, nn

from detlab.losses.focal import sigmoid_focal_loss_sum


class BinaryCrossEntropy(nn.Module):
    """Sum of the binary cross-entropy over the classes of every non-ignored prior (the caller normalises)."""

    def num_outputs(self, num_classes: int) -> int:
        """Sigmoid losses want one logit per class, no background logit."""
        return num_classes

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        """Scalar loss from cls_logits [B, A, C] and target_labels [B, A] (-1 background, -2 ignored)."""
        # The focal loss at gamma 0 without alpha is BCE exactly; its pass builds no one-hot targets.
        return sigmoid_focal_loss_sum(cls_logits, target_labels, alpha=-1.0, gamma=0.0)
