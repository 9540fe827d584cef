"""detlab-report: the comparison table and plots of a study, from its runs (see detlab.report.cli).

runs (reading and grouping), stats (scipy.stats intervals), tables, plots, study (the whole report), wandb (runs
from and the report to W&B), cli (the command and the Hydra callback that the experiment configs register as
detlab.report.ReportCallback).
"""

from detlab.report.cli import ReportCallback, main

__all__ = ["ReportCallback", "main"]
