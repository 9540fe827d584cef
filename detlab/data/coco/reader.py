"""A detection Dataset over any COCO annotation file and its image folder.

It owns the map between the file's category ids and contiguous labels 0..K-1 (sorted by category id), and
checks the file when it is built (detlab.data.coco.checker, which `detlab-data check` uses too). With
`on_invalid="skip"` the invalid annotations (and images without a file, with their annotations) are dropped and
listed in `problems` instead; the evaluator then scores against a copy of the file without them
(`eval_ann_file`), so that AP does not count boxes the model was never shown.

A box partly outside its image is clipped in the training target (the file keeps it: COCOeval is fine with
it) and listed in `notes`. Crowd annotations (iscrowd=1, which is also how the VOC reader writes `difficult`
objects) are not training targets; COCOeval reads them from the file as ignore regions. Images without
objects are kept.

Images load as RGB uint8 whatever their mode: grayscale, palette, RGBA (alpha dropped), CMYK, and 16-bit
(scaled by 1/256, not clipped). They load as stored: an EXIF orientation is not applied, because COCO's
boxes, `width` and `height` are in the stored pixels' frame (as pycocotools and the COCO images assume).

The transform may drop boxes (min_visibility, min_box_size); `transform_counts()` says how many, summed over
the loader's worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import Dataset, get_worker_info

from detlab.data.coco.checker import check_coco, empty_problem, problem_report
from detlab.data.transforms import Sample
from detlab.errors import ConfigError, DataError, writing
from detlab.files import write_text_atomically

ON_INVALID = ("error", "skip")
WORKER_SLOTS = 64  # rows of the shared transform counter: one per loader worker (more workers share rows)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's 16-bit (and 32-bit int) grayscale
# What PIL raises for a file it cannot read as an image: not an image, truncated or corrupt, or larger than its
# decompression-bomb limit (2 * Image.MAX_IMAGE_PIXELS, 179 MP: DOTA's aerial photographs reach 400 MP), which is
# an Exception of its own.
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class CocoFiles:
    """One split on disk: the annotation file and the folder its `file_name`s are relative to.

    problems, notes: what a converting source (detlab.data.formats.source) left out or repaired on the way
    to this file, one line each; empty for a file given as it is.
    """

    ann_file: str
    img_dir: str
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


CACHE = "the data cache: $DETLAB_CACHE, else ~/.cache/detlab"
CACHE_FIX = "set DETLAB_CACHE (or data.source.cache_dir) to a folder with space that you can write to"


def default_cache_dir() -> Path:
    """Where detlab writes generated data: $DETLAB_CACHE, else ~/.cache/detlab."""
    return Path(os.environ.get("DETLAB_CACHE") or Path.home() / ".cache" / "detlab")


class CocoDetection(Dataset):
    """Images and their targets from a COCO file; item i is `transform(image, boxes_xyxy, labels, image_id)`.

    category_ids: label -> the file's category id.   class_names: label -> category name.
    problems:     one line per annotation (or image without a file) dropped under on_invalid="skip".
    notes:        one line per box partly outside its image (clipped in the target).
    image_ids:    the file's image ids in dataset order.
    num_objects:  training targets over all images (crowd annotations are not).
    empty:        why the split has nothing to train or score (no object), or None.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transform: Callable[..., Sample],
        on_invalid: str = "error",
        category_ids: Sequence[int] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if on_invalid not in ON_INVALID:
            raise ConfigError(f"data.on_invalid={on_invalid!r}: use one of {ON_INVALID}")
        self.ann_file, self.img_dir, self.transform = str(ann_file), Path(img_dir), transform
        checked = check_coco(self.ann_file, self.img_dir)
        self.problems, self.notes = checked.problems, checked.notes
        if self.problems and on_invalid == "error":
            raise DataError(problem_report(self.ann_file, self.problems))
        data = checked.data
        self.empty = empty_problem(self.ann_file, data)
        self.eval_ann_file = self.ann_file if not self.problems else _write_clean_copy(data, cache_dir)

        coco = _index(data)
        self.category_ids = sorted(checked.categories) if category_ids is None else list(category_ids)
        self.class_names = _label_space_names(checked.categories, self.category_ids, self.ann_file)
        label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        self.image_ids = sorted(coco.getImgIds())
        self._images = [coco.imgs[i] for i in self.image_ids]
        self._targets = [_targets(coco.imgToAnns[i], coco.imgs[i], label_of) for i in self.image_ids]
        self.num_objects = sum(len(labels) for _, labels in self._targets)
        # [slot, 2]: boxes given to the transform and boxes it dropped. Shared memory, one row per loader
        # worker, so that the counts made in worker processes are read in the main one without a lock.
        self._transform_counts = torch.zeros(WORKER_SLOTS + 1, 2, dtype=torch.int64).share_memory_()

    @property
    def num_skipped(self) -> int:
        return len(self.problems)

    def transform_counts(self) -> dict[str, int]:
        """{"boxes": boxes given to the transform, "dropped": boxes it dropped (min_visibility, min_box_size)},
        summed over every item loaded so far, in this process and its loader workers."""
        boxes, dropped = self._transform_counts.sum(0).tolist()
        return {"boxes": boxes, "dropped": dropped}

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Sample:
        boxes_xyxy, labels = self._targets[index]
        sample = self.transform(self.load_image(index), boxes_xyxy, labels, self._images[index]["id"])
        worker = get_worker_info()
        slot = 0 if worker is None else 1 + worker.id % WORKER_SLOTS
        self._transform_counts[slot, 0] += len(labels)
        self._transform_counts[slot, 1] += len(labels) - len(sample.labels)
        return sample

    def load_image(self, index: int) -> np.ndarray:
        """The image as RGB [H, W, 3] uint8, in its stored orientation (see the module's docstring)."""
        record = self._images[index]
        path = self.img_dir / record["file_name"]
        where = f"{path} (image id={record['id']} of {self.ann_file})"
        try:
            rgb = read_rgb(path)
        except FileNotFoundError:
            raise DataError(f"image file not found: {where}, field 'file_name'") from None
        except IMAGE_ERRORS as err:
            raise DataError(f"cannot decode image {where}: {err}{self._image_check_hint()}") from None
        check_record_size(rgb, record, where, self._image_check_hint())
        return rgb

    def _image_check_hint(self) -> str:
        """A fault found only by decoding stops the run under either on_invalid (dropping the image now would
        change the evaluation's file after the fact): name the command that finds every such image first."""
        command = shlex.join(["detlab-data", "check", self.ann_file, "--img-dir", str(self.img_dir), "--image-check"])
        return f" (`{command}` decodes every image and lists each one that cannot be used)"


def check_record_size(rgb: np.ndarray, record: dict, where: str, hint: str = "") -> None:
    """A DataError unless the decoded image [H, W, 3] has its record's `width` and `height` (where the record has
    them): a COCO file's boxes are in the record's size, and detections in the pixels' size would not match them."""
    if "width" in record and "height" in record and rgb.shape[:2] != (record["height"], record["width"]):
        raise DataError(
            f"image {where} is {rgb.shape[1]}x{rgb.shape[0]} (w x h) but its record says fields "
            f"'width'={record['width']}, 'height'={record['height']}; the boxes are in the record's size{hint}"
        )


def _label_space_names(categories: dict[int, str], category_ids: list[int], ann_file: str) -> list[str]:
    """Class names of a label space (label k = category_ids[k]): the file's names, "unused_<id>" for an id that
    the file does not have (torchvision's 91-way COCO labels keep a place for ids COCO never used)."""
    if len(set(category_ids)) != len(category_ids):
        raise ConfigError(f"data.category_ids={category_ids} repeats an id")
    outside = sorted(set(categories) - set(category_ids))
    if outside:
        raise ConfigError(
            f"{ann_file}: categories {outside} (field 'categories') are not in data.category_ids={category_ids}: "
            "the model would have no output for them; add them, or set data.category_ids=null"
        )
    return [categories.get(c, f"unused_{c}") for c in category_ids]


def read_image_file(path: str | Path) -> np.ndarray:
    """A user-given image file (not a dataset's: CocoDetection names the image id) as read_rgb reads it; a
    missing or unreadable file is a DataError naming it."""
    try:
        return read_rgb(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except IMAGE_ERRORS as err:
        raise DataError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file's stored pixels as RGB [H, W, 3] uint8; raises what PIL raises for a bad file."""
    with Image.open(path) as img:
        img.load()  # decode now, so a truncated file fails here and not later
        if img.mode in SIXTEEN_BIT_MODES:
            # PIL's convert() clips 16-bit values at 255 (a white image): keep the high byte instead.
            gray = (np.asarray(img, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


def _write_clean_copy(data: dict, cache_dir: str | Path | None) -> str:
    """The file without its skipped annotations and images, in the cache (keyed by its content); its path."""
    text = json.dumps(data)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "coco-clean" / f"{digest}.json"
    if not path.is_file():
        with writing(path.parent, CACHE, CACHE_FIX):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, text)  # DDP ranks writing at once leave one whole file
    return str(path)


def write_cache_folder(root: Path, write: Callable[[Path], None]) -> None:
    """`write(folder)` into a temporary folder beside root, then rename it to root, so that a kill never leaves
    a half-written cache entry; a rename that loses a race keeps the winner's identical folder."""
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with writing(root.parent, CACHE, CACHE_FIX):
        try:
            tmp.mkdir(parents=True)
            write(tmp)
            try:
                os.rename(tmp, root)
            except OSError:
                if not root.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


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
