"""COCO box evaluation against the dataset's own annotation file, in original image ids and pixels.

`CocoEvaluator` accumulates each validation step's detections as compact arrays of COCO results, gathers
them across DDP ranks once in `compute()`, and scores them with COCOeval. The rules it follows:

- Only the images that were actually seen are scored (``params.imgIds`` is set to them). A partial val set
  (``limit_val_batches``, a sanity check) is therefore scored honestly on its own images: the objects of
  images never run are not counted as misses. `evaluate_results_file` has no record of which images were
  run, so it scores every image of the annotation file, as the official COCO protocol does.
- A DistributedSampler pads the last batches by repeating images; an image id seen more than once (on any
  ranks, or twice on one) keeps the detections of its first copy only (rank order, then update order).
- Only the evaluator's categories are scored (``params.catIds = category_ids``), so a model trained on a
  subset of the file's classes is not charged for the others.
- Per-class AP is the mean of COCO's precision array at IoU 0.50:0.95, area all, maxDets 100. Classes with
  no ground truth in the scored images have no AP (COCO marks them -1) and are left out of ``per_class_AP``,
  so the dict holds only real numbers (it is written to JSON and W&B tables); the mean of its values is AP.
- Summary numbers follow COCOeval exactly, including its -1 for a number with no ground truth at all (e.g.
  APs when no object is small). No detections at all is a valid outcome: COCOeval gives 0 for every number
  that has ground truth (and -1 where it has none); we run COCOeval on the empty result list rather than
  special-casing it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from detlab.evaluation.backends import DEFAULT_BACKEND, BoxResults, check_backend, coco_eval, load_ground_truth
from detlab.structures import Detections

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# (title, IoU, area, maxDets) of each summary number, as pycocotools' summarize() prints them.
_DESCRIPTIONS = {
    "AP": ("Average Precision", "0.50:0.95", "all", 100),
    "AP50": ("Average Precision", "0.50", "all", 100),
    "AP75": ("Average Precision", "0.75", "all", 100),
    "APs": ("Average Precision", "0.50:0.95", "small", 100),
    "APm": ("Average Precision", "0.50:0.95", "medium", 100),
    "APl": ("Average Precision", "0.50:0.95", "large", 100),
    "AR1": ("Average Recall", "0.50:0.95", "all", 1),
    "AR10": ("Average Recall", "0.50:0.95", "all", 10),
    "AR100": ("Average Recall", "0.50:0.95", "all", 100),
    "ARs": ("Average Recall", "0.50:0.95", "small", 100),
    "ARm": ("Average Recall", "0.50:0.95", "medium", 100),
    "ARl": ("Average Recall", "0.50:0.95", "large", 100),
}


class CocoEvaluator:
    """Accumulates per-image detections and computes the COCO table plus per-class AP.

    ann_file:     the COCO annotation file the images come from (original image ids and pixels).
    category_ids: label -> the file's category id (label k is category_ids[k]).
    class_names:  label -> name for ``per_class_AP``; the file's category names when None.
    backend:      "hotcoco" (default), "faster_coco_eval" or "pycocotools" (the reference they equal).
    """

    def __init__(
        self,
        ann_file: str,
        category_ids: Sequence[int],
        class_names: Sequence[str] | None = None,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        check_backend(backend)
        self.ann_file = str(ann_file)
        self.backend = backend
        self._gt = load_ground_truth(self.ann_file, backend)
        self.category_ids = [int(c) for c in category_ids]
        self.class_names = _class_names(self._gt, self.ann_file, self.category_ids, class_names)
        self._category_of_label = np.asarray(self.category_ids, dtype=np.int64)
        self._file_image_ids = np.unique(np.asarray(self._gt.getImgIds(), dtype=np.int64))
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated (call at the start of each validation epoch)."""
        self._seen: list[np.ndarray] = []  # image ids of each update, [B] each
        self._results: list[BoxResults] = []
        self._owner: list[np.ndarray] = []  # per detection, its image's index among all seen images
        self._num_seen = 0

    @torch.no_grad()
    def update(self, detections: list[Detections], image_ids: Tensor) -> None:
        """Add one batch: detections per image (boxes [N, 4] xyxy in original pixels) and image_ids [B]."""
        ids = image_ids.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if len(detections) != len(ids):
            raise ValueError(f"update() got {len(detections)} Detections for {len(ids)} image ids")
        unknown = ids[~np.isin(ids, self._file_image_ids)]
        if unknown.size:
            raise ValueError(f"image ids {unknown[:5].tolist()} are not images of {self.ann_file}")
        if len(ids) == 0:
            return
        # The input is a list of per-image tensors: one cat over it is the only per-image work.
        counts = [len(d.scores) for d in detections]
        boxes_xyxy = torch.cat([d.boxes for d in detections]).float().cpu().numpy().astype(np.float64)
        scores = torch.cat([d.scores for d in detections]).float().cpu().numpy().astype(np.float64)
        labels = torch.cat([d.labels for d in detections]).cpu().numpy().astype(np.int64)
        image_of_det = np.repeat(np.arange(len(ids)), counts)  # [N] index into this batch
        bad = (labels < 0) | (labels >= len(self.category_ids))
        if bad.any():
            bad_images = np.unique(ids[image_of_det[bad]])[:5].tolist()
            raise ValueError(
                f"labels {np.unique(labels[bad])[:5].tolist()} (images {bad_images}) are outside "
                f"0..{len(self.category_ids) - 1}, the classes of this evaluator"
            )
        bbox_xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)
        self._results.append(BoxResults(ids[image_of_det], self._category_of_label[labels], bbox_xywh, scores))
        self._owner.append(image_of_det + self._num_seen)
        self._seen.append(ids)
        self._num_seen += len(ids)

    def compute(self) -> dict[str, Any]:
        """Gather all ranks' results once, drop DDP padding duplicates, and score the images seen.

        Returns {"metrics": {name: float for name in METRIC_NAMES}, "per_class_AP": {class_name: float}},
        the same dict on every rank.
        """
        seen, results = _gather_and_deduplicate(self._local_state())
        if seen.size == 0:
            raise RuntimeError("CocoEvaluator.compute() before any update(): there are no images to score")
        names = dict(zip(self.category_ids, self.class_names))
        return _score(self._gt, results, seen, names, self.backend)

    def _local_state(self) -> tuple[np.ndarray, BoxResults, np.ndarray]:
        """This rank's seen image ids [I], results [N] and each result's index into the seen ids [N]."""
        seen = np.concatenate(self._seen) if self._seen else np.zeros(0, dtype=np.int64)
        owner = np.concatenate(self._owner) if self._owner else np.zeros(0, dtype=np.int64)
        return seen, BoxResults.concat(self._results), owner


def _gather_and_deduplicate(local: tuple[np.ndarray, BoxResults, np.ndarray]) -> tuple[np.ndarray, BoxResults]:
    """All ranks' seen image ids (unique, sorted) [I] and results with one copy per image [N]."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, local)
    else:
        states = [local]
    offsets = np.cumsum([0] + [len(seen) for seen, _, _ in states])
    seen = np.concatenate([s for s, _, _ in states])
    owner = np.concatenate([o + offset for (_, _, o), offset in zip(states, offsets)])
    results = BoxResults.concat([r for _, r, _ in states])
    unique_ids, first_copy = np.unique(seen, return_index=True)
    is_first_copy = np.zeros(len(seen), dtype=bool)
    is_first_copy[first_copy] = True
    return unique_ids, results.select(is_first_copy[owner])


def _score(coco_gt: Any, results: BoxResults, img_ids: np.ndarray, names: dict[int, str], backend: str) -> dict:
    """COCOeval on img_ids and the categories of names (category id -> class name); the output dict."""
    cat_ids = list(names)
    stats, precision = coco_eval(coco_gt, results, img_ids.tolist(), cat_ids, backend)
    # precision [T, R, K, A, M]: K in sorted category-id order; area index 0 is "all", M index -1 is 100.
    per_cat = precision[:, :, :, 0, -1]
    valid = per_cat > -1
    counts = valid.sum(axis=(0, 1))
    sums = np.where(valid, per_cat, 0.0).sum(axis=(0, 1))
    ap_of_cat = {c: float(s / n) for c, s, n in zip(sorted(cat_ids), sums, counts) if n > 0}
    return {
        "metrics": {name: float(v) for name, v in zip(METRIC_NAMES, stats)},
        "per_class_AP": {names[c]: ap_of_cat[c] for c in cat_ids if c in ap_of_cat},
    }


def _class_names(coco_gt: Any, ann_file: str, category_ids: list[int], class_names: Sequence[str] | None) -> list[str]:
    file_names = {int(c["id"]): str(c["name"]) for c in coco_gt.dataset["categories"]}
    unknown = [c for c in category_ids if c not in file_names]
    if unknown:
        raise ValueError(f"category ids {unknown} are not categories of {ann_file} (it has {sorted(file_names)})")
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category_ids {category_ids} repeat an id")
    names = [file_names[c] for c in category_ids] if class_names is None else [str(n) for n in class_names]
    if len(names) != len(category_ids):
        raise ValueError(f"{len(names)} class_names for {len(category_ids)} category_ids")
    if len(set(names)) != len(names):
        raise ValueError(f"class names {names} repeat a name; per-class AP is keyed by name")
    return names


def evaluate_results_file(ann_file: str, results_file: str, backend: str = DEFAULT_BACKEND) -> dict[str, Any]:
    """Score a COCO box results json (from any framework) against a COCO annotation file.

    Every image and category of the annotation file is scored (the official protocol); per-class AP is keyed
    by the file's category names. Returns the same dict as `CocoEvaluator.compute`.
    """
    check_backend(backend)
    coco_gt = load_ground_truth(str(ann_file), backend)
    categories = {int(c["id"]): str(c["name"]) for c in coco_gt.dataset["categories"]}
    if len(set(categories.values())) != len(categories):
        raise ValueError(f"{ann_file}: category names repeat; per-class AP is keyed by name")
    image_ids = np.unique(np.asarray(coco_gt.getImgIds(), dtype=np.int64))
    results = _read_results(str(results_file), image_ids, np.asarray(sorted(categories), dtype=np.int64))
    return _score(coco_gt, results, image_ids, categories, backend)


class ResultsFileError(ValueError):
    """A COCO results file that cannot be scored as written; the message names the file, detection and field.

    (#17's error policy gives it its final place among detlab's exception types.)
    """


def _read_results(results_file: str, image_ids: np.ndarray, category_ids: np.ndarray) -> BoxResults:
    """A COCO results json (a list of {image_id, category_id, bbox [x, y, w, h], score}) as BoxResults.

    Nothing is coerced: pycocotools rejects an image_id of 74.5 or "74", and a bbox of 8 numbers reshaped to
    4 pairs boxes with the wrong detections, so each is an error naming the detection's index and field.
    """
    try:
        with open(results_file) as f:
            records = json.load(f)
    except json.JSONDecodeError as err:
        raise ResultsFileError(f"{results_file}: not a valid JSON file ({err})") from err
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
    bbox = record["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return f"bbox {bbox!r} is not 4 numbers [x, y, w, h] in original image pixels"
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


def format_table(result: dict[str, Any]) -> str:
    """The COCO summary (12 numbers with pycocotools' descriptions, aligned) and per-class AP, as text."""
    metrics, per_class = result["metrics"], result.get("per_class_AP", {})
    lines = ["COCO box evaluation"]
    for name in METRIC_NAMES:
        title, iou, area, max_dets = _DESCRIPTIONS[name]
        where = f"@[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ]"
        lines.append(f"  {name:<6}{title:<18} {where} = {_value(metrics[name])}")
    if per_class:
        lines.append("Per-class AP @[ IoU=0.50:0.95 | area=all | maxDets=100 ]")
        width = max(len(n) for n in per_class)
        lines += [f"  {name:<{width}}  {_value(ap)}" for name, ap in per_class.items()]
    if any(v < 0 for v in metrics.values()):
        lines.append("  (n/a: no ground truth in that range; COCO reports -1)")
    return "\n".join(lines)


def _value(v: float) -> str:
    return "  n/a" if v < 0 or math.isnan(v) else f"{v:.3f}"
