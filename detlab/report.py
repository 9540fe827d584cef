"""detlab-report: the comparison table and plots of a study, from its runs.

    detlab-report multirun/focal_gamma/2026-01-01_10-00-00                # -> experiments/focal_gamma/
    detlab-report multirun/a multirun/b --baseline loss=ce_ohem --output experiments/mine
    detlab-report --wandb-project me/detlab --group focal_gamma --wandb  # runs from W&B, a chart back there

A run is a directory with results.json and .hydra/overrides.yaml (what `detlab-train` writes). Runs are
grouped by configuration: every command-line override except the seed (and any --ignore key). For each
configuration and metric: mean, sample standard deviation and a 95% confidence interval of the mean
(Student's t with n - 1 degrees of freedom); the difference from the baseline configuration with Welch's 95%
interval (no equal-variance assumption). Written to the output folder: results.md, results.csv (one row per
configuration), runs.csv (one row per run), speed_accuracy.png (AP against ms per image, the Pareto front
drawn) and metrics.png (one bar chart per metric). The figures are for a paper: PNG at 200 dpi and PDF, the
study's name as title, axes with units, a caption line saying what the points and bars are, intervals clipped
to the metric's valid range. With a baseline, per-class AP and the TIDE error breakdown (dAP per error type)
of each configuration against it, as tables and figures (per_class.png, errors.png). The report warns when speeds come from different devices or a busy machine
(p90/median latency above 1.5), and when runs come from different code or data. `ReportCallback` runs all of
it at the end of a Hydra multirun; the experiment configs register it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats
from hydra.experimental.callback import Callback
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from omegaconf import DictConfig

from detlab.evaluation.analysis import ERROR_TYPES
from detlab.errors import ConfigError, user_errors

log = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "ms_per_img")  # the Markdown table's columns unless --metrics says otherwise
SPEED = "ms_per_img"
IGNORED = ("seed",)
SPREAD_LIMIT = 1.5  # p90 / median latency above which a speed is flagged: the machine did other work meanwhile
DPI = 200
LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}  # text stays readable on lines


class ReportError(ConfigError):
    """Runs that cannot be reported as asked; the message says which and what to do."""


@dataclass
class Run:
    """One finished run: where it is, its overrides {key: value} and its numbers {metric: value}."""

    name: str
    overrides: dict[str, str]
    values: dict[str, float]
    study: str | None = None
    device: str | None = None
    speed_spread: float | None = None  # p90 / median of the batch-1 latency: above SPREAD_LIMIT the machine was busy
    pruned: bool = False  # stopped early by prune.* (detlab.pruning): its numbers are not its budget's
    provenance: dict[str, Any] = field(default_factory=dict)  # results.json["provenance"] (detlab.provenance)


@dataclass
class Group:
    """The runs of one configuration (the same overrides but for the ignored keys, i.e. the seeds)."""

    overrides: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> np.ndarray:
        return np.asarray([r.values[metric] for r in self.runs if metric in r.values], dtype=np.float64)


@dataclass
class Interval:
    """An estimate with its 95% interval; n and std only for a mean (a difference has dof instead)."""

    estimate: float
    low: float
    high: float
    n: int = 0
    std: float = math.nan
    dof: float = math.nan


# --- reading runs -------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> Run:
    """A run directory -> Run. COCO metrics, plus ms_per_img, img_per_s, params and gflops when recorded."""
    if not (run_dir / "results.json").is_file():
        raise ReportError(f"{run_dir}: no results.json (the run failed or has not finished)")
    results = json.loads((run_dir / "results.json").read_text())
    # COCO writes -1 where a metric is undefined (no ground truth of that size): missing, not a value.
    values = {k: float(v) for k, v in results.get("metrics", {}).items() if v is not None and v >= 0}
    speed = results.get("speed") or {}
    for key in ("ms_per_img", "img_per_s"):
        if key in speed:
            values[key] = float(speed[key])
    cost = results.get("complexity") or speed
    for key in ("params", "gflops"):
        if key in cost:
            values[key] = float(cost[key])
    # Per-class AP ("AP/<class>") and the TIDE breakdown ("dAP_<type>"): compared like any other number.
    values.update({f"AP/{name}": float(ap) for name, ap in (results.get("per_class_AP") or {}).items()})
    dap = (results.get("errors") or {}).get("dAP") or {}
    values.update({f"dAP_{kind}": float(dap[kind]) for kind in ERROR_TYPES if kind in dap})
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else {}
    study = (results.get("config") or {}).get("tracking", {}).get("group")
    total = (speed.get("latency_ms") or {}).get("total") or {}
    spread = total["p90"] / total["median"] if total.get("median") else None
    return Run(name=str(run_dir), overrides=overrides, values=values, study=study, device=speed.get("device"),
               speed_spread=spread, pruned=results.get("pruned") is not None, provenance=results.get("provenance") or {})


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """["+a.b=1", "model=ssd300"] -> {"a.b": "1", "model": "ssd300"} (append/force prefixes dropped)."""
    parsed = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[Path]]:
    """The runs under each path (a run directory, a multirun folder, any folder of runs), in natural order,
    and the run directories left out: without results.json (failed or unfinished) or pruned."""
    runs, left_out = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ReportError(f"{path}: no such folder (give a run directory or a multirun folder)")
        if (path / ".hydra").is_dir() or (path / "results.json").is_file():
            run_dirs = [path]
        else:  # a run directory is one that Hydra started (.hydra/) or that finished (results.json)
            started = {p.parent.parent for p in path.rglob(".hydra/overrides.yaml")}
            run_dirs = sorted(started | {p.parent for p in path.rglob("results.json")}, key=_natural)
        for run_dir in run_dirs:
            run = read_run(run_dir) if (run_dir / "results.json").is_file() else None
            if run is None or run.pruned:
                left_out.append(run_dir)
            else:
                runs.append(run)
    return runs, left_out


def wandb_runs(project: str, group: str | None = None) -> list[Run]:
    """The finished runs of a W&B project (optionally one group), through the public API (needs the network).

    Overrides come from the run's config key "overrides" when the run logged it; otherwise every key of its
    config ("cfg." when Lightning logged the hyper-parameters) stands in, and grouping ignores
    tracking.name too (it names the seed).
    """
    import wandb  # only here: reading local runs needs neither wandb's import time nor the network

    runs = []
    for remote in wandb.Api().runs(project, filters={"group": group} if group else None):
        if remote.state != "finished":
            continue
        config = dict(remote.config)
        if "overrides" in config:
            overrides = parse_overrides(config["overrides"])
        else:
            overrides = {k: str(v) for k, v in _flatten(config.get("cfg", config)).items() if k != "tracking.name"}
        summary = dict(remote.summary)
        values = {
            k.removeprefix("final/"): float(v) for k, v in summary.items() if k.startswith("final/") and float(v) >= 0
        }
        for key in ("ms_per_img", "img_per_s"):
            if f"speed/{key}" in summary:
                values[key] = float(summary[f"speed/{key}"])
        runs.append(Run(name="/".join(remote.path), overrides=overrides, values=values, study=remote.group,
                        provenance=config.get("provenance") or {}))
    return runs


# --- grouping -----------------------------------------------------------------------------------------


def group_runs(runs: Sequence[Run], ignore: Sequence[str] = IGNORED) -> list[Group]:
    """Runs with the same overrides, the ignored keys left out, in the order of their first run."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        kept = {k: v for k, v in run.overrides.items() if k not in ignore}
        groups.setdefault(tuple(sorted(kept.items())), Group(kept)).runs.append(run)
    return list(groups.values())


def factors(groups: Sequence[Group]) -> list[str]:
    """The override keys whose value differs between configurations (the study's factors), in command order."""
    keys = list(dict.fromkeys(k for g in groups for k in g.overrides))
    return [k for k in keys if len({g.overrides.get(k) for g in groups}) > 1]


def common_overrides(groups: Sequence[Group]) -> dict[str, str]:
    varying = set(factors(groups))
    return {k: v for k, v in groups[0].overrides.items() if k not in varying} if groups else {}


def short_key(key: str) -> str:
    """experiment/focal_gamma -> focal_gamma, optim.optimizer.lr -> lr: what a column or a legend shows."""
    return re.split(r"[/.@]", key.split("@")[0])[-1]


def label(group: Group, keys: Sequence[str]) -> str:
    """A configuration's name from its factor levels: the option name for a config group (ssd300), key=value
    for a value (alpha=0.25)."""
    parts = []
    for key in keys:
        value = group.overrides.get(key, "default")
        parts.append(value if "." not in key.split("@")[0] else f"{short_key(key)}={value}")
    return ", ".join(parts) or "all runs"


def find_baseline(groups: Sequence[Group], spec: str) -> Group:
    """The one configuration that matches every `key=value` of spec (keys in full or short: loss.alpha or alpha,
    experiment/focal_gamma or focal_gamma), or whose label is spec."""
    keys = factors(groups)
    wanted = parse_overrides(spec.split())
    def has(group: Group, key: str, value: str) -> bool:
        return any(key in (k, short_key(k)) and v == value for k, v in group.overrides.items())

    matches = [
        g for g in groups if label(g, keys) == spec or (wanted and all(has(g, k, v) for k, v in wanted.items()))
    ]
    if len(matches) != 1:
        names = "; ".join(" ".join(f"{k}={g.overrides.get(k)}" for k in keys) or label(g, keys) for g in groups)
        found = "no configuration" if not matches else f"{len(matches)} configurations"
        raise ReportError(f"--baseline {spec!r} matches {found}; the configurations are: {names}")
    return matches[0]


# --- statistics ---------------------------------------------------------------------------------------


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, sample std (n - 1) and the t interval of the mean (scipy.stats' one-sample t):
    mean +- t(1 - (1 - c) / 2, n - 1) std / sqrt(n). With one value the std and the interval are NaN: one seed
    says nothing about the spread."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, n=0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n=1)
    std = float(x.std(ddof=1))
    if std == 0:  # every seed the same: the interval is the point (scipy would give NaN)
        return Interval(mean, mean, mean, n=n, std=0.0, dof=n - 1)
    ci = _t_test(stats.ttest_1samp, x, 0.0).confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), n=n, std=std, dof=n - 1)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b) with Welch's interval (scipy.stats.ttest_ind, equal_var=False: se^2 = s_a^2/n_a +
    s_b^2/n_b, Welch-Satterthwaite dof). NaN bounds when either side has fewer than 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return Interval(math.nan, math.nan, math.nan)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan)
    if a.var(ddof=1) + b.var(ddof=1) == 0:  # identical values within each group: no spread, the difference is exact
        return Interval(diff, diff, diff, dof=math.inf)
    test = _t_test(stats.ttest_ind, a, b, equal_var=False)
    ci = test.confidence_interval(confidence)
    return Interval(diff, float(ci.low), float(ci.high), dof=float(test.df))


def _t_test(test: Any, *args: Any, **kwargs: Any) -> Any:
    """A scipy.stats t-test, silent about nearly constant samples: the same AP from every seed is a valid
    result (scipy warns of precision loss in its moments, which does not change the interval)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return test(*args, **kwargs)


# --- the table ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One configuration's line: its label and factor levels, per metric its mean interval and its difference
    from the baseline."""

    group: Group
    label: str
    levels: dict[str, str]
    stats: dict[str, Interval]
    diffs: dict[str, Interval]
    is_baseline: bool


def compare(groups: Sequence[Group], metrics: Sequence[str], baseline: Group | None) -> list[Row]:
    keys = factors(groups)
    rows = []
    for g in groups:
        stats = {m: mean_interval(g.values(m)) for m in metrics}
        diffs = {m: welch_interval(g.values(m), baseline.values(m)) for m in metrics} if baseline else {}
        levels = {short_key(k): g.overrides.get(k, "default") for k in keys}
        rows.append(Row(g, label(g, keys), levels, stats, diffs, g is baseline))
    return rows


def scale(metric: str) -> float:
    """COCO AP/AR (and TIDE's dAP) are stored as fractions and read as points (x100), as papers print them."""
    return 100.0 if metric.startswith(("AP", "AR", "dAP")) else 1.0


def valid_range(metric: str) -> tuple[float, float]:
    """Where a metric's values can lie (raw units): AP and AR in [0, 1], every other recorded number >= 0
    (ms, images per second, parameters, GFLOPs). A t-interval of few seeds can reach past it."""
    return (0.0, 1.0) if scale(metric) == 100 else (0.0, math.inf)


UNITS = {"ms_per_img": "ms per image (batch 1, median)", "img_per_s": "images per second", "params": "parameters",
         "gflops": "GFLOPs"}


def axis_label(metric: str) -> str:
    """A metric with its unit, for an axis."""
    return f"{metric} (points, x100)" if scale(metric) == 100 else UNITS.get(metric, metric)


def markdown(
    rows: Sequence[Row], metrics: Sequence[str], title: str, common: dict[str, str], notes: Sequence[str]
) -> str:
    """The report as Markdown: the configurations' table, the differences from the baseline, the plots."""
    levels = list(rows[0].levels) if rows else []
    baseline = next((r for r in rows if r.is_baseline), None)
    lines = [f"# {title}", ""]
    if common:
        lines += ["Common overrides: `" + " ".join(f"{k}={v}" for k, v in common.items()) + "`", ""]
    units = "AP and AR in points (x100)"
    if SPEED in metrics:
        units += "; ms_per_img: median latency per image at batch 1, pre-processing + model + post-processing"
    lines += [
        f"Each cell: mean ± std over the seeds [95% confidence interval of the mean, t with n-1 dof]. {units}.",
        "",
        "| " + " | ".join(levels or ["configuration"]) + " | n | " + " | ".join(metrics) + " |",
        "|" + "---|" * (max(1, len(levels)) + 1 + len(metrics)),
    ]
    for r in rows:
        names = list(r.levels.values()) or [r.label]
        if r.is_baseline:
            names[0] += " (baseline)"
        n = max((s.n for s in r.stats.values()), default=0)
        cells = [_mean_cell(r.stats[m], scale(m)) for m in metrics]
        lines.append("| " + " | ".join(names) + f" | {n} | " + " | ".join(cells) + " |")
    if baseline is not None:
        lines += [
            "", f"## Difference from the baseline ({baseline.label})", "",
            "Each cell: mean difference [Welch's 95% interval]; an interval that excludes 0 is a difference the "
            "seeds can tell apart.", "",
            "| " + " | ".join(levels or ["configuration"]) + " | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
            "|" + "---|" * (max(1, len(levels)) + len(metrics)),
        ]
        for r in rows:
            if not r.is_baseline:
                names = list(r.levels.values()) or [r.label]
                cells = [_diff_cell(r.diffs[m], scale(m)) for m in metrics]
                lines.append("| " + " | ".join(names) + " | " + " | ".join(cells) + " |")
    lines += [""] + [f"{note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def _mean_cell(s: Interval, k: float) -> str:
    if math.isnan(s.estimate):
        return "–"
    if math.isnan(s.std):
        return f"{s.estimate * k:.1f}"
    return f"{s.estimate * k:.1f} ± {s.std * k:.1f} [{s.low * k:.1f}, {s.high * k:.1f}]"


def _diff_cell(d: Interval, k: float) -> str:
    if math.isnan(d.estimate):
        return "–"
    if math.isnan(d.low):
        return _signed(d.estimate * k)
    return f"{_signed(d.estimate * k)} [{_signed(d.low * k)}, {_signed(d.high * k)}]"


def _signed(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0: a rounding residue of -1e-17 prints +0.0, not -0.0


def difference_table(rows: Sequence[Row], items: Sequence[str], what: str, prefix: str) -> str:
    """Markdown: one line per item (a class's AP, an error type's dAP): the baseline's mean with its t-interval,
    then each configuration's difference from it with Welch's interval. Items down, configurations across:
    a dataset has more classes than a study has configurations."""
    baseline = next(r for r in rows if r.is_baseline)
    others = [r for r in rows if not r.is_baseline]
    intro = {
        "Per-class AP": "AP of each class (IoU 0.50:0.95, points).",
        "Error breakdown": "TIDE at IoU 0.5: the AP50 (points) each error type costs, dAP = AP50 with it fixed - "
        "AP50; a negative difference is an error the configuration makes less.",
    }[what]
    lines = [
        f"## {what}: difference from the baseline ({baseline.label})", "",
        f"{intro} Baseline: mean ± std [95% t-interval]; others: difference [Welch's 95% interval].", "",
        f"| {'class' if prefix == 'AP/' else 'error'} | {baseline.label} (baseline) | "
        + " | ".join(f"Δ {r.label}" for r in others) + " |",
        "|---|" + "---:|" * (1 + len(others)),
    ]
    for item in items:
        cells = [_mean_cell(baseline.stats[item], scale(item))] + [_diff_cell(r.diffs[item], scale(item)) for r in others]
        lines.append(f"| {item.removeprefix(prefix)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], metrics: Sequence[str], path: Path) -> None:
    """One line per configuration, raw units (AP as a fraction): factor levels, n, then per metric mean, std,
    ci_low, ci_high and the baseline difference with its interval."""
    levels = list(rows[0].levels) if rows else []
    header = ["configuration", *levels, "n"]
    for m in metrics:
        header += [f"{m}_{s}" for s in ("mean", "std", "ci_low", "ci_high", "diff", "diff_low", "diff_high")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            line: list[Any] = [r.label, *r.levels.values(), max((s.n for s in r.stats.values()), default=0)]
            for m in metrics:
                s, d = r.stats[m], r.diffs.get(m, Interval(math.nan, math.nan, math.nan))
                line += [s.estimate, s.std, s.low, s.high, d.estimate, d.low, d.high]
            writer.writerow(line)


def write_runs_csv(groups: Sequence[Group], path: Path) -> None:
    """Every run's numbers, for re-analysis: configuration, run, overrides, then every recorded value."""
    keys = factors(groups)
    metrics = list(dict.fromkeys(m for g in groups for r in g.runs for m in r.values))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "run", "overrides", *metrics])
        for g in groups:
            for r in g.runs:
                overrides = " ".join(f"{k}={v}" for k, v in r.overrides.items())
                writer.writerow([label(g, keys), r.name, overrides, *(r.values.get(m, "") for m in metrics)])


# --- plots --------------------------------------------------------------------------------------------


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
    rows = [r for r in rows if not math.isnan(r.stats[SPEED].estimate) and not math.isnan(r.stats[metric].estimate)]
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
    _caption(fig, rows, "points: mean of {seeds}; bars: 95% t-intervals on both axes (clipped to the valid range)")
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


def plot_differences(rows: Sequence[Row], items: Sequence[str], path: Path, prefix: str, title: str) -> Figure:
    """Each configuration's difference from the baseline per item (class or error type): a point at the mean
    difference with Welch's 95% interval, items down the side, a line at 0."""
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
    _caption(fig, rows, "points: mean difference over {seeds}; bars: Welch's 95% interval")
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


# --- the whole report ---------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[Row]
    markdown: str
    files: dict[str, Path]


def write_report(
    runs: Sequence[Run],
    output: str | Path,
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
    ignore: Sequence[str] = IGNORED,
    title: str | None = None,
    left_out: Sequence[Path] = (),
) -> Report:
    """Group the runs, compute the statistics and write results.md, results.csv, runs.csv and the plots."""
    if not runs:
        raise ReportError("no finished runs (no results.json) to report")
    groups = group_runs(runs, ignore)
    known = set().union(*(r.values for r in runs))
    if metrics:
        missing = [m for m in metrics if m not in known]
        if missing:
            raise ReportError(f"no run recorded {missing}; the runs have {sorted(known)}")
    else:  # the default columns that the runs recorded (ms_per_img only where speed was measured)
        metrics = [m for m in METRICS if m in known]
    base = find_baseline(groups, baseline) if baseline else None
    rows = compare(groups, metrics, base)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    studies = sorted({r.study for r in runs if r.study})
    name = title or ", ".join(studies) or "runs"  # the figures' title: the study's name
    title = f"{name}: {len(groups)} configurations, {len(runs)} runs"
    devices = sorted({r.device for r in runs if r.device})

    files = {"markdown": output / "results.md", "csv": output / "results.csv", "runs": output / "runs.csv"}
    notes = []
    if SPEED in known and "AP" in known:
        files["speed_accuracy"] = output / "speed_accuracy.png"
        plotted = compare(groups, list(dict.fromkeys([*metrics, "AP", SPEED])), base)
        device = devices[0] if len(devices) == 1 else None
        plot_speed_accuracy(plotted, files["speed_accuracy"], title=name, device=device)
        files["speed_accuracy_pdf"] = files["speed_accuracy"].with_suffix(".pdf")
        notes.append("![AP against ms per image](speed_accuracy.png)\n")
    files["metrics"] = output / "metrics.png"
    plot_metrics(rows, metrics, files["metrics"], title=name)
    files["metrics_pdf"] = files["metrics"].with_suffix(".pdf")
    notes.append("![metrics per configuration](metrics.png)\n")
    if len(devices) == 1:
        notes.append(f"Speed measured on: {devices[0]}.\n")
    for warning in speed_warnings(runs) + provenance_warnings(runs):  # in the report, and on the console of whoever makes it
        log.warning(warning.strip())
        notes.append(warning)
    if base is not None:  # where the difference from the baseline comes from: which classes, which errors
        for key, what, prefix in (("per_class", "Per-class AP", "AP/"), ("errors", "Error breakdown", "dAP_")):
            items = [m for m in dict.fromkeys(m for r in runs for m in r.values) if m.startswith(prefix)]
            if items:
                item_rows = compare(groups, items, base)
                notes.append(difference_table(item_rows, items, what, prefix))
                files[key] = output / f"{key}.png"
                plot_differences(item_rows, items, files[key], prefix, f"{name}: {what}")
                files[f"{key}_pdf"] = files[key].with_suffix(".pdf")
                notes.append(f"![{what} against the baseline]({key}.png)\n")
    if left_out:
        names = ", ".join(map(str, left_out))
        notes.append(f"Runs without results.json (failed or unfinished) or pruned, left out: {names}\n")
    text = markdown(rows, metrics, title, common_overrides(groups), notes)
    files["markdown"].write_text(text)
    write_csv(rows, metrics, files["csv"])
    write_runs_csv(groups, files["runs"])
    return Report(rows, text, files)


def speed_warnings(runs: Sequence[Run]) -> list[str]:
    """Warnings when the speeds of one table do not compare: measured on different devices, or on a machine
    busy enough that a run's p90 latency exceeds SPREAD_LIMIT times its median."""
    warnings = []
    devices = sorted({r.device for r in runs if r.device})
    if len(devices) > 1:
        warnings.append(f"Warning: speed was measured on different devices ({', '.join(devices)}): "
                        "those numbers do not compare.\n")
    noisy = [r for r in runs if r.speed_spread is not None and r.speed_spread > SPREAD_LIMIT]
    if noisy:
        listed = ", ".join(f"{r.name} ({r.speed_spread:.2f})" for r in noisy)
        warnings.append(f"Warning: {len(noisy)} runs' speed varied (p90/median latency above {SPREAD_LIMIT}: the "
                        f"machine was busy), their ms_per_img is unreliable: {listed}.\n")
    return warnings


def provenance_warnings(runs: Sequence[Run]) -> list[str]:
    """A warning when the runs of one table come from different code (detlab version, git sha, uncommitted
    changes) or different data (data_fingerprint): a difference between them may then be neither the factor's
    nor the seed's. Runs that recorded no provenance count as one more kind."""
    warnings = []
    for what, identity in (("code", _code_of), ("data", _data_of)):
        kinds: dict[str, list[str]] = {}
        for run in runs:
            kinds.setdefault(identity(run.provenance), []).append(run.name)
        if len(kinds) > 1:
            listed = "; ".join(f"{kind}: {len(names)} runs (e.g. {names[0]})" for kind, names in kinds.items())
            warnings.append(f"Warning: the runs in this table come from different {what} ({listed}).\n")
    return warnings


def _code_of(provenance: dict[str, Any]) -> str:
    if not provenance:
        return "no provenance recorded"
    if provenance.get("git_sha") is None:
        return f"detlab {provenance.get('detlab')} (not a git checkout)"
    dirty = " with uncommitted changes" if provenance.get("git_dirty") else ""
    return f"detlab {provenance.get('detlab')} at {str(provenance['git_sha'])[:10]}{dirty}"


def _data_of(provenance: dict[str, Any]) -> str:
    fingerprint = provenance.get("data_fingerprint")
    return f"data {fingerprint[:12]}" if fingerprint else "no data fingerprint recorded"


def log_to_wandb(report: Report, metrics: Sequence[str], project: str, study: str | None) -> str:
    """A W&B summary run in the study's group: the table, a scatter chart of AP against ms per image and the
    PNGs. Online when logged in (WANDB_MODE wins), offline otherwise. Returns the run's directory."""
    import wandb

    from detlab.tracking import wandb_mode

    mode = wandb_mode()
    out_dir = report.files["markdown"].parent
    name = f"{study or 'study'}-report"
    run = wandb.init(project=project, group=study, job_type="report", name=name, dir=str(out_dir), mode=mode)
    columns = ["configuration", "n"] + [c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    data = []
    for r in report.rows:
        stats = [v for m in metrics for v in (r.stats[m].estimate, r.stats[m].low, r.stats[m].high)]
        data.append([r.label, max(s.n for s in r.stats.values()), *stats])
    table = wandb.Table(columns=columns, data=data)
    logged: dict[str, Any] = {"report/table": table}
    if SPEED in metrics and "AP" in metrics:
        logged["report/speed_accuracy"] = wandb.plot.scatter(table, SPEED, "AP", title="AP against ms per image")
    for name in ("speed_accuracy", "metrics"):
        if name in report.files:
            logged[f"report/{name}_png"] = wandb.Image(str(report.files[name]))
    run.log(logged)
    directory = run.dir
    run.finish()
    return directory


class ReportCallback(Callback):
    """Hydra callback: at the end of a multirun, the report of its runs in <sweep dir>/report (or output_dir),
    and the table printed. Registered by the experiment configs under hydra.callbacks.report."""

    def __init__(self, baseline: str | None = None, metrics: Sequence[str] | None = None,
                 output_dir: str | None = None, ignore: Sequence[str] = IGNORED) -> None:
        self.baseline, self.output_dir = baseline, output_dir
        self.metrics = list(metrics) if metrics else None
        self.ignore = list(ignore)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        output = Path(self.output_dir) if self.output_dir else sweep_dir / "report"
        try:
            runs, left_out = find_runs([sweep_dir])
            report = write_report(runs, output, self.metrics, self.baseline, self.ignore, left_out=left_out)
        except ReportError as err:
            # The runs are on disk whatever happens here: say how to report them once the problem is fixed.
            log.error(f"detlab-report: {err}\n(the runs stay in {sweep_dir}: detlab-report {sweep_dir} --output ...)")
            return
        print(report.markdown, flush=True)
        command = " ".join(["detlab-report", str(sweep_dir), *self.cli_options()])
        print(f"report: {report.files['markdown']} (to record it: {command})", flush=True)

    def cli_options(self) -> list[str]:
        """The detlab-report options that reproduce this report (baseline, metrics, ignored keys)."""
        options = ["--baseline", self.baseline] if self.baseline else []
        if self.metrics:
            options += ["--metrics", *self.metrics]
        if self.ignore != list(IGNORED):
            options += ["--ignore", *self.ignore]
        return options


# --- command line -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="detlab-report",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", type=Path, help="run directories or folders of runs (a multirun folder)")
    parser.add_argument("--wandb-project", help="read the runs from this W&B project (entity/project) instead")
    parser.add_argument("--group", help="with --wandb-project: only this group (the study)")
    parser.add_argument("--baseline", help="the configuration to compare against, e.g. 'loss=ce_ohem' or 'alpha=0.5'")
    parser.add_argument("--metrics", nargs="+", help=f"the table's columns (default: {' '.join(METRICS)})")
    parser.add_argument("--ignore", nargs="+", default=list(IGNORED),
                        help="overrides that do not make a configuration (default: seed)")
    parser.add_argument("--output", type=Path, help="output folder (default: experiments/<study>)")
    parser.add_argument("--study", help="the study's name (default: the runs' tracking.group)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and the chart to a W&B summary run")
    parser.add_argument("--wandb-log-project", default="detlab", help="with --wandb: the project of the summary run")
    args = parser.parse_args(argv)
    with user_errors("detlab-report"):
        if args.wandb_project:
            runs, left_out = wandb_runs(args.wandb_project, args.group), []
        elif args.paths:
            runs, left_out = find_runs(args.paths)
        else:
            raise ReportError("give run directories or --wandb-project")
        study = args.study or _study_of(runs)
        output = args.output or (Path("experiments") / study if study else None)
        if output is None:
            raise ReportError("the runs name no study (tracking.group): give --output or --study")
        report = write_report(runs, output, args.metrics, args.baseline, args.ignore, left_out=left_out)
        if args.wandb:
            where = log_to_wandb(report, list(report.rows[0].stats), args.wandb_log_project, study)
            print(f"W&B summary run: {where}")
    print(report.markdown)
    print("written: " + ", ".join(str(p) for p in report.files.values()))


def _study_of(runs: Sequence[Run]) -> str | None:
    studies = {r.study for r in runs if r.study}
    return studies.pop() if len(studies) == 1 else None


def _natural(path: Path) -> list:
    """Sort key with numbers compared as numbers: multirun/.../2 before multirun/.../10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


if __name__ == "__main__":
    main()
