"""An exponential moving average of the weights (EMA), as YOLOv5, YOLOX and mmdetection's EMAHook train.

Lightning's WeightAveraging callback keeps the average: it validates and checkpoints the averaged weights
(keeping the current ones in the checkpoint too, so that a resumed run continues both) and leaves the average
in the module when training ends. The parameters and the BN statistics are averaged alike.
"""

from __future__ import annotations

import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor

from detlab.errors import ConfigError


class EMA(WeightAveraging):
    """After each optimizer step: average = d * average + (1 - d) * weights, d = min(decay, (1 + n) / (10 + n))
    after n updates (TensorFlow's ExponentialMovingAverage warm-up: the first updates follow the weights closely
    instead of keeping the random initialisation in the average for thousands of steps)."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in (0, 1), e.g. 0.999")
        super().__init__(use_buffers=True, multi_avg_fn=ema_update(decay))


def ema_update(decay: float):
    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):  # integer buffers (BN's num_batches_tracked): counts
            torch._foreach_copy_(averaged, current)
            return
        # d as a tensor on the weights' device: no host sync in the training step
        n = num_averaged.to(averaged[0].dtype)
        d = ((1 + n) / (10 + n)).clamp(max=decay)
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update
