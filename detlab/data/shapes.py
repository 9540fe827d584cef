"""The built-in `shapes` dataset: a deterministic generator of COCO-format detection data.

Each class is one shape kind (circle, square, triangle, ...), drawn filled, rotated, at sizes that cover COCO's
small (< 32^2 px), medium and large (> 96^2 px) areas, on cluttered backgrounds (noise, gradients, stripes)
with unlabelled distractors (lines, irregular blobs, and the shape kinds beyond `num_classes`) as hard
negatives. A box is the tight box of the pixels its shape painted (clipped to the image); objects overlap
each other by at most a third of the smaller box, so no object is mostly hidden.

`ShapesSource.splits()` writes real COCO files (image ids from 1000, category ids from 1, so that an id
mapping bug cannot hide) and the images into `<cache>/shapes-<hash>/`, where the hash covers every parameter
and `GENERATOR_VERSION`: an unchanged config reuses the folder, a changed one writes a new folder. The folder
is generated under a temporary name and renamed into place, so DDP ranks that build it at once are safe
(the first rename wins; the others discard their copy). Its `params.json` holds a fingerprint of what was
drawn (every image's pixels before encoding, and the annotation files), logged whenever the data is used: two
machines with one fingerprint drew the same data (their JPEG codecs may still differ).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detlab.data.coco.reader import CocoFiles, default_cache_dir, write_cache_folder
from detlab.errors import ConfigError

log = logging.getLogger(__name__)

SHAPE_KINDS = ("circle", "square", "triangle", "star", "cross", "hexagon", "ellipse", "arrow")
# Bump when the drawing changes, so that caches written by older code are not reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "val")
FIRST_IMAGE_ID = 1000
MAX_OVERLAP = 1 / 3  # intersection over the smaller box, between two labelled objects
PLACEMENT_TRIES = 20


def _regular(n: int, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """[n, 2] vertices of a regular polygon (or a star when radii alternate), first vertex pointing up."""
    angles = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
    r = np.resize(np.asarray(radii), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


# Unit outlines inside the unit disc; scaled by half the object's size and rotated at random.
UNIT_POLYGONS: dict[str, np.ndarray] = {
    "circle": _regular(48),
    "square": _regular(4),
    "triangle": _regular(3),
    "star": _regular(10, (1.0, 0.42)),
    "cross": np.array([(-1, -0.3), (-0.3, -0.3), (-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3),
                       (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3)]) / math.hypot(1, 0.3),
    "hexagon": _regular(6),
    "ellipse": _regular(48) * np.array([1.0, 0.5]),
    "arrow": np.array([(-1, -0.22), (0.15, -0.22), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.22), (-1, 0.22)]),
}


@dataclass
class ShapesSource:
    """Parameters of the generated dataset; `splits()` materialises it and returns its COCO files.

    image_size:           side of a generated image before jitter (the model's input size is data.image_size).
    size_jitter:          each side is drawn from image_size * [1 - j, 1 + j], so images are rarely square.
    num_classes:          K shape kinds, SHAPE_KINDS[:K].
    objects_per_image:    [min, max] labelled objects (fewer when no free place is found).
    object_size:          [min, max] sqrt(shape area) as a fraction of the shorter image side, log-uniform
                          (at 256 px, 0.125 and 0.375 are COCO's small/medium and medium/large limits).
    distractors_per_image: [min, max] unlabelled lines, blobs and unused shape kinds.
    long_tail:            0 = uniform classes; a > 0 gives class k frequency proportional to (k + 1)^-a.
    background:           "textured" (noise, gradients, stripes) or "plain" (one colour, for tests).
    image_format:         "jpg" (small, fast) or "png" (lossless).
    cache_dir:            root of the cache; None = $DETLAB_CACHE or ~/.cache/detlab.
    """

    seed: int = 0
    num_train_images: int = 1200
    num_val_images: int = 150
    image_size: int = 256
    size_jitter: float = 0.25
    num_classes: int = 3
    objects_per_image: tuple[int, int] = (1, 4)
    object_size: tuple[float, float] = (0.06, 0.65)
    distractors_per_image: tuple[int, int] = (0, 3)
    long_tail: float = 0.0
    background: str = "textured"
    image_format: str = "jpg"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        # Hydra hands lists over as ListConfig: plain tuples keep the hash and the checks simple.
        self.objects_per_image = tuple(int(v) for v in self.objects_per_image)
        self.object_size = tuple(float(v) for v in self.object_size)
        self.distractors_per_image = tuple(int(v) for v in self.distractors_per_image)
        _check_params(self)

    @property
    def identity(self) -> dict[str, Any]:
        """What the generated files depend on: every parameter but the cache location, and the code version."""
        params = {k: v for k, v in dataclasses.asdict(self).items() if k != "cache_dir"}
        return {**params, "generator_version": GENERATOR_VERSION}

    @property
    def directory(self) -> Path:
        """The cache folder of exactly these parameters."""
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.cache_dir or default_cache_dir()) / f"shapes-{digest}"

    def splits(self) -> dict[str, CocoFiles]:
        """Generate the dataset unless its folder exists; return {"train": files, "val": files}."""
        root = self.directory
        if not root.is_dir():
            self._generate(root)
        # Two machines that print the same fingerprint drew the same pixels and boxes (tests/data/test_shapes.py
        # holds one for a small config); a folder from before fingerprints says "unknown".
        fingerprint = json.loads((root / "params.json").read_text()).get("fingerprint", "unknown")
        log.info("shapes dataset %s: fingerprint %s", root, fingerprint)
        return {split: CocoFiles(ann_file=str(root / f"{split}.json"), img_dir=str(root / split)) for split in SPLITS}

    def _generate(self, root: Path) -> None:
        log.info("generating the shapes dataset into %s (once for these parameters)", root)
        write_cache_folder(root, self._write)

    def _write(self, folder: Path) -> None:
        digest = hashlib.sha256()
        for split, count in zip(SPLITS, (self.num_train_images, self.num_val_images)):
            coco = write_split(self, split, count, folder / split, digest)
            text = json.dumps(coco)
            digest.update(text.encode())
            (folder / f"{split}.json").write_text(text)
        fingerprint = digest.hexdigest()[:16]
        (folder / "params.json").write_text(json.dumps({**self.identity, "fingerprint": fingerprint}, indent=1))


def _check_params(p: ShapesSource) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"data.source.{key}={getattr(p, key)!r}: {why}")

    if not isinstance(p.seed, int) or p.seed < 0:
        fail("seed", "must be an integer >= 0 (numpy's generators take no negative seed)")
    if not isinstance(p.num_classes, int) or not 1 <= p.num_classes <= len(SHAPE_KINDS):
        fail("num_classes", f"must be 1..{len(SHAPE_KINDS)}, one per shape kind {list(SHAPE_KINDS)}")
    for key in ("num_train_images", "num_val_images", "image_size"):
        if not isinstance(getattr(p, key), int) or getattr(p, key) < 1:
            fail(key, "must be a positive integer")
    if not 0 <= p.size_jitter < 1:
        fail("size_jitter", "must be in [0, 1)")
    for key in ("objects_per_image", "distractors_per_image"):
        low, high = getattr(p, key)
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
            fail(key, "must be [min, max], integers with 0 <= min <= max")
    if not 0 < p.object_size[0] <= p.object_size[1] <= 1:
        fail("object_size", "must be [min, max] fractions of the shorter side with 0 < min <= max <= 1")
    if p.long_tail < 0:
        fail("long_tail", "must be >= 0 (0 = uniform classes)")
    if p.background not in ("textured", "plain"):
        fail("background", "use 'textured' or 'plain'")
    if p.image_format not in ("jpg", "png"):
        fail("image_format", "use 'jpg' or 'png'")


def write_split(p: ShapesSource, split: str, count: int, img_dir: Path, digest: Any) -> dict[str, Any]:
    """Draw `count` images into img_dir; return the split's COCO dict. `digest` (a hashlib object) takes each
    image's drawn pixels, before the image codec (whose JPEG bytes may differ between library builds)."""
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    write_args = [cv2.IMWRITE_JPEG_QUALITY, 92] if p.image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for index in range(count):
        # One generator per image (not per split): an image depends only on (seed, split, index).
        rng = np.random.default_rng([p.seed, SPLITS.index(split), index])
        image, objects = render_image(p, rng)
        digest.update(np.asarray(image.shape, np.int64).tobytes() + np.ascontiguousarray(image).tobytes())
        image_id = FIRST_IMAGE_ID + index
        file_name = f"{image_id:07d}.{p.image_format}"
        cv2.imwrite(str(img_dir / file_name), image[:, :, ::-1], write_args)
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for label, (x1, y1, x2, y2), area in objects:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": label + 1,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float(area),
                "iscrowd": 0,
            })
    categories = [{"id": k + 1, "name": SHAPE_KINDS[k], "supercategory": "shape"} for k in range(p.num_classes)]
    return {"info": {"description": f"detlab shapes ({split})"}, "images": images,
            "annotations": annotations, "categories": categories}


def render_image(p: ShapesSource, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """One RGB image [H, W, 3] uint8 and its objects [(label, (x1, y1, x2, y2), area_px)]."""
    h, w = (int(round(p.image_size * rng.uniform(1 - p.size_jitter, 1 + p.size_jitter))) for _ in range(2))
    image = _background(rng, h, w, textured=p.background == "textured")
    for _ in range(rng.integers(p.distractors_per_image[0], p.distractors_per_image[1] + 1)):
        _draw_distractor(p, rng, image)

    weights = (np.arange(p.num_classes) + 1.0) ** -p.long_tail
    objects, boxes = [], np.zeros((0, 4))
    for _ in range(rng.integers(p.objects_per_image[0], p.objects_per_image[1] + 1)):
        label = int(rng.choice(p.num_classes, p=weights / weights.sum()))
        polygon = _place(p, rng, UNIT_POLYGONS[SHAPE_KINDS[label]], boxes, h, w)
        drawn = None if polygon is None else _fill_polygon(image, polygon, rng)
        if drawn is not None:
            objects.append((label, *drawn))
            boxes = np.vstack([boxes, drawn[0]])
    return image, objects


def _background(rng: np.random.Generator, h: int, w: int, textured: bool) -> np.ndarray:
    """[H, W, 3] uint8: one colour, or noise over a flat colour, a linear gradient or stripes."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    if not textured:
        return np.broadcast_to(c0.round().astype(np.uint8), (h, w, 3)).copy()
    angle = rng.uniform(0, np.pi)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    along = xs * np.cos(angle) + ys * np.sin(angle)
    kind = rng.integers(3)
    if kind == 0:
        mix = np.zeros_like(along)
    elif kind == 1:
        mix = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    else:
        mix = 0.5 + 0.5 * np.sin(along * (2 * np.pi / rng.uniform(6, 40)))
    image = c0 + mix[..., None] * (c1 - c0)
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(2, 12)
    return image.clip(0, 255).astype(np.uint8)


def _draw_distractor(p: ShapesSource, rng: np.random.Generator, image: np.ndarray) -> None:
    """An unlabelled line, irregular blob or unused shape kind: things the detector must learn to ignore."""
    h, w = image.shape[:2]
    unused = SHAPE_KINDS[p.num_classes:]
    kind = rng.integers(3 if unused else 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if kind == 0:
        x1, x2 = rng.integers(0, w, 2)
        y1, y2 = rng.integers(0, h, 2)
        cv2.line(image, (int(x1), int(y1)), (int(x2), int(y2)), colour, int(rng.integers(1, 5)), cv2.LINE_AA)
        return
    if kind == 1:
        unit = _regular(12, tuple(rng.uniform(0.4, 1.0, 12)))  # an irregular blob
    else:
        unit = UNIT_POLYGONS[unused[rng.integers(len(unused))]]
    polygon = _place(p, rng, unit, np.zeros((0, 4)), h, w)
    if polygon is not None:
        _fill_polygon(image, polygon, rng)


def _place(p: ShapesSource, rng: np.random.Generator, unit: np.ndarray, boxes: np.ndarray, h: int, w: int):
    """A random scaled, rotated, translated copy [V, 2] of a unit polygon, overlapping `boxes` [N, 4] little.

    None when no such place is found in PLACEMENT_TRIES draws.
    """
    low, high = np.log(np.asarray(p.object_size) * min(h, w))
    x, y = unit[:, 0], unit[:, 1]
    unit_area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # shoelace
    for _ in range(PLACEMENT_TRIES):
        radius = np.exp(rng.uniform(low, high)) / np.sqrt(unit_area)  # so that area = (drawn size)^2
        theta = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        # The centre may sit up to half a radius from the border: some objects are clipped, as in photos.
        centre = rng.uniform(0.5 * radius, np.maximum([w - 0.5 * radius, h - 0.5 * radius], 0.5 * radius))
        polygon = unit @ rotation.T * radius + centre
        box = np.concatenate([polygon.min(0), polygon.max(0)])
        inter_wh = (np.minimum(boxes[:, 2:], box[2:]) - np.maximum(boxes[:, :2], box[:2])).clip(min=0)
        areas = np.minimum(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1), np.prod(box[2:] - box[:2]))
        if np.all(inter_wh.prod(axis=1) <= MAX_OVERLAP * areas):
            return polygon
    return None


def _fill_polygon(image: np.ndarray, polygon: np.ndarray, rng: np.random.Generator):
    """Paint a filled polygon [V, 2] (x, y in pixels) with a colour that stands out from what lies under it.

    Returns ((x1, y1, x2, y2), area): the tight box of the painted pixels and their count, or None when the
    polygon paints no pixel inside the image.
    """
    h, w = image.shape[:2]
    x0, y0 = np.floor(polygon.min(0)).astype(int).clip(0, [w, h])
    x1, y1 = (np.ceil(polygon.max(0)).astype(int) + 1).clip(0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # shift=4: vertices in 1/16 pixel, so small shapes keep their outline.
    cv2.fillPoly(mask, [np.round((polygon - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    window, painted = image[y0:y1, x0:x1], mask.astype(bool)
    # Each channel at least 96 away (mod 256) from the mean of what lies under it, plus a little texture.
    under = window[painted].mean(0)
    colour = (under + rng.integers(96, 161, 3)) % 256
    texture = rng.standard_normal((int(painted.sum()), 3), dtype=np.float32) * 6
    window[painted] = (colour + texture).clip(0, 255).astype(np.uint8)
    box = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
    return tuple(int(v) for v in box), int(painted.sum())
