"""The checks on a COCO annotation file that the reader (detlab.data.coco.reader) and `detlab-data check` share, so
that bad data stops before training with a message that names the file, the image id and the field:

- the whole file (not JSON, truncated, missing "images" / "annotations" / "categories", no image at all)
  and every image or category record (missing keys, duplicate ids or category names, non-positive sizes, ids
  outside 0..2**63 - 1) must be valid;
- each annotation must have a unique id from 1 to 2**63 - 1, name a known image and category, carry a finite bbox [x, y, w, h] with w > 0,
  h > 0 that is not wholly outside its image, an area and an iscrowd of 0 or 1 (or none); each image file
  must exist, and no two images may name the same file. The reader's `on_invalid="skip"` drops such
  annotations (and images without a file or with another's, with their annotations) and lists them in `problems`.

A box partly outside its image is listed in `notes` (the reader clips it in the training target).
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detlab.errors import DataError

MAX_LISTED = 10  # problems quoted in one error message; the count says how many there are
IMAGE_KEYS = ("id", "file_name", "width", "height")  # what reading the images needs
SCORING_IMAGE_KEYS = ("id", "width", "height")  # what scoring detections against the file needs
INVALID_FIX = "fix the file, or set data.on_invalid=skip to drop them and train on the rest"


@dataclass
class CheckedCoco:
    """A COCO file after `check_coco`.

    data:       the file's dict, without the annotations (and images) listed in `problems`.
    categories: category id -> name.
    problems:   one line per annotation or image that is invalid, naming the file, image id and field.
    notes:      one line per box partly outside its image (clipped in the training target, nothing lost).
    """

    data: dict[str, Any]
    categories: dict[int, str]
    problems: list[str]
    notes: list[str]


def check_coco(
    ann_file: str | Path, img_dir: str | Path | None = None, image_keys: tuple[str, ...] = IMAGE_KEYS
) -> CheckedCoco:
    """Check a COCO file (and, given img_dir, that each image file exists); ValueError for a broken file.
    image_keys: the fields every image record must have (SCORING_IMAGE_KEYS where no image is read)."""
    return check_coco_dict(_parse(_read_bytes(str(ann_file)), str(ann_file)), str(ann_file), img_dir, image_keys)


def check_coco_dict(
    data: Any, name: str, img_dir: str | Path | None = None, image_keys: tuple[str, ...] = IMAGE_KEYS
) -> CheckedCoco:
    """`check_coco` of a COCO dict already in memory (a converted dataset); `name` names it in the messages."""
    _check_layout(data, name)
    categories = _check_categories(data["categories"], name)
    images = _check_images(data["images"], name, image_keys)
    kept, problems = _check_annotations(data["annotations"], images, categories, name)
    if "file_name" in image_keys:
        problems += _unusable_images(images, kept, None if img_dir is None else Path(img_dir), name)
        kept = [a for a in kept if a["image_id"] in images]
    notes = [_clip_note(a, images[a["image_id"]], name) for a in kept if _partly_outside(a, images[a["image_id"]])]
    data = {**data, "images": list(images.values()), "annotations": kept}
    return CheckedCoco(data, categories, problems, notes)


def _read_bytes(ann_file: str) -> bytes:
    try:
        return Path(ann_file).read_bytes()
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {ann_file}") from None
    except IsADirectoryError:
        raise DataError(f"{ann_file}: is a folder; give the COCO annotation json file in it") from None


def _parse(raw: bytes, ann_file: str) -> Any:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{ann_file}: not valid JSON ({err}); is the file truncated?") from None
    except RecursionError:  # json's decoder recurses per level: ~100,000 nested brackets
        raise DataError(f"{ann_file}: JSON nested too deeply to read; not a COCO annotation file") from None
    return data


def _check_layout(data: Any, ann_file: str) -> None:
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: a COCO file is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file}: missing the top-level list field '{key}'")


def _check_categories(categories: list, ann_file: str) -> dict[int, str]:
    """category id -> name."""
    names: dict[int, str] = {}
    id_of: dict[str, int] = {}  # name -> the first category's id
    for position, cat in enumerate(categories):
        for key in ("id", "name"):
            if not isinstance(cat, dict) or key not in cat:
                raise DataError(f"{ann_file}: category #{position} has no field '{key}'")
        if not _is_id(cat["id"], smallest=0):
            raise DataError(
                f"{ann_file}: category #{position}: field 'id'={cat['id']!r} {_id_rule(0)}: the evaluators hold "
                "category ids as 64-bit integers, and hotcoco refuses a negative one"
            )
        if cat["id"] in names:
            raise DataError(f"{ann_file}: duplicate category id={cat['id']} (field 'id' of category #{position})")
        name = cat["name"]
        if not isinstance(name, str):  # str() made null a class called "None"; hotcoco refuses the file
            raise DataError(
                f"{ann_file}: category id={cat['id']} (category #{position}): field 'name'={name!r} must be a string, "
                "the class's name"
            )
        if name in id_of:
            raise DataError(
                f"{ann_file}: categories id={id_of[name]} and id={cat['id']} have the same field 'name'={name!r}; "
                "per-class AP and the class names are keyed by name: rename one (or merge them)"
            )
        names[cat["id"]], id_of[name] = name, cat["id"]
    if not names:
        raise DataError(f"{ann_file}: field 'categories' is empty; a detector needs at least one class")
    return names


def _check_images(images: list, ann_file: str, keys: tuple[str, ...]) -> dict[int, dict]:
    """image id -> record."""
    by_id: dict[int, dict] = {}
    for position, img in enumerate(images):
        image_id = img.get("id", "?") if isinstance(img, dict) else "?"
        where = f"{ann_file}: image id={image_id} (image #{position})"
        for key in keys:
            if not isinstance(img, dict) or key not in img:
                raise DataError(f"{where}: missing field '{key}'")
        if not _is_id(image_id, smallest=0):
            raise DataError(
                f"{where}: field 'id'={image_id!r} {_id_rule(0)}: the evaluators and the results files index "
                "images by their ids as 64-bit integers, and hotcoco refuses a negative one; renumber the images (and "
                "their annotations' 'image_id')"
            )
        for key in ("width", "height"):
            if not _is_number(img[key]) or not 0 < img[key] < math.inf:
                raise DataError(f"{where}: field '{key}'={img[key]!r} must be a finite positive number")
        if image_id in by_id:
            raise DataError(f"{where}: duplicate image id (field 'id'); image ids must be unique")
        by_id[image_id] = img
    if not by_id:
        raise DataError(f"{ann_file}: field 'images' is empty: an empty dataset")
    return by_id


def _unusable_images(images: dict, annotations: list[dict], img_dir: Path | None, ann_file: str) -> list[str]:
    """Removes from `images` those that cannot be used, one problem line each: a file_name that an earlier image
    has too (one picture listed twice: the objects of each record would be background in the other, in training
    and in scoring) and, given img_dir, a file that does not exist."""
    counts = Counter(a["image_id"] for a in annotations)
    first_with: dict[str, int] = {}
    problems = []
    for image_id, img in list(images.items()):
        name = str(img["file_name"])
        why = None
        if name in first_with:
            why = f"image id={first_with[name]} has this file too: one picture listed twice"
        elif img_dir is not None and not (img_dir / name).is_file():
            why = f"image file not found: {img_dir / name}"
        first_with.setdefault(name, image_id)
        if why is not None:
            problems.append(
                f"{ann_file}: image id={image_id}: field 'file_name'={img['file_name']!r}: {why}; the image and its "
                f"{counts[image_id]} annotation(s) are left out"
            )
            del images[image_id]
    return problems


def _check_annotations(annotations: list, images: dict, categories: dict, ann_file: str) -> tuple[list, list[str]]:
    """(valid annotations, one problem line per invalid one)."""
    kept, problems, seen_ids = [], [], set()
    for position, ann in enumerate(annotations):
        problem = _annotation_problem(ann, images, categories)
        if problem is None and ann["id"] in seen_ids:
            # The evaluators index annotations by id: a repeated id keeps one of the boxes and loses the other.
            problem = f"duplicate annotation id (field 'id'={ann['id']!r}); annotation ids must be unique"
        if problem is None:
            seen_ids.add(ann["id"])
        if problem is None:
            kept.append(ann)
        else:
            ann_id = ann.get("id", f"#{position}") if isinstance(ann, dict) else f"#{position}"
            image_id = ann.get("image_id", "?") if isinstance(ann, dict) else "?"
            problems.append(f"{ann_file}: image id={image_id}, annotation id={ann_id}: {problem}")
    return kept, problems


def _annotation_problem(ann: Any, images: dict, categories: dict) -> str | None:
    """What is wrong with one annotation (naming the field), or None."""
    for key in ("id", "image_id", "category_id", "bbox", "area"):
        if not isinstance(ann, dict) or key not in ann:
            return f"missing field '{key}'" + (" (COCOeval's object sizes read it; COCO writes w * h)" if key == "area" else "")
    if not _is_id(ann["id"], smallest=1):
        # COCOeval records a match by the ground truth's id, 0 meaning unmatched: a perfect detection of an object
        # of id 0 scores AP 0 in pycocotools and 1 in hotcoco, of id -1 the engines disagree the other way round
        return f"field 'id'={ann['id']!r} {_id_rule(1)} (COCOeval takes an id of 0 for 'unmatched')"
    # the ids of the file's images and categories are integers (checked): a list or an object would stop the
    # lookup itself (unhashable), and JSON's true would find id 1
    if not _is_number(ann["image_id"]) or ann["image_id"] not in images:
        return "field 'image_id' names no image of the file"
    if not _is_number(ann["category_id"]) or ann["category_id"] not in categories:
        return f"field 'category_id'={ann['category_id']!r} is not in 'categories'"
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"field 'bbox'={bbox!r} must be 4 numbers [x, y, w, h]"
    if not all(math.isfinite(v) for v in bbox):
        return f"field 'bbox'={bbox} is not finite"
    if not _is_number(ann["area"]) or not math.isfinite(ann["area"]) or ann["area"] < 0:
        return f"field 'area'={ann['area']!r} must be a finite number >= 0"
    if ann.get("iscrowd", 0) not in (0, 1):  # JSON's true and false are 1 and 0
        return f"field 'iscrowd'={ann['iscrowd']!r} must be 0 or 1 (pycocotools takes any other true value as crowd)"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"field 'bbox'={bbox} has w <= 0 or h <= 0"
    img = images[ann["image_id"]]
    if x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
        return f"field 'bbox'={bbox} lies wholly outside the {img['width']}x{img['height']} image"
    if ann["area"] > max(w * h, img["width"] * img["height"]):
        # COCO's area is the object's pixels (w * h for a box): more than its box and its image holds is a wrong
        # field, which put the object in another size range (APs, APm, APl) or, above 1e10, out of every number
        return (f"field 'area'={ann['area']} is larger than its box ({w} x {h}) and its {img['width']}x{img['height']} "
                "image: COCO's area is the object's pixels (w * h for a box)")
    return None


def _is_number(value: Any) -> bool:
    """int or float, not bool: JSON's true would otherwise pass as 1."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# The engines and the results file hold ids as int64 (2**64 stopped pycocotools with a bare OverflowError), and
# hotcoco refuses a negative image or category id that pycocotools scores: one range that every engine reads alike.
ID_MAX = 2**63 - 1


def _is_id(value: Any, smallest: int) -> bool:
    return _is_int(value) and smallest <= value <= ID_MAX


def _id_rule(smallest: int) -> str:
    return f"must be {'a positive integer' if smallest == 1 else 'an integer'} from {smallest} to 2**63 - 1"


def empty_problem(ann_file: str, data: dict[str, Any]) -> str | None:
    """Why a checked split cannot be trained or scored, having no object (not crowd) left, or None.
    Training (DetectionDataModule) and `detlab-data check` both ask this."""
    if any(not a.get("iscrowd", 0) for a in data["annotations"]):
        return None
    return (
        f"{ann_file} has no object to learn from or score against ({len(data['images'])} images, every annotation "
        "crowd, ignored or skipped); annotate at least one object"
    )


def _partly_outside(ann: dict, img: dict) -> bool:
    x, y, w, h = ann["bbox"]
    return x < 0 or y < 0 or x + w > img["width"] or y + h > img["height"]


def _clip_note(ann: dict, img: dict, ann_file: str) -> str:
    return (
        f"{ann_file}: image id={ann['image_id']}, annotation id={ann['id']}: field 'bbox'={ann['bbox']} lies partly "
        f"outside the {img['width']}x{img['height']} image; clipped in the training target"
    )


def problem_report(ann_file: str, problems: list[str], fix: str = INVALID_FIX) -> str:
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} invalid annotation(s) or image(s) in {ann_file}:\n  {listed}{more}\n({fix})"

