"""The comparison table: per configuration and metric the mean interval and the difference from the baseline
(Welch's interval, or with `paired` the paired t interval over the seeds), as Markdown and CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from detlab.report.runs import Group, ReportError, column_names, factors, label
from detlab.report.stats import Interval, mean_interval, paired_interval, welch_interval


METRICS = ("AP", "AP50", "AP75", "ms_per_img")  # the Markdown table's columns unless --metrics says otherwise


SPEED = "ms_per_img"


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


def interval_name(paired: bool) -> str:
    """What a difference's interval is, for the tables and plots."""
    return "paired 95% t-interval over the seeds" if paired else "Welch's 95% interval"


def compare(groups: Sequence[Group], metrics: Sequence[str], baseline: Group | None, paired: bool = False) -> list[Row]:
    """A Row per group. With `paired`, each difference pairs the runs of one seed (every group must have run the
    baseline's seeds, else a ReportError); without, Welch's interval of two independent samples."""
    keys = factors(groups)
    if paired and baseline:
        want = sorted(baseline.seeds())
        for g in groups:
            have = sorted(g.seeds())
            if have != want:
                raise ReportError(f"--paired: {label(g, keys)} ran {', '.join(have)} and the baseline "
                                  f"{', '.join(want)}: a paired difference needs the same seeds in both; report "
                                  "those seeds only, or leave out --paired for Welch's interval")
    rows = []
    names = column_names(keys)
    for g in groups:
        stats = {m: mean_interval(g.values(m)) for m in metrics}
        diffs = {m: _difference(g, baseline, m, paired) for m in metrics} if baseline else {}
        levels = {names[k]: g.overrides.get(k, "default") for k in keys}
        rows.append(Row(g, label(g, keys), levels, stats, diffs, g is baseline))
    return rows


def _difference(g: Group, baseline: Group, metric: str, paired: bool) -> Interval:
    if g is baseline:  # exactly 0: Welch's interval of its runs against themselves would give it a width
        return Interval(0.0, 0.0, 0.0) if len(g.values(metric)) else Interval(math.nan, math.nan, math.nan)
    if not paired:
        return welch_interval(g.values(metric), baseline.values(metric))
    a, b = g.by_seed(metric), baseline.by_seed(metric)
    seeds = [seed for seed in a if seed in b]  # a metric a run did not record (COCO's -1) leaves its pair out
    return paired_interval([a[seed] for seed in seeds], [b[seed] for seed in seeds])


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
    rows: Sequence[Row], metrics: Sequence[str], title: str, common: dict[str, str], notes: Sequence[str],
    paired: bool = False,
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
        # a metric some runs did not record (speed.enabled=false, COCO's -1) is averaged over fewer: say over how many
        cells = [_mean_cell(r.stats[m], scale(m)) + (f" (n={r.stats[m].n})" if 0 < r.stats[m].n < n else "")
                 for m in metrics]
        lines.append("| " + " | ".join(names) + f" | {n} | " + " | ".join(cells) + " |")
    if baseline is not None:
        lines += [
            "", f"## Difference from the baseline ({baseline.label})", "",
            f"Each cell: mean difference [{interval_name(paired)}]; an interval that excludes 0 is a difference the "
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


def difference_table(rows: Sequence[Row], items: Sequence[str], what: str, prefix: str, paired: bool = False) -> str:
    """Markdown: one line per item (a class's AP, an error type's dAP): the baseline's mean with its t-interval,
    then each configuration's difference from it (Welch's interval, or paired). Items down, configurations across:
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
        f"{intro} Baseline: mean ± std [95% t-interval]; others: difference [{interval_name(paired)}].", "",
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
    ci_low, ci_high, the baseline difference with its interval, and the number of runs that recorded it (n_m,
    fewer than n where some did not, as results.md's '(n=2)')."""
    levels = list(rows[0].levels) if rows else []
    header = ["configuration", *levels, "n"]
    for m in metrics:
        header += [f"{m}_{s}" for s in ("mean", "std", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "n")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            line: list[Any] = [r.label, *r.levels.values(), max((s.n for s in r.stats.values()), default=0)]
            for m in metrics:
                s, d = r.stats[m], r.diffs.get(m, Interval(math.nan, math.nan, math.nan))
                line += [s.estimate, s.std, s.low, s.high, d.estimate, d.low, d.high, s.n]
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
