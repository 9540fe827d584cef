"""A study's report from its runs: runs (reading and grouping), stats (scipy.stats intervals), tables, plots,
study (the whole report, and the Hydra callback that the experiment configs register as
detlab.report.study.ReportCallback), wandb (runs from and the report to W&B). The command is detlab.cli.report.
"""
