"""The report's figures for a paper (PNG at 200 dpi and PDF): AP against ms per image with its Pareto front, one
bar chart per metric, and the differences from the baseline per class or error type."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from detlab.report.stats import Interval
from detlab.report.tables import SPEED, Row, axis_label, interval_name, scale, valid_range


DPI = 200


LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}  # text stays readable on lines


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (ms, AP) that no other point beats on both (faster and at least as accurate, or as
    fast and more accurate), sorted by ms."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_speed_accuracy(
    rows: Sequence[Row], path: Path, metric: str = "AP", title: str = "", device: str | None = None
) -> Figure:
    """AP against ms per image, one point per configuration with 95% intervals on both axes, the Pareto front."""
    missing = [r.label for r in rows if math.isnan(r.stats[SPEED].estimate) or math.isnan(r.stats[metric].estimate)]
    rows = [r for r in rows if r.label not in missing]
    k = scale(metric)
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)  # a canvas of our own (no pyplot state): label placement measures text on it
    ax = fig.subplots()
    points = [(r.stats[SPEED].estimate, r.stats[metric].estimate * k) for r in rows]
    for r, (x, y) in zip(rows, points):
        xerr, yerr = _error_bar(r.stats[SPEED], 1.0, SPEED), _error_bar(r.stats[metric], k, metric)
        color = "C3" if r.is_baseline else "C0"
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=3, color=color, alpha=0.9)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="C1", lw=2.5, alpha=0.6,
                label="Pareto front (faster and more accurate than the rest)", zorder=3)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(axis_label(SPEED) + (f", {device}" if device else ""))
    ax.set_ylabel(axis_label(metric))
    ax.set_title(title or f"{metric} against speed")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    _place_labels(ax, [r.label + (" (baseline)" if r.is_baseline else "") for r in rows], points)
    caption = "points: mean of {seeds}; bars: 95% t-intervals on both axes (clipped to the valid range)"
    if missing:  # a configuration of the table without a point has to say so, not vanish
        caption += f"; without {SPEED} or {metric}, not drawn: {', '.join(missing)}"
    _caption(fig, rows, caption)
    _save(fig, path)
    return fig


def _place_labels(ax: Any, labels: Sequence[str], points: Sequence[tuple[float, float]]) -> None:
    """Each label beside its point, at the first offset where it covers no point and no label placed before."""
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.draw_without_rendering()  # the layout (and so the data-to-pixel transform) as it will be saved
    pixels = ax.transData.transform(points)
    taken = [Bbox.from_extents(x - 6, y - 6, x + 6, y + 6) for x, y in pixels]  # the markers
    sides = [(7, 5, "left", "bottom"), (7, -5, "left", "top"), (-7, 5, "right", "bottom"), (-7, -5, "right", "top"),
             (9, 0, "left", "center"), (-9, 0, "right", "center"), (0, 9, "center", "bottom"), (0, -9, "center", "top")]
    for text, xy in zip(labels, points):
        for dx, dy, ha, va in sides:
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                               bbox=LABEL_BOX, zorder=4)
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
            note.remove()
        else:  # crowded on every side: the first side, without the box that would hide what is under it
            note = ax.annotate(text, xy, xytext=sides[0][:2], textcoords="offset points", fontsize=8, zorder=4)
            box = note.get_window_extent(renderer)
        taken.append(box)


def plot_metrics(rows: Sequence[Row], metrics: Sequence[str], path: Path, title: str = "") -> Figure:
    """One bar chart per metric: a bar per configuration (mean, 95% interval) and a dot per seed."""
    grid_rows, grid_cols = math.ceil(len(metrics) / 2), min(2, len(metrics))
    panel_width = max(4.3, 0.7 + 0.65 * len(rows))  # room for each configuration's tick label
    fig = Figure(figsize=(panel_width * grid_cols, 3.6 * grid_rows), layout="constrained")
    axes = fig.subplots(grid_rows, grid_cols, squeeze=False).ravel()
    x = np.arange(len(rows))
    for ax, metric in zip(axes, metrics):
        k = scale(metric)
        means = [r.stats[metric].estimate * k for r in rows]
        colors = ["C3" if r.is_baseline else "C0" for r in rows]
        yerr = np.array([_error_bar(r.stats[metric], k, metric) for r in rows])[:, :, 0].T  # [2, configurations]
        ax.bar(x, means, color=colors, alpha=0.6, yerr=yerr, capsize=4)
        for i, r in enumerate(rows):
            seeds = r.group.values(metric) * k
            ax.plot(np.full(len(seeds), i), seeds, "k.", ms=4)
        ax.set_xticks(x, [r.label for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(axis_label(metric), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    _caption(fig, rows, "bars: mean of {seeds}, 95% t-interval (clipped to the valid range); dots: single seeds; red: the baseline")
    _save(fig, path)
    return fig


def plot_differences(rows: Sequence[Row], items: Sequence[str], path: Path, prefix: str, title: str,
                     paired: bool = False) -> Figure:
    """Each configuration's difference from the baseline per item (class or error type): a point at the mean
    difference with its 95% interval (Welch's, or paired), items down the side, a line at 0."""
    others = [r for r in rows if not r.is_baseline]
    baseline = next(r for r in rows if r.is_baseline)
    fig = Figure(figsize=(7.5, 1.2 + 0.32 * len(items) * max(1, len(others)) ** 0.5), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(items))
    step = 0.8 / max(1, len(others))
    for j, r in enumerate(others):
        offset = (j - (len(others) - 1) / 2) * step
        diffs = [r.diffs[m] for m in items]
        k = np.array([scale(m) for m in items])
        estimate = np.array([d.estimate for d in diffs]) * k
        spread = np.array([[d.estimate - d.low, d.high - d.estimate] if not math.isnan(d.low) else [0.0, 0.0]
                           for d in diffs]).T * k
        ax.errorbar(estimate, y + offset, xerr=spread, fmt="o", ms=4, capsize=2, color=f"C{j}", label=r.label)
    ax.axvline(0, color="0.3", lw=1)
    ax.set_yticks(y, [m.removeprefix(prefix) for m in items], fontsize=8)
    ax.invert_yaxis()
    unit = "AP (points)" if prefix == "AP/" else "dAP50 (points)"
    ax.set_xlabel(f"difference from the baseline ({baseline.label}), {unit}")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _caption(fig, rows, "points: mean difference over {seeds}; bars: " + interval_name(paired))
    _save(fig, path)
    return fig


def _error_bar(s: Interval, k: float, metric: str) -> list[list[float]]:
    """[[below], [above]] for matplotlib, the interval clipped to the metric's valid range (no negative AP or
    milliseconds); zero where the interval is unknown (one seed)."""
    if math.isnan(s.low):
        return [[0.0], [0.0]]
    low, high = valid_range(metric)
    return [[(s.estimate - max(s.low, low)) * k], [(min(s.high, high) - s.estimate) * k]]


def _caption(fig: Figure, rows: Sequence[Row], text: str) -> None:
    """A caption line under the plot, as a paper's figure needs: what a point or bar and its interval are."""
    counts = sorted({max((s.n for s in r.stats.values()), default=0) for r in rows})
    seeds = f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"
    fig.supxlabel(text.format(seeds=seeds), fontsize=8, color="0.3")


def _save(fig: Figure, path: Path) -> None:
    """PNG at DPI for reading, and PDF beside it (vector, for a paper)."""
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".pdf"))
