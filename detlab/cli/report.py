"""detlab-report: the comparison table and plots of a study, from its runs.

    detlab-report multirun/focal_gamma/2026-01-01_10-00-00                # -> experiments/focal_gamma/
    detlab-report multirun/a multirun/b --baseline loss=ce_ohem --output experiments/mine
    detlab-report --wandb-project me/detlab --group focal_gamma --wandb  # runs from W&B, a chart back there

A run is a directory with results.json and .hydra/overrides.yaml (what `detlab-train` writes). Runs are
grouped by configuration: every command-line override except the --ignore keys (the seed by default; a list given
replaces it, so name the seed too: --ignore seed data.num_workers) and ckpt_path; two runs of one configuration
with the same seed are refused (one seed counted twice). For each configuration and metric: mean, sample
standard deviation and a 95% confidence interval of the mean
(Student's t with n - 1 degrees of freedom); the difference from the baseline configuration with Welch's 95%
interval (no equal-variance assumption), or with --paired the 95% t interval of the per-seed differences. Written to the output folder: results.md, results.csv (one row per
configuration), runs.csv (one row per run), speed_accuracy.png (AP against ms per image, the Pareto front
drawn) and metrics.png (one bar chart per metric). The figures are for a paper: PNG at 200 dpi and PDF, the
study's name as title, axes with units, a caption line saying what the points and bars are, intervals clipped
to the metric's valid range. With a baseline, per-class AP and the TIDE error breakdown (dAP per error type)
of each configuration against it, as tables and figures (per_class.png, errors.png). The report warns when speeds come from different devices or a busy machine
(p90/median latency above 1.5), and when runs come from different code or data. `ReportCallback`
(detlab.report.study) runs all of it at the end of a Hydra multirun; the experiment configs register it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from detlab.errors import user_errors
from detlab.report.runs import IGNORED, ReportError, Run, find_runs
from detlab.report.tables import METRICS


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
    parser.add_argument("--paired", action="store_true",
                        help="pair each run with the baseline's run of the same seed: the difference's interval is the t "
                             "interval of the per-seed differences (every configuration must have run the baseline's "
                             "seeds); default: Welch's interval of two independent samples")
    parser.add_argument("--ignore", nargs="+", default=list(IGNORED),
                        help="overrides that do not make a configuration (default: seed; a list given replaces it: "
                             "--ignore seed data.num_workers)")
    parser.add_argument("--output", type=Path, help="output folder (default: experiments/<study>)")
    parser.add_argument("--study", help="the study's name (default: the runs' tracking.group)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and the chart to a W&B summary run")
    parser.add_argument("--wandb-log-project", default="detlab", help="with --wandb: the project of the summary run")
    args = parser.parse_args(argv)
    with user_errors("detlab-report"):
        from detlab.report.study import write_report  # matplotlib and W&B load here, after --help
        from detlab.report.wandb import log_to_wandb, wandb_runs

        if args.wandb_project:
            runs, left_out = wandb_runs(args.wandb_project, args.group)
        elif args.paths:
            runs, left_out = find_runs(args.paths)
        else:
            raise ReportError("give run directories or --wandb-project")
        study = args.study or _study_of(runs)
        output = args.output or (Path("experiments") / study if study else None)
        if output is None:
            raise ReportError("the runs name no study (tracking.group): give --output or --study")
        report = write_report(runs, output, args.metrics, args.baseline, args.ignore, left_out=left_out,
                              paired=args.paired)
        if args.wandb:
            where = log_to_wandb(report, list(report.rows[0].stats), args.wandb_log_project, study)
            print(f"W&B summary run: {where}")
    print(report.markdown)
    print("written: " + ", ".join(str(p) for p in report.files.values()))


def _study_of(runs: Sequence[Run]) -> str | None:
    studies = {r.study for r in runs if r.study}
    return studies.pop() if len(studies) == 1 else None


if __name__ == "__main__":
    main()
