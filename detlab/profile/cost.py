"""What a detector costs: parameters and FLOPs.

FLOPs come from torch's own counter (torch.utils.flop_counter), which counts a multiply-add as 2 FLOPs;
model zoos that print "GFLOPS" for multiply-adds (torchvision's ResNet-50: 4.09) report half of ours.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of model(images) for one image of image_size x image_size, on the model's device."""
    ref = next(model.parameters())
    images = torch.zeros(1, 3, image_size, image_size, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()  # BatchNorm in eval mode: one image must not update running statistics
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def complexity(model: nn.Module, image_size: int) -> dict[str, float | int]:
    """{"params": int, "gflops": float, "input_size": int} for results.json and the logger."""
    return {"params": count_params(model), "gflops": count_flops(model, image_size) / 1e9, "input_size": image_size}


def format_complexity(cost: dict[str, float | int]) -> str:
    """One line: "model: 11.86 M parameters, 2.10 GFLOPs at 160x160"."""
    return (f"model: {cost['params'] / 1e6:.2f} M parameters, {cost['gflops']:.2f} GFLOPs at "
            f"{cost['input_size']}x{cost['input_size']}")
