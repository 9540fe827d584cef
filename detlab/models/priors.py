"""Prior generators: RetinaNet's anchors (sizes x scales x aspect ratios on every feature-map cell), SSD's
default boxes (fractions of the input side, spread over it) and YOLOv3's anchor shapes. Same call, same
ordering, same Priors; the level check, the cache and the assembly live once, in PriorGenerator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detlab.errors import ConfigError
from detlab.structures import Priors

CACHE_SIZE = 16  # input geometries kept; multi-scale training cycles through a handful of sizes


class PriorGenerator:
    """(feature shapes [(H_l, W_l)], strides, device) -> Priors, cached per input geometry and device.

    Subclasses set num_levels and levels_key (the config key whose length fixes the number of levels) and
    implement _level_boxes; those that cover one fixed input size check the data's (check_input). Priors are ordered level-major, then y, x, then the prior index within a cell:
    the order in which the heads flatten their outputs.
    """

    num_levels: int
    levels_key: str
    _cache: dict[tuple, Priors]  # set to {} by each subclass's __init__

    def __call__(
        self,
        feature_shapes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        device: torch.device | str,
        image_shape: tuple[int, int] | None = None,
    ) -> Priors:
        """Priors (boxes [A, 4] xyxy input pixels, strides [A]) for levels of (H_l, W_l) at the given strides.

        image_shape: (H, W) of the padded input batch; the generators that follow torchvision's tiling need it
        (AnchorGenerator with stride="input"), the others ignore it.
        """
        self.check_levels(strides)
        if len(feature_shapes) != len(strides):
            raise ValueError(f"{len(feature_shapes)} feature shapes for {len(strides)} strides {list(strides)}")
        image = None if image_shape is None else (int(image_shape[0]), int(image_shape[1]))
        key = (tuple((int(h), int(w)) for h, w in feature_shapes), tuple(int(s) for s in strides), str(device), image)
        if key not in self._cache:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest geometry
            self._cache[key] = self._generate(key[0], key[1], torch.device(device), image)
        return self._cache[key]

    def check_levels(self, strides: Sequence[int]) -> None:
        """One entry of model.priors.<levels_key> per pyramid level of ``strides``; the builders call it with the
        neck's strides, so that a mismatch stops when the config is built."""
        if len(strides) != self.num_levels:
            raise ConfigError(
                f"model.priors.{self.levels_key} has {self.num_levels} levels but the neck makes {len(strides)} "
                f"(strides {list(strides)}: model.backbone.out_indices plus the neck's extra levels); give one "
                "entry per level"
            )

    def check_input(self, image_size: int, size_divisor: int, resize: str = "letterbox") -> None:
        """Whether priors of this generator fit the data's input side ``image_size`` padded to a multiple of
        ``size_divisor`` under the ``resize`` policy (data.image_size, data.size_divisor, data.resize): any input,
        unless a subclass covers one size."""

    def _generate(
        self, feature_shapes: tuple, strides: tuple, device: torch.device, image_shape: tuple[int, int] | None
    ) -> Priors:
        boxes = [
            self._level_boxes(level, h, w, stride, device, image_shape)
            for level, ((h, w), stride) in enumerate(zip(feature_shapes, strides))
        ]
        return Priors(
            boxes=torch.cat(boxes),
            strides=torch.cat([torch.full((len(b),), float(s), device=device) for b, s in zip(boxes, strides)]),
            level_sizes=tuple(len(b) for b in boxes),
        )

    def _level_boxes(
        self, level: int, h: int, w: int, stride: int, device: torch.device, image_shape: tuple[int, int] | None
    ) -> Tensor:
        """[H * W * A_loc, 4] xyxy boxes of one level of (h, w) cells at the neck's stride, in an input of
        image_shape (H, W), when the caller gave it."""
        raise NotImplementedError


def place(xs: Tensor, ys: Tensor, half_wh: Tensor) -> Tensor:
    """Boxes [H * W * A_loc, 4] xyxy: every (w, h) of half_wh [A_loc, 2] centred on every (x, y) of the grid
    xs [W] x ys [H], ordered y, x, then box."""
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # [H * W, 1, 2], y-major
    half = half_wh[None]  # [1, A_loc, 2]
    return torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)


STRIDE_RULES = ("neck", "input")


class AnchorGenerator(PriorGenerator):
    """Anchors of one or more base sizes per level (RetinaNet: 32..512 for P3..P7), scales x aspect ratios each.

    sizes:   per level, a base size or a list of them (torchvision's RetinaNet: [32, 40, 50] on P3, its sizes
             32 * 2^(i/3) truncated to whole pixels). A level has num_per_location = len(its sizes) *
             len(scales) * len(aspect_ratios) anchors per cell, of area (size * scale)^2 and height / width =
             aspect ratio, ordered ratio-major, then size, then scale (as torchvision).
    offset:  the anchor centre within a cell in units of stride (0.0 as torchvision and detectron2; 0.5 for
             cell centres).
    round:   round the zero-centred anchors to whole pixels before placing them, as torchvision does (its
             RetinaNet and Faster R-CNN); False keeps the exact sizes.
    stride:  the distance between anchor centres: "neck" (the level's nominal stride, 8 on P3) or "input" (the
             padded input side // the feature map side per axis, as torchvision computes it; it differs from
             the nominal stride where a size is not a multiple of it, and then moves the P6/P7 anchors).
    Anchors are ordered level-major, then y, x, then anchor index: the order in which the heads flatten their
    outputs. One Priors object is cached per input geometry and device.
    """

    def __init__(
        self,
        sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
        round: bool = False,
        stride: str = "neck",
    ) -> None:
        level_sizes = [tuple(s) if isinstance(s, Sequence) else (s,) for s in sizes]
        for key, values in (("sizes", [v for level in level_sizes for v in level] if all(level_sizes) else []),
                            ("scales", scales), ("aspect_ratios", aspect_ratios)):
            if not values or min(values) <= 0:
                raise ConfigError(
                    f"model.priors.{key}={_plain(sizes if key == 'sizes' else values)} must be a non-empty list of "
                    "positive numbers" + (" (per level, a number or a list of them)" if key == "sizes" else "")
                )
        if stride not in STRIDE_RULES:
            raise ConfigError(f"model.priors.stride={stride!r}: use one of {list(STRIDE_RULES)}")
        if not 0 <= offset <= 1:
            raise ConfigError(f"model.priors.offset={offset} must be in [0, 1]: the anchor centre within its cell")
        self.sizes = tuple(tuple(float(v) for v in level) for level in level_sizes)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self.round = bool(round)
        self.stride = stride
        per_level = {len(level) for level in self.sizes}
        if len(per_level) != 1:  # the heads predict the same number of anchors on every level
            raise ConfigError(f"model.priors.sizes={_plain(sizes)}: every level needs the same number of sizes")
        self.num_per_location = per_level.pop() * len(self.scales) * len(self.aspect_ratios)
        self.num_levels, self.levels_key = len(self.sizes), "sizes"
        self._cache = {}

    def cell_anchors(self, level: int, device: torch.device | str = "cpu") -> Tensor:
        """[num_per_location, 4] xyxy anchors of one level centred on (0, 0)."""
        scales = (torch.tensor(self.sizes[level])[:, None] * torch.tensor(self.scales)[None, :]).reshape(-1)
        h_ratios = torch.tensor(self.aspect_ratios).sqrt()
        # torchvision's arithmetic (w = (1 / sqrt(r)) * size): the same floats, so that rounding agrees with it
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return (anchors.round() if self.round else anchors).to(device)

    def _level_boxes(self, level: int, h: int, w: int, stride: int, device: torch.device, image_shape=None) -> Tensor:
        stride_y = stride_x = stride
        if self.stride == "input":
            if image_shape is None:
                raise ValueError("model.priors.stride=input needs the input's shape: call the generator with image_shape")
            stride_y, stride_x = image_shape[0] // h, image_shape[1] // w
        xs = (torch.arange(w, dtype=torch.float32, device=device) + self.offset) * stride_x
        ys = (torch.arange(h, dtype=torch.float32, device=device) + self.offset) * stride_y
        cell = self.cell_anchors(level, device)
        # x1 = centre + (-w / 2): rounding is symmetric (half to even), so centre - half is the same number
        return place(xs, ys, cell[:, 2:])


def _plain(values):
    """A config value (ListConfig, tuples) as plain lists, for messages."""
    return [_plain(v) for v in values] if isinstance(values, Sequence) and not isinstance(values, str) else values


SQUARE_RESIZES = ("letterbox", "stretch")  # the data.resize policies whose inputs are image_size x image_size


class DefaultBoxGenerator(PriorGenerator):
    """SSD's default boxes (Liu et al. 2016, section 2.2), sized as fractions of the input side.

    image_size:    side of the square input (the model config passes ${data.image_size}); the scales and the
                   centres are fractions of it.
    scales:        s_1 .. s_{m+1} for m levels. Level k has, on every cell, a box of side s_k, one of side
                   sqrt(s_k * s_{k+1}), and for each a in aspect_ratios[k] one of s_k sqrt(a) x s_k / sqrt(a) and
                   its transpose: num_per_location[k] = 2 + 2 * len(aspect_ratios[k]), in that order (as the
                   paper's caffe code and torchvision).
    aspect_ratios: per level, the ratios a besides 1 (each adds a and 1 / a).
    steps:         null: centres at the paper's (j + 0.5) / |f_k| of the input side, which spreads a level's cells
                   evenly over the input whatever its size (torchvision's steps=None). A list, one per level: centres
                   at (j + 0.5) * steps[k] pixels, caffe's and torchvision's SSD300 tiling ([8, 16, 32, 64, 100,
                   300]: conv4_3's 38 cells of 8 px end at 304, its last centre on the border). Such steps fit one
                   input side: a level whose cells x step misses image_size by a step or more is refused.
    clip:          clamp every box's width and height to [0, 1] of the input side, as torchvision does (its
                   SSD300's 1.05 boxes become 1.0); caffe's SSD300/SSD512 and mmdetection do not.

    The boxes are torchvision's arithmetic, step for step in float32 on the CPU: (centre -/+ size / 2) as
    fractions, times the side. So they equal torchvision's DefaultBoxGenerator bit for bit on an image_size x
    image_size input, on any device. Boxes are ordered level, y, x, then box, as the heads flatten their outputs;
    Priors.strides holds the strides passed in (the neck's nominal strides) to name each box's level. One Priors
    object is cached per input geometry and device.
    """

    def __init__(
        self,
        image_size: int,
        scales: Sequence[float],
        aspect_ratios: Sequence[Sequence[float]],
        steps: Sequence[float] | None = None,
        clip: bool = False,
    ) -> None:
        if not isinstance(image_size, int) or image_size <= 0:
            raise ConfigError(f"model.priors.image_size={image_size!r} must be a positive integer (data.image_size)")
        if len(scales) != len(aspect_ratios) + 1 or min(scales) <= 0:
            raise ConfigError(
                f"model.priors.scales={list(scales)} must be {len(aspect_ratios) + 1} positive fractions of the "
                f"input side: one per level of model.priors.aspect_ratios ({len(aspect_ratios)}) plus the last "
                "level's next scale"
            )
        if any(min(ratios, default=1.0) <= 0 for ratios in aspect_ratios):
            raise ConfigError(f"model.priors.aspect_ratios={[list(r) for r in aspect_ratios]} must be positive")
        if steps is not None and (len(steps) != len(aspect_ratios) or min(steps) <= 0):
            raise ConfigError(
                f"model.priors.steps={list(steps)} must be null or {len(aspect_ratios)} positive distances in pixels "
                "between box centres, one per level of model.priors.aspect_ratios"
            )
        self.image_size = image_size
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(tuple(float(a) for a in ratios) for ratios in aspect_ratios)
        self.steps = None if steps is None else tuple(float(s) for s in steps)
        self.clip = bool(clip)
        self.num_per_location = [2 + 2 * len(ratios) for ratios in self.aspect_ratios]
        self.num_levels, self.levels_key = len(self.aspect_ratios), "aspect_ratios"
        self._cache = {}

    def check_input(self, image_size: int, size_divisor: int, resize: str = "letterbox") -> None:
        """The default boxes are fractions of exactly image_size: the input must be that square, unpadded."""
        if resize not in SQUARE_RESIZES:
            raise ConfigError(
                f"data.resize={resize!r} makes inputs of other shapes than data.image_size={image_size} square, but "
                f"the default boxes (model.priors) cover exactly that square; use data.resize=letterbox or stretch"
            )
        if self.image_size != image_size:
            raise ConfigError(
                f"model.priors.image_size={self.image_size} but data.image_size={image_size}: the default boxes are "
                "fractions of the input side; set model.priors.image_size='${data.image_size}'"
            )
        if size_divisor > 1 and image_size % size_divisor:
            raise ConfigError(
                f"data.size_divisor={size_divisor} pads the {image_size} px input to "
                f"{-(-image_size // size_divisor) * size_divisor} px, but the default boxes (model.priors) cover "
                f"exactly data.image_size={image_size}; set data.size_divisor=1"
            )

    def box_sizes(self, level: int) -> Tensor:
        """[num_per_location[level], 2] (width, height) of one level's boxes as fractions of the input side."""
        s_k, s_next = self.scales[level], self.scales[level + 1]
        sides = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2]
        for a in self.aspect_ratios[level]:  # math.sqrt in float64, then float32: torchvision's numbers
            sides += [(s_k * math.sqrt(a), s_k / math.sqrt(a)), (s_k / math.sqrt(a), s_k * math.sqrt(a))]
        sizes = torch.tensor(sides, dtype=torch.float32)
        return sizes.clamp(min=0, max=1) if self.clip else sizes

    def _level_boxes(self, level: int, h: int, w: int, stride: int, device: torch.device, image_shape=None) -> Tensor:
        if self.steps is not None:
            self._check_step(level, h, w)
        # Cells per input side: the map's own size, or as many steps as fit (a fraction: 300 / 8 = 37.5)
        cells_y, cells_x = (h, w) if self.steps is None else (self.image_size / self.steps[level],) * 2
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / cells_x
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / cells_y
        return (place(xs, ys, 0.5 * self.box_sizes(level)) * self.image_size).to(device)

    def _check_step(self, level: int, h: int, w: int) -> None:
        """Fixed steps tile one input size: a level's cells x its step must be the input side to within one step
        (torchvision's SSD300 at 300 px: 38 x 8 = 304, 10 x 32 = 320, 3 x 100 = 300). At another side the grid
        overshoots by whole cells, whose default boxes lie outside the input and never match an object (its steps at
        512 px centre level 5's boxes up to 1050 px), or leaves part of the input without centres."""
        step = self.steps[level]
        for cells in (h, w):
            if abs(cells * step - self.image_size) >= step:
                raise ConfigError(
                    f"model.priors.steps[{level}]={step:g} spaces level {level}'s {cells} cells over {cells * step:g} "
                    f"px of the {self.image_size} px input (data.image_size): fixed steps tile one input size "
                    f"({list(self.steps)}); set model.priors.steps=null to spread each level over the input, or "
                    "give steps whose cells x step is the input side"
                )


class YoloAnchorGenerator(PriorGenerator):
    """YOLOv3's anchors: a few (w, h) shapes per level, centred on every cell (offset 0.5 of the stride).

    anchors:           per level (lowest stride first), a list of [w, h] in pixels of an input of
                       anchor_image_size (model=yolov3 takes YOLOv3's COCO k-means anchors as pixels of 416).
    image_size:        the model's input side (the model config passes ${data.image_size}); the anchors are
                       scaled by image_size / anchor_image_size, so that they keep their fraction of the input.
    anchor_image_size: the input side the anchors were given for; equal to image_size, the anchors stay in
                       pixels at every input size, as darknet uses them.

    num_per_location[l] = len(anchors[l]). Priors are ordered level, y, x, then anchor, as the heads flatten
    their outputs; one Priors object is cached per input geometry and device.
    """

    def __init__(
        self, anchors: Sequence[Sequence[Sequence[float]]], image_size: int, anchor_image_size: int = 416
    ) -> None:
        if not isinstance(image_size, int) or image_size <= 0 or anchor_image_size <= 0:
            raise ConfigError(
                f"model.priors.image_size={image_size!r} (data.image_size) and model.priors.anchor_image_size="
                f"{anchor_image_size!r} must be positive integers"
            )
        try:
            shapes = [[tuple(float(v) for v in wh) for wh in level] for level in anchors]
        except (TypeError, ValueError):  # a number where a level or a pair belongs: [[10, 13], ...] (no level)
            shapes = []
        if not shapes or any(not level or any(len(wh) != 2 or min(wh) <= 0 for wh in level) for level in shapes):
            raise ConfigError(
                f"model.priors.anchors={_plain(anchors)} must be, per level, a non-empty list of positive [w, h] "
                "pairs: [[[w, h], ...], [[w, h], ...], ...], lowest stride first"
            )
        scale = image_size / anchor_image_size
        self.anchors = tuple(tuple((w * scale, h * scale) for w, h in level) for level in shapes)
        self.num_per_location = [len(level) for level in self.anchors]
        self.num_levels, self.levels_key = len(self.anchors), "anchors"
        self._cache = {}

    def _level_boxes(self, level: int, h: int, w: int, stride: int, device: torch.device, image_shape=None) -> Tensor:
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
        return place(xs, ys, torch.tensor(self.anchors[level], dtype=torch.float32, device=device) / 2)
