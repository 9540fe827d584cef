"""Scoring a COCO box results file (from any framework) against a COCO annotation file, after checking it.

Nothing here imports torch, Lightning or model code: `detlab-eval results` starts in about the time of
Python, numpy and the engine.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from detlab.data.coco.checker import ID_MAX
from detlab.errors import DataError
from detlab.evaluation.backends import DEFAULT_BACKEND, BoxResults, categories, check_backend, load_ground_truth
from detlab.evaluation.coco_table import score

def evaluate_results_file(ann_file: str, results_file: str, backend: str = DEFAULT_BACKEND) -> dict[str, Any]:
    """Score a COCO box results json (from any framework) against a COCO annotation file.

    Every image and category of the annotation file is scored (the official protocol); per-class AP is keyed
    by the file's category names. Returns the same dict as `CocoEvaluator.compute`.
    """
    check_backend(backend)
    coco_gt = load_ground_truth(str(ann_file), backend)
    names = categories(coco_gt)  # distinct: the annotation file's check (load_ground_truth) refuses a repeated name
    image_ids = np.unique(np.asarray(coco_gt.getImgIds(), dtype=np.int64))
    file_names = {int(img["id"]): str(img.get("file_name") or "") for img in coco_gt.loadImgs(image_ids.tolist())}
    results = _read_results(str(results_file), image_ids, np.asarray(sorted(names), dtype=np.int64), file_names)
    return score(coco_gt, results, image_ids, names, backend)


class ResultsFileError(DataError):
    """A COCO results file that cannot be scored as written; the message names the file, detection and field."""


def _read_results(
    results_file: str, image_ids: np.ndarray, category_ids: np.ndarray, file_names: dict[int, str] | None = None
) -> BoxResults:
    """A COCO results json (a list of {image_id, category_id, bbox [x, y, w, h], score}) as BoxResults.

    Nothing is coerced: pycocotools rejects an image_id of 74.5 or "74", and a bbox of 8 numbers reshaped to
    4 pairs boxes with the wrong detections, so each is an error naming the detection's index and field.
    file_names: {image id: the annotation file's file_name}; a detection that names its image's file (detlab-predict
    on plain files) must name that image id's.
    """
    try:
        with open(results_file, "rb") as f:
            records = json.loads(f.read())  # bytes: json detects the UTF encoding, as the standard allows
    except FileNotFoundError:
        raise ResultsFileError(f"{results_file}: no such file") from None
    except IsADirectoryError:
        raise ResultsFileError(f"{results_file}: is a folder; give the results json file in it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"{results_file}: not a valid JSON file ({err})") from err
    except RecursionError:  # json's decoder recurses per level: ~100,000 nested brackets
        raise ResultsFileError(f"{results_file}: JSON nested too deeply to read; not a COCO results file") from None
    if not isinstance(records, list):
        raise ResultsFileError(
            f"{results_file}: a COCO results file is a JSON list of detections, got a {type(records).__name__}"
        )
    for i, record in enumerate(records):  # a check per record: the JSON is already Python objects
        problem = _record_problem(record)
        if problem:
            raise ResultsFileError(f"{results_file}: detection {i}: {problem}")
    results = BoxResults(
        np.asarray([r["image_id"] for r in records], dtype=np.int64).reshape(-1),
        np.asarray([r["category_id"] for r in records], dtype=np.int64).reshape(-1),
        np.asarray([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4),
        np.asarray([r["score"] for r in records], dtype=np.float64).reshape(-1),
    )
    _check_finite(results_file, "bbox", np.isfinite(results.bbox_xywh).all(axis=1), results.bbox_xywh)
    _check_finite(results_file, "score", np.isfinite(results.scores), results.scores)
    _check_known(results_file, "image_id", results.image_ids, image_ids)
    _check_known(results_file, "category_id", results.category_ids, category_ids)
    _check_file_names(results_file, records, file_names or {})
    return results


_FIELDS = ("image_id", "category_id", "bbox", "score")


def _record_problem(record: Any) -> str | None:
    """What is wrong with one detection's types (None when nothing is): ids ints, bbox 4 numbers, score a number."""
    if not isinstance(record, dict) or not set(_FIELDS) <= record.keys():
        missing = [f for f in _FIELDS if not isinstance(record, dict) or f not in record]
        return f"lacks {missing} (each detection needs {list(_FIELDS)})"
    for field in ("image_id", "category_id"):
        if not _is_int(record[field]):
            return f"{field} {record[field]!r} is not an integer; write the annotation file's {field}"
        if not 0 <= record[field] <= ID_MAX:  # no annotation file's id (the checker's range), nor one numpy holds
            return f"{field} {record[field]} is not in the annotation file"
    bbox = record["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return f"bbox {bbox!r} is not 4 numbers [x, y, w, h] in original image pixels"
    if bbox[2] < 0 or bbox[3] < 0:
        # COCO's area of a result is w * h: a negative one lies outside every area range, so COCOeval ignores the
        # box where it matches nothing (never a false positive), and -w * -h scores as a positive box.
        return f"bbox {bbox!r} has a negative width or height; write [x, y, w, h] with w, h >= 0 (not x2, y2)"
    if not _is_number(record["score"]):
        return f"score {record['score']!r} is not a number"
    return None


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool (a subclass of int), not 74.0 or "74"


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _check_finite(results_file: str, field: str, finite: np.ndarray, values: np.ndarray) -> None:
    """finite [N] per detection; json reads NaN and Infinity, which no box or score may be."""
    if not finite.all():
        first = int(np.argmin(finite))
        raise ResultsFileError(
            f"{results_file}: detection {first}: {field} {values[first].tolist()} is not finite "
            f"({(~finite).sum()} detections have a non-finite {field})"
        )


def _check_known(results_file: str, field: str, values: np.ndarray, known: np.ndarray) -> None:
    unknown = ~np.isin(values, known)
    if unknown.any():
        first = int(np.argmax(unknown))
        raise ResultsFileError(
            f"{results_file}: detection {first}: {field} {int(values[first])} is not in the annotation file "
            f"({unknown.sum()} detections have an unknown {field}: {np.unique(values[unknown])[:5].tolist()})"
        )


def _check_file_names(results_file: str, records: list[dict], file_names: dict[int, str]) -> None:
    """detlab-predict numbers plain image files 0..N-1 in sorted order and writes each one's `file_name` beside
    its image_id: scored against an annotation file whose ids are also 0..N-1 (or overlap them), every detection
    was matched against another image's objects, without a word (perfect detections of raccoon's 200 photos
    scored AP 0.014). A detection's file_name must name its image id's `file_name` in the file: the same base name
    (detlab-predict writes the base name; another tool may copy the record's file_name, folder and all)."""
    bases = {image_id: _base_name(name) for image_id, name in file_names.items() if name}
    wrong = [
        (i, r["file_name"], file_names[r["image_id"]]) for i, r in enumerate(records)
        if "file_name" in r and r["image_id"] in bases
        and r["file_name"] != bases[r["image_id"]] and _base_name(r["file_name"]) != bases[r["image_id"]]
    ]
    if wrong:
        first, named, expected = wrong[0]
        raise ResultsFileError(
            f"{results_file}: detection {first}: field 'file_name'={named!r}, but its image_id "
            f"{records[first]['image_id']} is {expected!r} in the annotation file ({len(wrong)} detections name "
            "another file than their image id's). detlab-predict numbers plain image files by their sorted order; "
            "predict on the annotation file itself (detlab-predict <ann.json> --img-dir <its image folder>), so that "
            "the results carry its image ids"
        )


def _base_name(file_name: object) -> str:
    """The last part of a file_name, with / or \\ between folders."""
    return str(file_name).replace("\\", "/").rsplit("/", 1)[-1]
