"""W&B both ways: runs read from a project through the public API, and the report logged back as a summary run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


from detlab.report.runs import NOT_CONFIGURATION, ReportError, Run, configuration
from detlab.report.tables import SPEED
from detlab.report.study import Report


def wandb_runs(project: str, group: str | None = None) -> tuple[list[Run], list[str]]:
    """The finished runs of a W&B project (optionally one group), through the public API (needs the network), and
    the names of those left out, as find_runs leaves run folders out: unfinished (failed, crashed, running) or
    pruned (the "pruned" that detlab-train logs into the config at the end: its numbers are not its budget's).

    Overrides come from the run's config key "overrides", which detlab-train logs; for a run without it (logged
    before it did) every key of its config ("cfg." when Lightning logged the hyper-parameters) stands in, and
    grouping ignores tracking.name too (it names the seed), but not a key resolved from the seed (tv_parity's
    model.weights.seed), which makes each seed a configuration of its own.
    """
    import wandb  # only here: reading local runs needs neither wandb's import time nor the network

    try:  # W&B's own errors here are the user's to fix: not logged in, credentials refused, no network, no project
        remotes = list(wandb.Api().runs(project, filters={"group": group} if group else None))
    except wandb.errors.Error as err:
        raise ReportError(f"--wandb-project {project}: W&B's API answered: {err} (reading runs from W&B needs a login, "
                          "`wandb login`, and its server; run folders are read without either)") from None
    runs, left_out = [], []
    for remote in remotes:
        config = dict(remote.config)
        if remote.state != "finished" or config.get("pruned"):
            left_out.append("/".join(remote.path))
            continue
        if "overrides" in config:
            overrides = configuration(config["overrides"])  # a resumed run's ckpt_path is no configuration of its own
        else:
            overrides = {k: str(v) for k, v in _flatten(config.get("cfg", config)).items()
                         if k != "tracking.name" and k not in NOT_CONFIGURATION}
        summary = dict(remote.summary)
        values = {
            k.removeprefix("final/"): float(v) for k, v in summary.items() if k.startswith("final/") and float(v) >= 0
        }
        for key in ("ms_per_img", "img_per_s"):
            if f"speed/{key}" in summary:
                values[key] = float(summary[f"speed/{key}"])
        for key in ("params", "gflops"):  # results.json's complexity, logged as model/* (run._finish)
            if f"model/{key}" in summary:
                values[key] = float(summary[f"model/{key}"])
        # what the speed warnings compare (runs.read_run): the device the speed was measured on (the run's own, in
        # its provenance) and the batch-1 latency's p90 / median (speed_summary's speed/total_ms*)
        provenance = config.get("provenance") or {}
        median, p90 = summary.get("speed/total_ms"), summary.get("speed/total_ms_p90")
        # the study is tracking.group, as read_run reads it: a multirun without one is grouped in W&B by its sweep
        # folder (run._tracking), which named the study and put the default report at that path, not experiments/
        study = (config["cfg"].get("tracking") or {}).get("group") if isinstance(config.get("cfg"), dict) else remote.group
        runs.append(Run(name="/".join(remote.path), overrides=overrides, values=values, study=study,
                        device=provenance.get("device") if "ms_per_img" in values else None,
                        speed_spread=float(p90) / float(median) if median and p90 is not None else None,
                        provenance=provenance))
    return runs, left_out


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def log_to_wandb(report: Report, metrics: Sequence[str], project: str, study: str | None) -> str:
    """A W&B summary run in the study's group: the table, a scatter chart of AP against ms per image and the
    PNGs. Online when logged in (WANDB_MODE wins), offline otherwise. Returns the run's directory (or says none)."""
    import wandb

    from detlab.training.tracking import wandb_mode

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
    directory = "none (WANDB_MODE=disabled)" if run.disabled else run.dir  # a disabled run's dir was never made
    run.finish()
    return directory
