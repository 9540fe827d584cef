"""Error analysis of one COCOeval run: what the AP is made of, from the engine's own APIs, not code of ours.

- ``pr_curves``: per class, precision at COCO's 101 recall points at IoU 0.50 and 0.75 (area all, maxDets 100),
  read from the accumulated precision array (every engine has it);
- ``errors``: the TIDE breakdown at IoU 0.5 (hotcoco's ``tide_errors``): how much AP50 each error type costs,
  as dAP = AP50 with that type fixed - AP50, for Cls (right box, wrong class), Loc (right class, IoU 0.1-0.5),
  Both, Dupe (a second detection of a matched object), Bkg (no object near) and Miss (an object no detection
  covers); FP and FN fix every false positive / negative at once. With their counts. Only when there is ground
  truth (COCO's AP50 is not -1);
- ``confusion_matrix``: hotcoco's, at IoU 0.5: rows the ground-truth class, columns the predicted class, the last
  row and column "background" (a false positive counts in the background row, a missed object in the
  background column); of exactly the detections COCO scores at IoU 0.5 (area all, the 100 best per image and
  class): hotcoco's matrix knows no crowd regions, so the detections COCO ignores there (on a crowd region of
  their class, or outside area all's range) are left out, as COCO's own matching flags them, rather than counted
  as false positives;
- ``calibration``: hotcoco's reliability of the scores at IoU 0.5: ECE, MCE, 10 score bins with their mean
  confidence, precision (the fraction matched) and count, and ECE per class. Only when every score lies in
  [0, 1]: a reliability of logits or percentages means nothing (hotcoco refuses them), while AP, which ranks the
  scores, is defined for any (pycocotools scores them); the analysis then has no ``calibration``. Nor when COCO
  counts no detection at all: the reliability of nothing is undefined, not an ECE of 0.

TIDE, the confusion matrix and calibration need hotcoco (the default engine): with faster_coco_eval or
pycocotools only ``pr_curves`` is computed.

Plain Python containers only: the dict goes into results.json and the W&B run as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detlab.evaluation.backends import BoxResults, results_index

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
BACKGROUND = "background"


def error_analysis(evaluator: Any, names: dict[int, str], backend: str, results: BoxResults) -> dict[str, Any]:
    """The analysis of an evaluated, accumulated COCOeval whose params.catIds are the keys of names (category id ->
    class name); results are those it indexed (what backends.coco_eval returns beside it)."""
    scores = results.scores
    analysis = {"pr_curves": pr_curves(evaluator, names)}
    if backend == "hotcoco":
        file_names = {str(c["name"]): int(c["id"]) for c in evaluator.cocoGt.loadCats(list(names))}
        ours = {file_name: names[cat] for file_name, cat in file_names.items()}  # the file's name -> ours
        if evaluator.stats[1] >= 0:  # AP50 -1: no object to score; TIDE's AP50 and dAP would read 0, not absent
            analysis["errors"] = _errors(evaluator.tide_errors())
        analysis["confusion_matrix"] = _confusion(_confusion_matrix(evaluator, results), names)
        if np.all((scores >= 0) & (scores <= 1)):
            calibration = evaluator.calibration()
            if calibration["num_detections"]:  # of none (none kept, or all on crowd regions) hotcoco says ECE 0
                analysis["calibration"] = _calibration(calibration, ours)
    return analysis


def pr_curves(evaluator: Any, names: dict[int, str]) -> dict[str, Any]:
    """{"recall": [R], "AP50": {class: [R] precision}, "AP75": {...}}; classes without ground truth are left out.

    precision [T, R, K, A, M]: K in sorted category-id order; area index 0 is "all", M index -1 is maxDets 100.
    """
    precision = np.asarray(evaluator.eval["precision"])
    iou_thrs = np.asarray(evaluator.params.iouThrs)
    curves: dict[str, Any] = {"recall": [float(r) for r in evaluator.params.recThrs]}
    for key, iou in (("AP50", 0.5), ("AP75", 0.75)):
        t = int(np.argmin(np.abs(iou_thrs - iou)))
        per_class = precision[t, :, :, 0, -1]  # [R, K]
        curves[key] = {
            names[cat]: per_class[:, k].tolist()
            for k, cat in enumerate(sorted(names))
            if (per_class[:, k] > -1).any()
        }
    return curves


def _confusion_matrix(evaluator: Any, results: BoxResults) -> dict[str, Any]:
    """hotcoco's confusion matrix at IoU 0.5 of the detections that evaluator (hotcoco's, evaluated) scores there.

    The matrix matches every detection it is given and knows no crowd regions, so it is given only those COCO's
    matching did not ignore at IoU 0.5, area all (pycocotools' dtIgnore): the keys of image_diagnostics' dt_status,
    detection ids of coco_eval's index. A score threshold above every score skips its label-error search (most of
    its time). The matrix runs on the evaluator's params (images, categories), with no cap of its own (its default
    is 100 per image over all classes): the index already holds COCO's 100 per image and class.
    """
    from hotcoco import COCOeval

    status = evaluator.image_diagnostics(iou_thr=0.5, score_thr=float("inf"))["dt_status"]
    scored = results.select(np.sort(np.fromiter(status, dtype=np.int64, count=len(status))) - 1)
    matrix_eval = COCOeval(evaluator.cocoGt, results_index(evaluator.cocoGt, scored, "hotcoco"), "bbox")
    matrix_eval.params = evaluator.params
    return matrix_eval.confusion_matrix(iou_thr=0.5, max_det=max(len(scored), 1))


def _errors(tide: dict[str, Any]) -> dict[str, Any]:
    delta = tide["delta_ap"]
    return {
        "AP50": float(tide["ap_base"]),
        "dAP": {k: float(delta[k]) for k in (*ERROR_TYPES, "FP", "FN")},
        "counts": {k: int(tide["counts"][k]) for k in ERROR_TYPES},
        "pos_thr": float(tide["pos_thr"]),
        "bg_thr": float(tide["bg_thr"]),
    }


def _confusion(confusion: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    classes = [names[int(c)] for c in confusion["cat_ids"]] + [BACKGROUND]
    return {
        "classes": classes,
        "matrix": np.asarray(confusion["matrix"]).astype(int).tolist(),  # [K + 1, K + 1], rows ground truth
        "iou_thr": float(confusion["iou_thr"]),
    }


def _calibration(calibration: dict[str, Any], ours: dict[str, str]) -> dict[str, Any]:
    return {
        "ECE": float(calibration["ece"]),
        "MCE": float(calibration["mce"]),
        "bins": [
            {
                "low": float(b["bin_lower"]),
                "high": float(b["bin_upper"]),
                "confidence": float(b["avg_confidence"]),
                "precision": float(b["avg_accuracy"]),
                "count": int(b["count"]),
            }
            for b in calibration["bins"]
        ],
        "per_class_ECE": {ours[name]: float(v) for name, v in calibration["per_category"].items() if name in ours},
        "iou_thr": float(calibration["iou_threshold"]),
    }
