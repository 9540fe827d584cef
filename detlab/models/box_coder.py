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


class YoloBoxCoder:
    """YOLOv3's box coding (section 2.1): the centre is a sigmoid offset inside the prior's grid cell, the size
    the prior's (anchor's) size times exp:

        cx = px + (sigmoid(tx) - 0.5) * stride,  w = pw * exp(tw)     (and y, h alike)

    with (px, py) the prior's centre, the middle of its cell. The offsets are in grid cells, so encode and decode
    also take each prior's stride (as mmdetection's YOLOBBoxCoder); ``at(strides)`` binds them, giving the
    ``encode(gt, priors)`` / ``decode(box_reg, priors)`` interface of the other coders to the box losses and the
    post-processing (which look for ``needs_strides``).

    eps:   encode clamps the centre offset to [eps, 1 - eps] of the cell, so that a centre on the cell's edge
           has a finite logit.
    clamp: upper bound on the decoded tw, th, so that exp() cannot overflow on a wild prediction.
    """

    needs_strides = True

    def __init__(self, eps: float = 1e-3, clamp: float = math.log(1000 / 16)):
        if not 0 < eps < 0.5:
            raise ValueError(f"box_coder.eps must be in (0, 0.5), got {eps}")
        if not clamp > 0:
            raise ValueError(f"box_coder.clamp must be > 0, got {clamp}")
        self.eps = float(eps)
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, clamp={self.clamp:.4f})"

    def encode(self, gt_boxes: Tensor, priors: Tensor, strides: Tensor) -> Tensor:
        """(tx, ty, tw, th) [..., 4] that take ``priors`` [..., 4] of ``strides`` [...] to ``gt_boxes`` [..., 4]."""
        gx, gy, gw, gh = _centre_size(gt_boxes.float())
        px, py, pw, ph = _centre_size(priors.float())
        stride = strides.float()
        offset_x = ((gx - px) / stride + 0.5).clamp(self.eps, 1 - self.eps)
        offset_y = ((gy - py) / stride + 0.5).clamp(self.eps, 1 - self.eps)
        tw, th = torch.log(gw / pw), torch.log(gh / ph)
        return torch.stack((torch.logit(offset_x), torch.logit(offset_y), tw, th), dim=-1)

    def decode(self, box_reg: Tensor, priors: Tensor, strides: Tensor) -> Tensor:
        """Boxes [..., 4] xyxy from ``box_reg`` [..., 4] on ``priors`` [..., 4] of ``strides`` [...]."""
        box_reg = box_reg.float()
        px, py, pw, ph = _centre_size(priors.float())
        stride = strides.float()
        cx = px + (box_reg[..., 0].sigmoid() - 0.5) * stride
        cy = py + (box_reg[..., 1].sigmoid() - 0.5) * stride
        w = torch.exp(box_reg[..., 2].clamp(max=self.clamp)) * pw
        h = torch.exp(box_reg[..., 3].clamp(max=self.clamp)) * ph
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)

    def at(self, strides: Tensor) -> StridedBoxCoder:
        """This coder with the strides [...] of the priors it will see bound, as a two-argument coder."""
        return StridedBoxCoder(self, strides)


class StridedBoxCoder:
    """A YoloBoxCoder with its priors' strides bound: encode(gt, priors) and decode(box_reg, priors)."""

    def __init__(self, coder: YoloBoxCoder, strides: Tensor) -> None:
        self.coder = coder
        self.strides = strides

    def encode(self, gt_boxes: Tensor, priors: Tensor) -> Tensor:
        return self.coder.encode(gt_boxes, priors, self.strides)

    def decode(self, box_reg: Tensor, priors: Tensor) -> Tensor:
        return self.coder.decode(box_reg, priors, self.strides)


def bind_strides(
    coder: DeltaXYWHBoxCoder | YoloBoxCoder, strides: Tensor
) -> DeltaXYWHBoxCoder | StridedBoxCoder:
    """``coder`` as a two-argument encode(gt, priors) / decode(box_reg, priors) for priors of ``strides`` [...]:
    grid-cell coders (``needs_strides``, YOLO's) get them bound, the others are returned as they are."""
    return coder.at(strides) if getattr(coder, "needs_strides", False) else coder
