"""The whole report of one set of runs: grouped, compared, written as results.md, results.csv, runs.csv and the
figures, with warnings when speeds or provenance do not compare; and ReportCallback, which writes it at the end
of a Hydra multirun (the experiment configs register it)."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from detlab.report.runs import (
    IGNORED, SPREAD_LIMIT, ReportError, Run, common_overrides, find_baseline, find_runs, group_runs,
)
from detlab.report.tables import METRICS, SPEED, Row, compare, difference_table, markdown, write_csv, write_runs_csv
from detlab.report.plots import plot_differences, plot_metrics, plot_speed_accuracy

log = logging.getLogger(__name__)


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
    left_out: Sequence[Path | str] = (),
    paired: bool = False,
) -> Report:
    """Group the runs, compute the statistics and write results.md, results.csv, runs.csv and the plots. With
    `paired`, the differences from the baseline pair the runs of one seed (tables.compare)."""
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
    rows = compare(groups, metrics, base, paired)
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where the folder (or one above it) would be
        raise ReportError(f"{output}: a file is in the way of the report's folder; give --output a folder") from None
    studies = sorted({r.study for r in runs if r.study})
    name = title or ", ".join(studies) or "runs"  # the figures' title: the study's name
    title = f"{name}: {len(groups)} configurations, {len(runs)} runs"
    devices = sorted({r.device for r in runs if r.device})

    files = {"markdown": output / "results.md", "csv": output / "results.csv", "runs": output / "runs.csv"}
    notes = []
    if SPEED in known and "AP" in known:
        files["speed_accuracy"] = output / "speed_accuracy.png"
        plotted = compare(groups, list(dict.fromkeys([*metrics, "AP", SPEED])), base, paired)
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
                item_rows = compare(groups, items, base, paired)
                notes.append(difference_table(item_rows, items, what, prefix, paired))
                files[key] = output / f"{key}.png"
                plot_differences(item_rows, items, files[key], prefix, f"{name}: {what}", paired)
                files[f"{key}_pdf"] = files[key].with_suffix(".pdf")
                notes.append(f"![{what} against the baseline]({key}.png)\n")
    if left_out:
        names = ", ".join(map(str, left_out))
        notes.append(f"Runs without results.json (failed or unfinished) or pruned, left out: {names}\n")
    text = markdown(rows, metrics, title, common_overrides(groups), notes, paired)
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
        # quoted as a shell reads it: a baseline of two keys ("tv_parity=detlab focal_gamma=...") is one argument
        command = shlex.join(["detlab-report", str(sweep_dir), *self.cli_options()])
        print(f"report: {report.files['markdown']} (to record it: {command})", flush=True)

    def cli_options(self) -> list[str]:
        """The detlab-report options that reproduce this report (baseline, metrics, ignored keys)."""
        options = ["--baseline", self.baseline] if self.baseline else []
        if self.metrics:
            options += ["--metrics", *self.metrics]
        if self.ignore != list(IGNORED):
            options += ["--ignore", *self.ignore]
        return options
