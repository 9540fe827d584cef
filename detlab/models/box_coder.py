"""The (dx, dy, dw, dh) box coder of Faster R-CNN and RetinaNet (torchvision's BoxCoder, over any leading dims).

One instance feeds both the loss (encode the targets) and the post-processing (decode the predictions), so
the two cannot disagree. The coder is pure: no parameters, no state beyond its hyper-parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _centre_size(boxes_xyxy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centre x, centre y, width, height of boxes [..., 4], each [...]."""
    widths = boxes_xyxy[..., 2] - boxes_xyxy[..., 0]
    heights = boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
    return boxes_xyxy[..., 0] + 0.5 * widths, boxes_xyxy[..., 1] + 0.5 * heights, widths, heights


class DeltaXYWHBoxCoder:
    """Encode boxes as centre offsets scaled by the prior's size and log size ratios, times ``weights``.

    weights: (wx, wy, ww, wh) multiply the four deltas (Faster R-CNN's RoI head uses (10, 10, 5, 5)).
    clamp:   upper bound on the decoded dw, dh, so that exp() cannot overflow on a wild prediction.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000 / 16)):
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or min(weights) <= 0:
            raise ValueError(f"box_coder.weights must be 4 positive numbers (wx, wy, ww, wh), got {list(weights)}")
        if not clamp > 0:
            raise ValueError(f"box_coder.clamp must be > 0, got {clamp}")
        self.weights = weights
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, clamp={self.clamp:.4f})"

    def encode(self, gt_boxes: Tensor, priors: Tensor) -> Tensor:
        """Deltas [..., 4] that take ``priors`` [..., 4] to ``gt_boxes`` [..., 4] (xyxy; leading dims broadcast)."""
        wx, wy, ww, wh = self.weights
        gx, gy, gw, gh = _centre_size(gt_boxes.float())
        px, py, pw, ph = _centre_size(priors.float())
        dx = wx * (gx - px) / pw
        dy = wy * (gy - py) / ph
        dw = ww * torch.log(gw / pw)
        dh = wh * torch.log(gh / ph)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, priors: Tensor) -> Tensor:
        """Boxes [..., 4] xyxy from ``deltas`` [..., 4] applied to ``priors`` [..., 4] (leading dims broadcast)."""
        wx, wy, ww, wh = self.weights
        deltas = deltas.float()
        px, py, pw, ph = _centre_size(priors.float())
        cx = deltas[..., 0] / wx * pw + px
        cy = deltas[..., 1] / wy * ph + py
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * pw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * ph
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
