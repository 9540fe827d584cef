"""A detection Dataset over any COCO annotation file and its image folder.

It owns the map between the file's category ids and contiguous labels 0..K-1 (sorted by category id), and
checks the file when it is built, so that bad data stops before training with a message that names the file,
the image id and the field:

- the whole file (not JSON, truncated, missing "images" / "annotations" / "categories") and every image or
  category record (missing keys, duplicate ids, non-positive sizes) must be valid;
- each annotation must name a known image and category and carry a finite bbox [x, y, w, h] with w > 0,
  h > 0 that is not wholly outside its image. With `on_invalid="skip"` such annotations are dropped and
  listed in `problems` instead; the evaluator then scores against a copy of the file without them
  (`eval_ann_file`), so that AP does not count boxes the model was never shown.

A box partly outside its image is clipped in the training target (the file keeps it: COCOeval is fine with
it). Crowd annotations (iscrowd=1) are not training targets; COCOeval reads them from the file. Images
without objects are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from detlab.data.transforms import Sample

ON_INVALID = ("error", "skip")
MAX_LISTED = 10  # problems quoted in one error message; the count says how many there are


@dataclass(frozen=True)
class CocoFiles:
    """One split on disk: the annotation file and the folder its `file_name`s are relative to."""

    ann_file: str
    img_dir: str


def default_cache_dir() -> Path:
    """Where detlab writes generated data: $DETLAB_CACHE, else ~/.cache/detlab."""
    return Path(os.environ.get("DETLAB_CACHE") or Path.home() / ".cache" / "detlab")


class CocoDetection(Dataset):
    """Images and their targets from a COCO file; item i is `transform(image, boxes_xyxy, labels, image_id)`.

    category_ids: label -> the file's category id.   class_names: label -> category name.
    problems:     one line per annotation dropped under on_invalid="skip".
    image_ids:    the file's image ids in dataset order.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transform: Callable[..., Sample],
        on_invalid: str = "error",
        cache_dir: str | Path | None = None,
    ) -> None:
        if on_invalid not in ON_INVALID:
            raise ValueError(f"data.on_invalid={on_invalid!r}: use one of {ON_INVALID}")
        self.ann_file, self.img_dir, self.transform = str(ann_file), Path(img_dir), transform
        raw = _read_bytes(self.ann_file)
        data = _parse(raw, self.ann_file)
        categories = _check_categories(data["categories"], self.ann_file)
        images = _check_images(data["images"], self.ann_file)
        kept, self.problems = _check_annotations(data["annotations"], images, categories, self.ann_file)
        if self.problems and on_invalid == "error":
            raise ValueError(_problem_report(self.ann_file, self.problems))
        data["annotations"] = kept
        self.eval_ann_file = self.ann_file if not self.problems else _write_clean_copy(data, raw, cache_dir)

        coco = _index(data)
        self.category_ids = sorted(categories)
        self.class_names = [categories[c] for c in self.category_ids]
        label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        self.image_ids = sorted(coco.getImgIds())
        self._images = [coco.imgs[i] for i in self.image_ids]
        self._targets = [_targets(coco.imgToAnns[i], coco.imgs[i], label_of) for i in self.image_ids]

    @property
    def num_skipped(self) -> int:
        return len(self.problems)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Sample:
        boxes_xyxy, labels = self._targets[index]
        return self.transform(self.load_image(index), boxes_xyxy, labels, self._images[index]["id"])

    def load_image(self, index: int) -> np.ndarray:
        """The image as RGB [H, W, 3] uint8 (grayscale, RGBA and palette images converted)."""
        record = self._images[index]
        path = self.img_dir / record["file_name"]
        where = f"{path} (image id={record['id']} of {self.ann_file})"
        try:
            with Image.open(path) as img:
                img.load()  # decode now, so a truncated file fails here and not later
                rgb = np.asarray(img.convert("RGB"))
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {where}, field 'file_name'") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot decode image {where}: {err}") from None
        if rgb.shape[:2] != (record["height"], record["width"]):
            raise ValueError(
                f"image {where} is {rgb.shape[1]}x{rgb.shape[0]} (w x h) but its record says fields "
                f"'width'={record['width']}, 'height'={record['height']}; the boxes are in the record's size"
            )
        return rgb


def _read_bytes(ann_file: str) -> bytes:
    try:
        return Path(ann_file).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {ann_file}") from None


def _parse(raw: bytes, ann_file: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{ann_file}: not valid JSON ({err}); is the file truncated?") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: a COCO file is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{ann_file}: missing the top-level list field '{key}'")
    return data


def _check_categories(categories: list, ann_file: str) -> dict[int, str]:
    """category id -> name."""
    names: dict[int, str] = {}
    for position, cat in enumerate(categories):
        for key in ("id", "name"):
            if not isinstance(cat, dict) or key not in cat:
                raise ValueError(f"{ann_file}: category #{position} has no field '{key}'")
        if cat["id"] in names:
            raise ValueError(f"{ann_file}: duplicate category id={cat['id']} (field 'id' of category #{position})")
        names[cat["id"]] = str(cat["name"])
    if not names:
        raise ValueError(f"{ann_file}: field 'categories' is empty; a detector needs at least one class")
    return names


def _check_images(images: list, ann_file: str) -> dict[int, dict]:
    """image id -> record."""
    by_id: dict[int, dict] = {}
    for position, img in enumerate(images):
        image_id = img.get("id", "?") if isinstance(img, dict) else "?"
        where = f"{ann_file}: image id={image_id} (image #{position})"
        for key in ("id", "file_name", "width", "height"):
            if not isinstance(img, dict) or key not in img:
                raise ValueError(f"{where}: missing field '{key}'")
        for key in ("width", "height"):
            if not isinstance(img[key], (int, float)) or not img[key] > 0:
                raise ValueError(f"{where}: field '{key}'={img[key]!r} must be a positive number")
        if image_id in by_id:
            raise ValueError(f"{where}: duplicate image id (field 'id'); image ids must be unique")
        by_id[image_id] = img
    return by_id


def _check_annotations(annotations: list, images: dict, categories: dict, ann_file: str) -> tuple[list, list[str]]:
    """(valid annotations, one problem line per invalid one)."""
    kept, problems = [], []
    for position, ann in enumerate(annotations):
        problem = _annotation_problem(ann, images, categories)
        if problem is None:
            kept.append(ann)
        else:
            ann_id = ann.get("id", f"#{position}") if isinstance(ann, dict) else f"#{position}"
            image_id = ann.get("image_id", "?") if isinstance(ann, dict) else "?"
            problems.append(f"{ann_file}: image id={image_id}, annotation id={ann_id}: {problem}")
    return kept, problems


def _annotation_problem(ann: Any, images: dict, categories: dict) -> str | None:
    """What is wrong with one annotation (naming the field), or None."""
    for key in ("id", "image_id", "category_id", "bbox"):
        if not isinstance(ann, dict) or key not in ann:
            return f"missing field '{key}'"
    if ann["image_id"] not in images:
        return "field 'image_id' names no image of the file"
    if ann["category_id"] not in categories:
        return f"field 'category_id'={ann['category_id']!r} is not in 'categories'"
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return f"field 'bbox'={bbox!r} must be 4 numbers [x, y, w, h]"
    if not all(math.isfinite(v) for v in bbox):
        return f"field 'bbox'={bbox} is not finite"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"field 'bbox'={bbox} has w <= 0 or h <= 0"
    img = images[ann["image_id"]]
    if x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
        return f"field 'bbox'={bbox} lies wholly outside the {img['width']}x{img['height']} image"
    return None


def _problem_report(ann_file: str, problems: list[str]) -> str:
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return (
        f"{len(problems)} invalid annotation(s) in {ann_file}:\n  {listed}{more}\n"
        "(fix the file, or set data.on_invalid=skip to drop them and train on the rest)"
    )


def _write_clean_copy(data: dict, raw: bytes, cache_dir: str | Path | None) -> str:
    """The file without its skipped annotations, in the cache (keyed by the original's bytes); its path."""
    path = Path(cache_dir or default_cache_dir()) / "coco-clean" / f"{hashlib.sha256(raw).hexdigest()[:16]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # atomic: DDP ranks writing at once leave one whole file
    return str(path)


def _index(data: dict) -> COCO:
    """pycocotools' index of an already checked dict (its prints silenced)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _targets(anns: list[dict], img: dict, label_of: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one image: boxes [N, 4] float32 xyxy clipped to the image, labels [N] int64."""
    anns = [a for a in anns if not a.get("iscrowd", 0)]
    bbox_xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes_xyxy = np.concatenate([bbox_xywh[:, :2], bbox_xywh[:, :2] + bbox_xywh[:, 2:]], axis=1)
    boxes_xyxy = boxes_xyxy.clip(0, [img["width"], img["height"], img["width"], img["height"]])
    labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
    return boxes_xyxy.astype(np.float32), labels
