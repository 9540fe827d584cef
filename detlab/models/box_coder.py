"""Box coders: the (dx, dy, dw, dh) deltas of Faster R-CNN, RetinaNet and SSD (torchvision's BoxCoder, over any
leading dims) and YOLOv3's grid-cell offsets.

Every coder has the one signature of ``detlab.structures.BoxCoder``: ``encode(gt_boxes, priors, strides)`` and
``decode(box_reg, priors, strides)``, with the prior boxes and the stride of the level each prior sits on. One
instance feeds both the loss (encode the targets) and the post-processing (decode the predictions), so the two
cannot disagree. A coder is pure: no parameters, no state beyond its hyper-parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detlab.errors import ConfigError


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
            raise ConfigError(f"box_coder.weights must be 4 positive numbers (wx, wy, ww, wh), got {list(weights)}")
        if not clamp > 0:
            raise ConfigError(f"box_coder.clamp must be > 0, got {clamp}")
        self.weights = weights
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, clamp={self.clamp:.4f})"

    def encode(self, gt_boxes: Tensor, priors: Tensor, strides: Tensor | None = None) -> Tensor:
        """Deltas [..., 4] that take ``priors`` [..., 4] to ``gt_boxes`` [..., 4] (xyxy; leading dims broadcast).
        The deltas are relative to the prior's size: ``strides`` plays no part."""
        wx, wy, ww, wh = self.weights
        gx, gy, gw, gh = _centre_size(gt_boxes.float())
        px, py, pw, ph = _centre_size(priors.float())
        dx = wx * (gx - px) / pw
        dy = wy * (gy - py) / ph
        dw = ww * torch.log(gw / pw)
        dh = wh * torch.log(gh / ph)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, priors: Tensor, strides: Tensor | None = None) -> Tensor:
        """Boxes [..., 4] xyxy from ``deltas`` [..., 4] applied to ``priors`` [..., 4] (leading dims broadcast).
        The deltas are relative to the prior's size: ``strides`` plays no part."""
        wx, wy, ww, wh = self.weights
        deltas = deltas.float()
        px, py, pw, ph = _centre_size(priors.float())
        cx = deltas[..., 0] / wx * pw + px
        cy = deltas[..., 1] / wy * ph + py
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * pw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * ph
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


class YoloBoxCoder:
    """YOLOv3's box coding (section 2.1): the centre is a sigmoid offset inside the prior's grid cell, the size
    the prior's (anchor's) size times exp:

        cx = px + (sigmoid(tx) - 0.5) * stride,  w = pw * exp(tw)     (and y, h alike)

    with (px, py) the prior's centre, the middle of its cell. The offsets are in grid cells, so encode and decode
    read each prior's stride (as mmdetection's YOLOBBoxCoder).

    eps:   encode clamps the centre offset to [eps, 1 - eps] of the cell, so that a centre on the cell's edge
           has a finite logit.
    clamp: upper bound on the decoded tw, th, so that exp() cannot overflow on a wild prediction.
    """

    def __init__(self, eps: float = 1e-3, clamp: float = math.log(1000 / 16)):
        if not 0 < eps < 0.5:
            raise ConfigError(f"box_coder.eps must be in (0, 0.5), got {eps}")
        if not clamp > 0:
            raise ConfigError(f"box_coder.clamp must be > 0, got {clamp}")
        self.eps = float(eps)
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, clamp={self.clamp:.4f})"

    def encode(self, gt_boxes: Tensor, priors: Tensor, strides: Tensor | None = None) -> Tensor:
        """(tx, ty, tw, th) [..., 4] that take ``priors`` [..., 4] of ``strides`` [...] to ``gt_boxes`` [..., 4]."""
        gx, gy, gw, gh = _centre_size(gt_boxes.float())
        px, py, pw, ph = _centre_size(priors.float())
        stride = _required(strides).float()
        offset_x = ((gx - px) / stride + 0.5).clamp(self.eps, 1 - self.eps)
        offset_y = ((gy - py) / stride + 0.5).clamp(self.eps, 1 - self.eps)
        tw, th = torch.log(gw / pw), torch.log(gh / ph)
        return torch.stack((torch.logit(offset_x), torch.logit(offset_y), tw, th), dim=-1)

    def decode(self, box_reg: Tensor, priors: Tensor, strides: Tensor | None = None) -> Tensor:
        """Boxes [..., 4] xyxy from ``box_reg`` [..., 4] on ``priors`` [..., 4] of ``strides`` [...]."""
        box_reg = box_reg.float()
        px, py, pw, ph = _centre_size(priors.float())
        stride = _required(strides).float()
        cx = px + (box_reg[..., 0].sigmoid() - 0.5) * stride
        cy = py + (box_reg[..., 1].sigmoid() - 0.5) * stride
        w = torch.exp(box_reg[..., 2].clamp(max=self.clamp)) * pw
        h = torch.exp(box_reg[..., 3].clamp(max=self.clamp)) * ph
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def _required(strides: Tensor | None) -> Tensor:
    """The priors' strides, which grid-cell offsets cannot do without."""
    if strides is None:
        raise ConfigError(
            "YoloBoxCoder codes offsets in grid cells and needs each prior's stride: it serves dense heads "
            "(model.head=yolo), not a RoI head, whose proposals have no level (use DeltaXYWHBoxCoder there)"
        )
    return strides
