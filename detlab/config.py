"""Checks on a composed config that Hydra's own checks cannot make, run before any work starts.

Hydra already rejects a misspelt key (`Key 'imag_size' is not in struct`) and an unknown group option
(listing the available ones). What is left are combinations: each check names the key and the fix.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from detlab.evaluation.backends import BACKENDS


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what would be valid."""


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first impossible setting or combination in cfg."""
    _check_positive(cfg, "data.image_size", "data.batch_size", "trainer.max_epochs")
    if cfg.eval.backend not in BACKENDS:
        raise ConfigError(f"eval.backend={cfg.eval.backend!r} is not an evaluator; use one of {BACKENDS}")
    _check_levels(cfg.model)
    _check_trainer(cfg.trainer)


def _check_positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if not isinstance(node, int) or node <= 0:
            raise ConfigError(f"{key}={node!r} must be a positive integer")


def _check_levels(model: DictConfig) -> None:
    """One anchor size per pyramid level: the neck's levels are the backbone's outputs plus extra levels."""
    if "priors" not in model or "sizes" not in model.priors or "neck" not in model:
        return
    levels = len(model.backbone.out_indices) + model.neck.get("num_extra_levels", 0)
    if len(model.priors.sizes) != levels:
        raise ConfigError(
            f"model.priors.sizes has {len(model.priors.sizes)} sizes but the neck makes {levels} levels "
            f"(model.backbone.out_indices={list(model.backbone.out_indices)} plus "
            f"model.neck.num_extra_levels={model.neck.get('num_extra_levels', 0)}); give one size per level"
        )


def _check_trainer(trainer: DictConfig) -> None:
    if trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} but no CUDA device is visible; use trainer=cpu "
            "(or trainer=ddp trainer.accelerator=cpu for several CPU processes)"
        )
    on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and trainer.get("sync_batchnorm"):
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm); set it to false on CPU")
    if on_cpu and str(trainer.precision).startswith("16"):
        raise ConfigError(
            f"trainer.precision={trainer.precision} needs a GPU; on CPU use 32-true or bf16-mixed"
        )
