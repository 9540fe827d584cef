"""The COCO table: its 12 summary numbers and per-class AP, computed from one COCOeval run and printed.

Shared by `CocoEvaluator` (a training run's validation) and `evaluate_results_file` (any framework's results),
and free of torch and Lightning, so that scoring a results file starts fast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detlab.evaluation.analysis import error_analysis
from detlab.evaluation.backends import BoxResults, coco_eval

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


def score(coco_gt: Any, results: BoxResults, img_ids: np.ndarray, names: dict[int, str], backend: str) -> dict:
    """COCOeval on img_ids and the categories of names (category id -> class name); the output dict:
    {"metrics", "per_class_AP", "scored": {"images", "detections"}} and the error analysis
    (detlab.evaluation.analysis)."""
    cat_ids = list(names)
    evaluator, scored = coco_eval(coco_gt, results, img_ids.tolist(), cat_ids, backend)
    stats = np.asarray(evaluator.stats[:12], dtype=np.float64)
    precision = np.asarray(evaluator.eval["precision"])
    # precision [T, R, K, A, M]: K in sorted category-id order; area index 0 is "all", M index -1 is 100.
    per_cat = precision[:, :, :, 0, -1]
    valid = per_cat > -1
    counts = valid.sum(axis=(0, 1))
    sums = np.where(valid, per_cat, 0.0).sum(axis=(0, 1))
    ap_of_cat = {c: float(s / n) for c, s, n in zip(sorted(cat_ids), sums, counts) if n > 0}
    return {
        "metrics": {name: float(v) for name, v in zip(METRIC_NAMES, stats)},
        "per_class_AP": {names[c]: ap_of_cat[c] for c in cat_ids if c in ap_of_cat},
        "scored": {"images": len(img_ids), "detections": len(results)},  # what the numbers are of
        **error_analysis(evaluator, names, backend, scored),
    }


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
