"""The optimizer and its schedule (conf/optim): parameter groups, and warm-up then cosine or step decay.

`configure_optimizer(optim_cfg, module, total_steps)` is what DetectionModule.configure_optimizers returns:
`optim.optimizer` (a partial torch.optim class) over `param_groups(module, optim_cfg)`, and `optim.scheduler` (a partial
of `warmup_schedule`, or any callable `(optimizer, total_steps) -> LRScheduler`) stepped every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from detlab.errors import ConfigError, check_count


def param_groups(module: nn.Module, optim_cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: weights (conv and linear kernels, ndim > 1) with the optimizer's
    weight decay, and norms and biases (ndim <= 1) without: decaying them only hurts (as in timm and detectron2).
    optim.decay_norms_and_biases=true: one group, every parameter decayed, as torchvision's detection references
    train (their norm_weight_decay is None)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    if optim_cfg.get("decay_norms_and_biases", False):
        return [{"params": trainable}]
    return [{"params": [p for p in trainable if p.ndim > 1]},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]


def configure_optimizer(
    optim_cfg: DictConfig, module: nn.Module, total_steps: int, clips_mixed_precision: bool = False
) -> dict[str, Any]:
    """Lightning's optimizer dict: the optimizer over param_groups(module, optim_cfg), its schedule stepped every step.

    clips_mixed_precision: the trainer clips gradients (trainer.gradient_clip_val) under mixed precision (16-mixed,
    bf16-mixed). Lightning refuses to clip a fused optimizer's gradients there (a fused step unscales them itself,
    after any clipping), at the first step; `optim.optimizer.fused` is then set aside: the same update with
    torch's default kernels (foreach on CUDA), only slower.
    """
    optimizer_class = instantiate(optim_cfg.optimizer)
    if clips_mixed_precision and optim_cfg.optimizer.get("fused"):
        optimizer_class = partial(optimizer_class, fused=False)
    optimizer = optimizer_class(param_groups(module, optim_cfg))
    scheduler = instantiate(optim_cfg.scheduler)(optimizer, total_steps=max(1, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, **schedule: Any
) -> torch.optim.lr_scheduler.LambdaLR:
    """The base lr times lr_factor(total_steps, **schedule) at each step (conf/optim's `scheduler` keys)."""
    return RunLengthSchedule(optimizer, lr_factor(total_steps, **schedule))


class RunLengthSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose restored state (a resume) puts the lr of the restored step under this run's schedule into
    the optimizer. Lightning restores the optimizer first, with the lr the checkpoint's run set for that step: a
    resume with more epochs (another total_steps) took its first step at the old schedule's lr (0 at a cosine's
    end) and only the next at the new one's."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        lrs = [base_lr * factor(self.last_epoch) for base_lr, factor in zip(self.base_lrs, self.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def lr_factor(
    total_steps: int,
    name: str = "cosine",
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    milestones: Sequence[float] = (0.67, 0.89),
    gamma: float = 0.1,
):
    """Multiplier of the base lr at each step: linear warm-up from warmup_factor, then cosine or step decay.

    milestones are fractions of total_steps (so a schedule reads the same at any run length).
    """
    if name not in ("cosine", "step"):
        raise ConfigError(f"optim.scheduler.name={name!r} is not a schedule; use 'cosine' or 'step'")
    # each would train with a negative or growing learning rate, or decay at a step that never comes
    check_count("optim.scheduler", warmup_steps=warmup_steps)
    if not 0 <= warmup_factor <= 1:
        raise ConfigError(f"optim.scheduler.warmup_factor={warmup_factor} must be in [0, 1]: the warm-up's first "
                          "lr as a fraction of optim.optimizer.lr")
    if not 0 < gamma <= 1:
        raise ConfigError(f"optim.scheduler.gamma={gamma} must be in (0, 1]: the step schedule's decay per milestone")
    if list(milestones) != sorted(milestones) or not all(0 < m <= 1 for m in milestones):
        raise ConfigError(f"optim.scheduler.milestones={list(milestones)} must be increasing fractions of the run, "
                          "each in (0, 1]")
    warmup_steps = min(warmup_steps, total_steps // 2)  # a run shorter than twice the warm-up warms up for half
    steps_at = [int(m * total_steps) for m in milestones]

    def factor(step: int) -> float:
        if step < warmup_steps:
            alpha = step / warmup_steps
            return warmup_factor * (1 - alpha) + alpha
        if name == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return gamma ** sum(step >= s for s in steps_at)

    return factor
