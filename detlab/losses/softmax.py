"""Softmax classification losses over K + 1 outputs, column 0 being the background class.

Cross-entropy, cross-entropy with SSD's hard negative mining (all positives, and per image the
`neg_pos_ratio` x #positives background priors with the highest loss), and the softmax focal loss.
Same interface as the sigmoid losses: forward(cls_logits [B, A, K+1], target_labels [B, A]) -> sum over
non-ignored priors; target_labels are 0..K-1 for objects, -1 background, -2 ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError
from detlab.losses.focal import focal_parameters
from detlab.structures import IGNORED


def softmax_targets(cls_logits: Tensor, target_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Class index targets [B, A] in 0..K (0 = background) and keep [B, A] bool (False for ignored priors)."""
    if cls_logits.dim() != 3 or target_labels.shape != cls_logits.shape[:2]:
        raise ValueError(
            f"classification loss expects cls_logits [B, A, C] and target_labels [B, A], "
            f"got {list(cls_logits.shape)} and {list(target_labels.shape)}"
        )
    keep = target_labels != IGNORED
    return (target_labels + 1).clamp(min=0), keep


def _per_prior_ce(cls_logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of every prior [B, A], in float32."""
    return F.cross_entropy(cls_logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


class SoftmaxCrossEntropy(nn.Module):
    """Plain softmax cross-entropy summed over every non-ignored prior."""

    def num_outputs(self, num_classes: int) -> int:
        """Softmax losses want a background logit (index 0) besides the K class logits."""
        return num_classes + 1

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        targets, keep = softmax_targets(cls_logits, target_labels)
        return torch.where(keep, _per_prior_ce(cls_logits, targets), 0.0).sum()


class HardNegativeMiningCE(SoftmaxCrossEntropy):
    """SSD's loss: CE over all positives and, per image, the neg_pos_ratio x #positives hardest negatives.

    Batched: one topk over the background losses of the whole batch, then a rank < quota mask per image
    (instead of torchvision's two sorts per image). Only the ranking needs every prior's loss, and it needs no
    gradient: the loss that is differentiated is the CE of the chosen priors alone (about 4 x #positives rows,
    not B x A), so the backward pass skips the log-softmax of every other prior.
    """

    def __init__(self, neg_pos_ratio: float = 3.0):
        super().__init__()
        if neg_pos_ratio <= 0:
            raise ConfigError(f"loss.neg_pos_ratio must be > 0, got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio

    def extra_repr(self) -> str:
        return f"neg_pos_ratio={self.neg_pos_ratio}"

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        targets, keep = softmax_targets(cls_logits, target_labels)
        positive = targets > 0
        negative = keep & ~positive
        quota = (positive.sum(1) * self.neg_pos_ratio).long().clamp(max=negative.sum(1))  # [B]
        kmax = int(quota.max())
        chosen = positive
        if kmax > 0:
            with torch.no_grad():
                # CE >= 0, so non-negatives rank last
                neg_loss = torch.where(negative, _per_prior_ce(cls_logits, targets), -1.0)
            hardest = neg_loss.topk(kmax, dim=1).indices  # [B, kmax]
            ranks = torch.arange(kmax, device=cls_logits.device)
            mined = torch.zeros_like(negative).scatter_(1, hardest, ranks[None] < quota[:, None])
            chosen = positive | (mined & negative)
        # Row by row the same CE as the ranking's; summed positives first, then negatives, each in prior order.
        loss = _per_prior_ce(cls_logits[chosen][None], targets[chosen][None])[0]  # [#chosen]
        is_positive = positive[chosen]
        return loss[is_positive].sum() + loss[~is_positive].sum()


class SoftmaxFocalLoss(SoftmaxCrossEntropy):
    """Multi-class focal loss: -alpha_t (1 - p_t)^gamma log(p_t) with p_t the softmax probability of the target.

    alpha weights object priors, 1 - alpha background priors; a negative alpha disables the weighting.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = focal_parameters(alpha, gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        targets, keep = softmax_targets(cls_logits, target_labels)
        ce = _per_prior_ce(cls_logits, targets)
        miss = -torch.expm1(-ce)  # 1 - p_t with p_t = exp(-CE), exact near p_t = 1
        # A certain prior (CE 0 in float32: a logit margin above ~17) has 1 - p_t = 0, where x^gamma's derivative
        # is infinite for gamma < 1: 0 * inf would make every logit's gradient NaN, ignored priors' too. The
        # loss and its gradient tend to 0 there, which the masked power gives.
        certain = miss == 0
        loss = ce * torch.where(certain, 0.0 if self.gamma else 1.0, miss.masked_fill(certain, 1.0) ** self.gamma)
        if self.alpha >= 0:
            loss = loss * torch.where(targets > 0, self.alpha, 1 - self.alpha)
        return torch.where(keep, loss, 0.0).sum()
