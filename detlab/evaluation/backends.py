"""The thin layer over the COCO APIs: read an annotation file, index box results, run COCOeval.

Three engines, one choice (``eval.backend``, ``--backend``), the same numbers:
- hotcoco (Rust; the default): a port of pycocotools' evaluate/accumulate/summarize, equal to it to the bit
  in the suite's cases and the fastest of the three (`make bench`);
- faster-coco-eval (C++ evaluate/accumulate), an option. Equal up to float rounding (~1e-16): pycocotools
  divides precision by tp + fp + eps, so a perfect AP reads 0.9999999999999998 there and 1.0 here;
- pycocotools, the reference every engine must equal (the suite checks it).

The results index is built exactly as pycocotools' ``loadRes`` builds box results (ids from 1,
``area = w * h``, ``iscrowd = 0``), so the numbers are those of the official API, but never by calling
pycocotools' ``loadRes`` on a list of dicts: it crashes on an empty result list and its asserts name neither
the file nor the offending ids. For pycocotools and faster-coco-eval we index the dicts ourselves; hotcoco's
``loadRes`` takes the [N, 7] array form (empty too) and needs no per-detection Python objects, for ids that
float64 holds exactly (up to 2**53; beyond, the dicts).
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlab.data.coco.checker import SCORING_IMAGE_KEYS, check_coco, problem_report
from detlab.errors import ConfigError, DataError

BACKENDS = ("hotcoco", "faster_coco_eval", "pycocotools")
DEFAULT_BACKEND = "hotcoco"
MAX_DETS = 100  # COCOeval's params.maxDets[-1]: the detections per image and category that any number counts


@dataclass(frozen=True)
class BoxResults:
    """COCO box results held as arrays (no per-detection Python objects until COCOeval needs them).

    image_ids:    [N] int64 image ids of the annotation file.
    category_ids: [N] int64 category ids of the annotation file.
    bbox_xywh:    [N, 4] float64 (x, y, w, h) in original image pixels.
    scores:       [N] float64.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    bbox_xywh: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> BoxResults:
        ints = np.zeros(0, dtype=np.int64)
        return BoxResults(ints, ints, np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.float64))

    @staticmethod
    def concat(parts: Sequence[BoxResults]) -> BoxResults:
        if not parts:
            return BoxResults.empty()
        return BoxResults(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.category_ids for p in parts]),
            np.concatenate([p.bbox_xywh for p in parts]),
            np.concatenate([p.scores for p in parts]),
        )

    def select(self, keep: np.ndarray) -> BoxResults:
        """The results where the mask keep [N] is True (or at the indices keep)."""
        return BoxResults(self.image_ids[keep], self.category_ids[keep], self.bbox_xywh[keep], self.scores[keep])

    def top_per_image_and_category(self, k: int) -> BoxResults:
        """The k highest-scoring results of each (image, category), in their order here: the ones COCOeval's
        evaluateImg keeps (a stable sort by score, so a tie goes to the earlier result)."""
        order = np.lexsort((np.arange(len(self)), -self.scores, self.category_ids, self.image_ids))
        image, category = self.image_ids[order], self.category_ids[order]
        starts = np.flatnonzero(np.r_[True, (image[1:] != image[:-1]) | (category[1:] != category[:-1])])
        rank = np.arange(len(self)) - np.repeat(starts, np.diff(np.r_[starts, len(self)]))
        keep = np.zeros(len(self), dtype=bool)
        keep[order[rank < k]] = True
        return self.select(keep)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown COCO evaluation backend {backend!r}; use one of {BACKENDS}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow the COCO APIs' progress prints ("loading annotations...", "DONE (t=0.01s)").

    If anything raises inside, what was printed is replayed on stderr before the error propagates, so that
    silencing the chatter never hides a diagnostic.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise


def load_ground_truth(ann_file: str, backend: str) -> Any:
    """The backend's COCO object for a COCO annotation file, with errors that name the file.

    The file is checked first by the rules training reads it by (detlab.data.coco.checker): without that, the
    engines disagree on a broken file. pycocotools and faster-coco-eval crash deep inside on an annotation
    without `area` or `bbox`, hotcoco scores it; a NaN box scores as an object no detection can match; and a
    repeated annotation id keeps one box of those that share it, in every engine.
    """
    check_backend(backend)
    checked = check_coco(ann_file, image_keys=SCORING_IMAGE_KEYS)
    if checked.problems:
        raise DataError(problem_report(ann_file, checked.problems, fix="fix the file: every engine would score it "
                                       "differently, or crash"))
    coco = _coco_class(backend)()
    try:
        coco.dataset = checked.data
        with quiet():
            coco.createIndex()
    except ValueError as err:  # hotcoco types every field COCO defines (a category's name, an image's license)
        raise DataError(f"{ann_file}: the {backend} engine cannot read it: {err}") from None
    return coco


def categories(coco_gt: Any) -> dict[int, str]:
    """{category id: name} of a ground truth, through the index: hotcoco's ``dataset`` property converts the
    whole file to Python on every read (0.4 s for 100k annotations)."""
    return {int(c["id"]): str(c["name"]) for c in coco_gt.loadCats(coco_gt.getCatIds())}


def coco_eval(
    coco_gt: Any, results: BoxResults, img_ids: Sequence[int], cat_ids: Sequence[int], backend: str
) -> tuple[Any, BoxResults]:
    """Run COCOeval (bbox) on the given images and categories: the backend's evaluator, summarised, and the results
    it indexed (the detection id i + 1 of the evaluator is their result i).

    Its ``stats[:12]`` are the summary numbers in COCO's order (AP, AP50, AP75, APs, APm, APl, AR1, AR10,
    AR100, ARs, ARm, ARl; -1 where nothing is defined) and ``eval["precision"]`` the precision array
    [T, R, K, A, M] (IoU thresholds, recall thresholds, categories in sorted id order, area ranges, max
    detections); hotcoco's also has the error analysis (detlab.evaluation.analysis).

    Only the MAX_DETS best results of each image and category are indexed: COCOeval never counts the others in any
    number, and the error analysis reads its per-detection flags by their ids in that index.
    """
    scored = results.top_per_image_and_category(MAX_DETS)
    coco_dt = results_index(coco_gt, scored, backend)
    with quiet():
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster

            evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_ignore)
        else:
            evaluator = _cocoeval_class(backend)(coco_gt, coco_dt, "bbox")
        # Sorted and unique, as pycocotools' evaluate() makes them: hotcoco keeps the order it is given, and the
        # precision array's K axis (per-class AP, PR curves) is read in sorted category-id order.
        evaluator.params.imgIds = sorted({int(i) for i in img_ids})
        evaluator.params.catIds = sorted({int(c) for c in cat_ids})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator, scored


def results_index(coco_gt: Any, results: BoxResults, backend: str) -> Any:
    """The results as a COCO object of the backend, built the way ``loadRes`` builds box results (result i gets
    the id i + 1)."""
    # hotcoco's loadRes takes pycocotools' [N, 7] array form (and an empty one): no dicts. Its float64 holds ids
    # up to 2**53 exactly; a larger one would become another image's (or category's), so those results take dicts.
    ids = np.concatenate([results.image_ids, results.category_ids])
    if backend == "hotcoco" and np.abs(ids).max(initial=0) <= 2**53:
        rows = np.column_stack([results.image_ids, results.bbox_xywh, results.scores, results.category_ids])
        with quiet():
            return coco_gt.loadRes(rows.reshape(-1, 7).astype(np.float64))
    w, h = results.bbox_xywh[:, 2], results.bbox_xywh[:, 3]
    annotations = [
        {"id": i, "image_id": img, "category_id": cat, "bbox": box, "score": score, "area": area, "iscrowd": 0}
        for i, (img, cat, box, score, area) in enumerate(
            zip(
                results.image_ids.tolist(),
                results.category_ids.tolist(),
                results.bbox_xywh.tolist(),
                results.scores.tolist(),
                (w * h).tolist(),
            ),
            start=1,
        )
    ]
    coco_dt = _coco_class(backend)()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": annotations,
    }
    with quiet():
        coco_dt.createIndex()
    return coco_dt


def _coco_class(backend: str) -> type:
    # Imported on use: no import-time cost for the backends that are not chosen.
    if backend == "hotcoco":
        from hotcoco import COCO
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
    else:
        from faster_coco_eval import COCO
    return COCO


def _cocoeval_class(backend: str) -> type:
    """COCOeval of hotcoco or pycocotools (the same signature); faster-coco-eval's differs."""
    if backend == "hotcoco":
        from hotcoco import COCOeval
    else:
        from pycocotools.cocoeval import COCOeval
    return COCOeval


def _ignore(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's print_function: its progress messages are not wanted."""
