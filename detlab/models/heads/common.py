"""What every dense head shares: flattening per-level maps into per-prior rows, and the prior-probability bias."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detlab.errors import ConfigError


def flatten_levels(maps: list[Tensor], num_anchors: int | list[int]) -> Tensor:
    """[B, A_loc * D, H, W] per level -> [B, sum(H * W * A_loc), D], ordered level, y, x, anchor.

    num_anchors: anchors per location, one number for all levels or one per level.
    """
    per_level = num_anchors if isinstance(num_anchors, list) else [num_anchors] * len(maps)
    flat = []
    for x, a in zip(maps, per_level):
        b, _, h, w = x.shape
        flat.append(x.view(b, a, -1, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, -1))
    return torch.cat(flat, dim=1)


def prior_bias(num_outputs: int, prior_prob: float, background_first: bool) -> Tensor:
    """Classification bias [num_outputs] under which every object class starts at probability prior_prob.

    Sigmoid outputs (focal loss paper, section 3.3): b = -log((1 - pi) / pi) for every class.
    Softmax outputs with the background at index 0: b_0 = log(K (1 - pi) / pi), b_k = 0, so that the
    background starts at 1 - pi and each of the K classes at pi / K.
    """
    if not 0 < prior_prob < 1:
        raise ConfigError(f"model.head.prior_prob={prior_prob} must be in (0, 1)")
    if not background_first:
        return torch.full((num_outputs,), -math.log((1 - prior_prob) / prior_prob))
    bias = torch.zeros(num_outputs)
    bias[0] = math.log((num_outputs - 1) * (1 - prior_prob) / prior_prob)
    return bias


def check_shared_channels(key: str, in_channels: int | Sequence[int]) -> None:
    """A head whose layers serve every level (RetinaNet's towers, the RPN's conv, the RoI head's box head over
    features pooled from several levels) is built for one channel count: a neck that gives one per level (YOLO's,
    SSD's) cannot feed it, and torch would say so only as a TypeError about the list."""
    if not isinstance(in_channels, int):
        raise ConfigError(
            f"{key}.in_channels={list(in_channels)} from model.neck, one per level, but {key} shares its layers "
            "across the levels and needs one channel count for all of them: use a neck with one out_channels "
            "(model/neck=fpn or fpn_p2p6)"
        )
