"""Anchor generator: per level, sizes x scales x aspect ratios centred on every feature-map cell."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detlab.structures import Priors


class AnchorGenerator:
    """Anchors of one base size per level (RetinaNet: 32..512 for P3..P7), scales x aspect ratios each.

    offset: the anchor centre within a cell in units of stride (0.0 as torchvision and detectron2; 0.5 for
            cell centres). Anchors are ordered level-major, then y, x, then (aspect ratio, scale), the order in
            which the heads flatten their outputs. One Priors object is cached per input geometry.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
    ) -> None:
        self.sizes = tuple(float(s) for s in sizes)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self.num_per_location = len(self.scales) * len(self.aspect_ratios)
        self._cache: dict[tuple, Priors] = {}

    def cell_anchors(self, size: float) -> torch.Tensor:
        """[num_per_location, 4] zero-centred xyxy anchors of one level (h/w = aspect ratio, area = (size*scale)^2)."""
        scales = torch.tensor(self.scales) * size
        ratios = torch.tensor(self.aspect_ratios)
        h_ratio = ratios.sqrt()
        ws = (scales[None, :] / h_ratio[:, None]).reshape(-1)
        hs = (scales[None, :] * h_ratio[:, None]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def __call__(self, feature_shapes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device) -> Priors:
        if len(feature_shapes) != len(self.sizes):
            raise ValueError(
                f"model.priors.sizes has {len(self.sizes)} sizes for {len(feature_shapes)} pyramid levels; "
                "give one size per level"
            )
        key = (tuple(tuple(s) for s in feature_shapes), tuple(strides), str(device))
        if key not in self._cache:
            self._cache[key] = self._generate(feature_shapes, strides, device)
        return self._cache[key]

    def _generate(self, feature_shapes, strides, device) -> Priors:
        boxes, level_strides = [], []
        for (h, w), stride, size in zip(feature_shapes, strides, self.sizes):
            ys = (torch.arange(h, dtype=torch.float32) + self.offset) * stride
            xs = (torch.arange(w, dtype=torch.float32) + self.offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            level = (centres + self.cell_anchors(size)[None]).reshape(-1, 4)
            boxes.append(level)
            level_strides.append(torch.full((len(level),), float(stride)))
        return Priors(
            boxes=torch.cat(boxes).to(device),
            strides=torch.cat(level_strides).to(device),
            level_sizes=tuple(len(b) for b in boxes),
        )
