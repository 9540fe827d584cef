"""Median stopping for sweeps: Optuna's MedianPruner rule, judged from the run directories of one multirun.

Hydra's Optuna sweeper runs each trial as a black-box job and sees only its final value, so Optuna's pruners
get no intermediate values to judge (facebookresearch/hydra#1954). A trial can judge itself instead: every run
of a multirun writes its validation curve into its results.json, and the siblings of a trial are the other run
directories of the same sweep directory. After each validation a trial stops when the best val AP it has
reached is below the median of the completed, unpruned siblings' val AP at the same epoch (MedianPruner:
n_warmup_steps = warmup_epochs, n_startup_trials = min_trials: at least that many completed siblings, whether or
not they reached the epoch, and the median of those that did). It works with any sweeper and any launcher whose
jobs share a file system (basic, submitit local, SLURM).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from detlab.errors import check_count, check_positive


def sibling_curves(run_dir: Path) -> list[dict[int, float]]:
    """The val AP per epoch of every completed, unpruned run beside run_dir (its multirun's other jobs); {} for one
    that never validated, a completed trial all the same."""
    curves = []
    for results in sorted(run_dir.parent.glob("*/results.json")):
        if results.parent == run_dir:
            continue
        try:
            done = json.loads(results.read_text())
        except (OSError, json.JSONDecodeError):  # a sibling writing its file right now
            continue
        if done.get("pruned") is None:
            curves.append({int(point["epoch"]): float(point["AP"]) for point in done.get("curve") or []})
    return curves


def should_stop(best: float, epoch: int, siblings: list[dict[int, float]], warmup_epochs: int, min_trials: int):
    """(stop, median, n): whether a trial whose best val AP after `epoch` (0-based) is `best` stops, judged against
    the median of the n siblings that reached that epoch once min_trials siblings have completed (Optuna's
    n_startup_trials counts every completed trial; a sibling that stopped earlier, by early stopping or a shorter
    trainer.max_epochs, counts towards it but gives no value at the epoch)."""
    values = [curve[epoch] for curve in siblings if epoch in curve]
    if epoch + 1 <= warmup_epochs or len(siblings) < min_trials or not values:
        return False, None, len(values)
    median = statistics.median(values)
    return best < median, median, len(values)


class MedianStopping(pl.Callback):
    """Stops a trial of a multirun whose val AP falls below its siblings' median (see the module docstring).

    After training, `pruned` is None or {"epoch", "AP", "median", "trials"}: what results.json records.
    Under DDP every rank follows rank 0's judgement: a sibling that finished between two ranks' reads of the folder
    stopped one rank alone, and the others waited for it in their next collective until they were killed.
    """

    def __init__(self, run_dir: Path, warmup_epochs: int = 1, min_trials: int = 3) -> None:
        check_count("prune", warmup_epochs=warmup_epochs)
        check_positive("prune", min_trials=min_trials)  # the median of no sibling is no rule (a StatisticsError)
        self.run_dir = Path(run_dir)
        self.warmup_epochs = warmup_epochs
        self.min_trials = min_trials
        self.pruned: dict[str, Any] | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not module.curve or self.pruned is not None:
            return
        epoch = module.curve[-1]["epoch"]
        best = max(point["AP"] for point in module.curve)
        judged = should_stop(best, epoch, sibling_curves(self.run_dir), self.warmup_epochs, self.min_trials)
        stop, median, n = trainer.strategy.broadcast(judged, src=0)
        if stop:
            self.pruned = {"epoch": epoch, "AP": best, "median": median, "trials": n}
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"pruned after epoch {epoch}: best val AP {best:.4f} < median {median:.4f} of {n} trials", flush=True)
