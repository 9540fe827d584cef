"""The error analysis (detlab.evaluation.analysis) as figures for the run directory: PR curves per class, the
TIDE breakdown, the confusion matrix with background and the calibration curve. PNG at 200 dpi and PDF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detlab.evaluation.analysis import ERROR_TYPES

DPI = 200
NAMED_CLASSES = 10  # PR curves: named up to the 10 colours of the cycle, so that a colour names one class


def plot_error_analysis(result: dict[str, Any], folder: Path) -> list[Path]:
    """Write the figures of what result holds (pr_curves; errors, confusion_matrix and calibration with hotcoco)
    into folder; return the PNG paths. A figure of no data is not drawn: no PR curve without ground truth, no
    confusion matrix that counts nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = {"pr_curves": _pr_curves, "errors": _errors, "confusion_matrix": _confusion, "calibration": _calibration}
    written = []
    for key, plot in plots.items():
        if _has_data(key, result.get(key)):
            fig = Figure(figsize=(7.0, 4.6), layout="constrained")
            FigureCanvasAgg(fig)
            plot(fig, result[key])
            path = folder / f"{key}.png"
            fig.savefig(path, dpi=DPI)
            fig.savefig(path.with_suffix(".pdf"))
            written.append(path)
    return written


def _has_data(key: str, data: dict[str, Any] | None) -> bool:
    if not data:
        return False
    if key == "pr_curves":
        return bool(data["AP50"])  # the classes with ground truth
    if key == "confusion_matrix":
        return bool(np.any(data["matrix"]))
    return True


def _pr_curves(fig: Figure, curves: dict[str, Any]) -> None:
    """Each class's curve, named in the legend up to NAMED_CLASSES classes (above, a legend of every class covers
    the axes: thin grey lines, as ultralytics draws COCO's 80), and their mean in black, whose area is COCO's AP."""
    axes = fig.subplots(1, 2, sharey=True)
    recall = curves["recall"]
    count = len(curves["AP50"])
    named = count <= NAMED_CLASSES
    for ax, key, iou in zip(axes, ("AP50", "AP75"), ("0.50", "0.75")):
        for name, precision in curves[key].items():
            if named:
                ax.plot(recall, precision, lw=1.2, label=f"{name} ({np.mean(precision) * 100:.1f})")
            else:
                ax.plot(recall, precision, lw=0.5, color="0.65")
        mean = np.mean(list(curves[key].values()), axis=0)  # [R]: mean over the classes, as COCO's AP
        ax.plot(recall, mean, lw=2.5, color="k", label=f"mean of {count} ({key} {np.mean(mean) * 100:.1f})")
        ax.set(title=f"IoU {iou}", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, title="class (AP, points)" if named else None, title_fontsize=6, loc="best")
    axes[0].set_ylabel("interpolated precision")
    classes = "per class" if named else f"of {count} classes in grey (the AP of each in results.json)"
    fig.suptitle(f"Precision-recall {classes} and their mean\n(area all, maxDets 100)", fontsize=10)


def _errors(fig: Figure, errors: dict[str, Any]) -> None:
    ax = fig.subplots()
    values = [errors["dAP"][k] * 100 for k in ERROR_TYPES]
    bars = ax.bar(ERROR_TYPES, values, color="C3", alpha=0.7)
    ax.bar_label(bars, labels=[f"n={errors['counts'][k]}" for k in ERROR_TYPES], fontsize=7)
    ax.set_ylabel("dAP50 (points): AP50 gained by fixing it")
    ax.set_title(f"TIDE error breakdown (AP50 {errors['AP50'] * 100:.1f})")
    ax.grid(True, axis="y", alpha=0.3)


def _confusion(fig: Figure, confusion: dict[str, Any]) -> None:
    ax = fig.subplots()
    matrix = np.asarray(confusion["matrix"], dtype=np.float64)
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    if len(matrix) <= 21:  # counts stay readable up to 20 classes
        for (i, j), count in np.ndenumerate(matrix.astype(int)):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6)
    # The figure grows with the classes: at least a tenth of an inch (7.2 pt) a row, so that every class is named
    # at COCO's 80 without one label over the next (the counts need the 3.6 inches up to 20 classes).
    side = max(3.6, 0.1 * len(matrix))
    fig.set_size_inches(side + 2.2, side + 1.5)
    fontsize = 7 if len(matrix) <= 21 else 5.5
    ticks = range(len(confusion["classes"]))
    ax.set_xticks(ticks, confusion["classes"], rotation=90, fontsize=fontsize)
    # A row's colour is a fraction of its total: the total beside its name (objects of the class; false positives
    # on background) keeps 1 missed object from reading as 200, where the cells are too small for counts.
    totals = matrix.sum(axis=1).astype(int)
    ax.set_yticks(ticks, [f"{name} ({n})" for name, n in zip(confusion["classes"], totals)], fontsize=fontsize)
    ax.set(xlabel="predicted class", ylabel="ground-truth class (row total)",
           title=f"Confusion at IoU {confusion['iou_thr']:.2f} (colour: fraction of the row)")
    fig.colorbar(image, ax=ax, shrink=0.8)


def _calibration(fig: Figure, calibration: dict[str, Any]) -> None:
    ax = fig.subplots()
    bins = [b for b in calibration["bins"] if b["count"]]
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfectly calibrated")
    ax.plot([b["confidence"] for b in bins], [b["precision"] for b in bins], "o-", color="C0", clip_on=False,
            label="detections (n per bin)")
    for b in bins:  # ECE weighs each bin by its count: a point of 3 detections is not one of 3000
        ax.annotate(f"n={b['count']}", (b["confidence"], b["precision"]), xytext=(0, 6), textcoords="offset points",
                    ha="center", fontsize=6)
    ax.set(xlabel="score (mean in its bin)", ylabel=f"fraction matched at IoU {calibration['iou_thr']:.2f}",
           xlim=(0, 1), ylim=(0, 1.02),
           title=f"Calibration: ECE {calibration['ECE']:.3f}, MCE {calibration['MCE']:.3f}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
