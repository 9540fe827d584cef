"""Sigmoid focal loss (Lin et al. 2017): binary CE scaled down on easy examples by (1 - p_t)^gamma and
balanced by alpha_t. gamma=0 and alpha<0 give plain binary CE.

The loss and its gradient are computed together in one pass over the logits (``sigmoid_focal_loss_sum``), in
closed form: with the signed logit s (x for a 0 target, -x for a 1 target), q = sigmoid(s) = 1 - p_t and
BCE = softplus(s),

    FL = a_t q^gamma softplus(s),    dFL/ds = a_t q^gamma (gamma (1 - q) softplus(s) + q),    dFL/dx = ±dFL/ds.

Autograd would instead keep about ten [B, A, C] intermediates alive until the backward (RetinaNet at 512 px,
batch 8: 31 M logits, 126 MB each), each of them a fresh allocation that the CPU allocator maps and zero-fills
page by page. All but a few (prior, class) pairs are negatives, so the pass treats every entry as a negative and
corrects the positive pairs afterwards, without building one-hot targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError
from detlab.structures import IGNORED

# Entries of the logits per pass on the CPU, so that the pass's few [rows, C] temporaries (1 MB each) are reused
# rather than mapped afresh. RetinaNet's focal loss + backward at 512 px, batch 8 (31 M logits), 1 thread, on
# the shared machine at load 8: 6.3 s in one pass over the whole tensor, 5.1 s in chunks of 2^18, 5.0 s of
# 2^16, 7.4 s of 2^14 (Python's overhead per chunk); torchvision's per-image sigmoid_focal_loss 25-33 s.
# On a GPU one pass over everything is one set of kernel launches: no chunks there.
CPU_CHUNK = 2**18


def focal_parameters(alpha: float, gamma: float) -> tuple[float, float]:
    """(alpha, gamma) of a focal loss, sigmoid or softmax, checked: alpha <= 1 (negative disables it), gamma >= 0."""
    if alpha > 1:
        raise ConfigError(f"loss.alpha must be in [0, 1], or negative to disable it; got {alpha}")
    if gamma < 0:
        raise ConfigError(f"loss.gamma must be >= 0, got {gamma}")
    return alpha, gamma


class SigmoidFocalLoss(nn.Module):
    """FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), summed over the classes of every non-ignored prior.

    alpha: weight of the positives in [0, 1] (negatives get 1 - alpha); a negative value disables it, as
           torchvision's alpha=-1.
    gamma: focusing exponent >= 0.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = focal_parameters(alpha, gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def num_outputs(self, num_classes: int) -> int:
        """Sigmoid losses want one logit per class, no background logit."""
        return num_classes

    def forward(self, cls_logits: Tensor, target_labels: Tensor) -> Tensor:
        """Scalar loss from cls_logits [B, A, C] and target_labels [B, A] (-1 background, -2 ignored)."""
        return sigmoid_focal_loss_sum(cls_logits, target_labels, self.alpha, self.gamma)


def sigmoid_focal_loss_sum(cls_logits: Tensor, target_labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sum of the focal loss [] float32 over the classes of every non-ignored prior: cls_logits [B, A, C] (any
    float dtype), target_labels [B, A] int64 (0..C-1 object, -1 background, -2 ignored). Differentiable in
    cls_logits (the gradient has its dtype). alpha < 0: no alpha weighting."""
    if cls_logits.dim() != 3 or target_labels.shape != cls_logits.shape[:2]:
        raise ValueError(
            f"classification loss expects cls_logits [B, A, C] and target_labels [B, A], "
            f"got {list(cls_logits.shape)} and {list(target_labels.shape)}"
        )
    return _FocalLossSum.apply(cls_logits, target_labels, float(alpha), float(gamma))


class _FocalLossSum(torch.autograd.Function):
    """sigmoid_focal_loss_sum with its gradient computed in the forward pass and kept for the backward."""

    @staticmethod
    def forward(ctx, cls_logits: Tensor, target_labels: Tensor, alpha: float, gamma: float) -> Tensor:
        logits = cls_logits.reshape(-1, cls_logits.shape[-1])  # [N, C]
        labels = target_labels.reshape(-1)  # [N]
        keep = labels != IGNORED  # ignored priors: no loss, no gradient
        negative_weight, positive_weight = (1 - alpha, alpha) if alpha >= 0 else (1.0, 1.0)
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.empty(logits.shape, dtype=torch.float32, device=logits.device) if needs_grad else None
        row_loss = torch.empty(len(logits), dtype=torch.float32, device=logits.device)
        rows = len(logits) if logits.device.type != "cpu" else max(1, CPU_CHUNK // max(1, logits.shape[1]))
        # A loop over cache-sized blocks of rows (not over images): each block's temporaries stay in the cache.
        for start in range(0, len(logits), rows):
            block = slice(start, start + rows)
            loss, block_grad = _negative_terms(logits[block].float(), gamma, needs_grad)
            row_loss[block] = loss.sum(1)
            if needs_grad:
                grad[block] = block_grad
        total = (row_loss * keep).sum() * negative_weight
        # The positive (prior, class) pairs: replace their negative terms by their positive ones.
        prior = (labels >= 0).nonzero()[:, 0]  # [P]
        cls = labels[prior]
        x = logits[prior, cls].float()  # [P]
        as_negative, _ = _negative_terms(x, gamma, False)
        as_positive, positive_grad = _negative_terms(-x, gamma, needs_grad)  # s = -x for a 1 target
        total = total + positive_weight * as_positive.sum() - negative_weight * as_negative.sum()
        if needs_grad:
            grad.mul_(keep[:, None] * negative_weight)
            grad[prior, cls] = -positive_weight * positive_grad  # dFL/dx = -dFL/ds
            ctx.save_for_backward(grad)
            ctx.shape, ctx.dtype = cls_logits.shape, cls_logits.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.dtype).view(ctx.shape), None, None, None


def _negative_terms(s: Tensor, gamma: float, needs_grad: bool) -> tuple[Tensor, Tensor | None]:
    """q^gamma softplus(s) and, if needs_grad, its derivative q^gamma (gamma (1 - q) softplus(s) + q) in s, with
    q = sigmoid(s): the unweighted focal loss of signed logits s [...] (each [...] float32)."""
    q = torch.sigmoid(s)
    bce = F.softplus(s)
    if gamma == 0:  # plain BCE (loss=bce): d softplus(s) / ds = q
        return bce, q if needs_grad else None
    focus = q.square() if gamma == 2 else q.pow(gamma)  # the default, without pow's general path
    loss = bce * focus
    if not needs_grad:
        return loss, None
    return loss, (1 - q).mul_(bce).mul_(gamma).add_(q).mul_(focus)
