"""The median-stopping rule (detlab.training.pruning) on hand-made curves: Optuna's MedianPruner with warm-up and a
minimum number of finished trials, judged against the finished, unpruned runs beside a trial."""

import json
import random
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_lightning.strategies import DDPStrategy

from detlab.training.pruning import MedianStopping, should_stop, sibling_curves

SIBLINGS = [{0: 0.1, 1: 0.3}, {0: 0.2, 1: 0.5}, {0: 0.3, 1: 0.4}, {0: 0.9}]  # the last one has no epoch 1 yet


def test_stops_below_the_median_at_the_same_epoch():
    assert should_stop(0.39, 1, SIBLINGS, warmup_epochs=1, min_trials=3) == (True, 0.4, 3)
    assert should_stop(0.40, 1, SIBLINGS, warmup_epochs=1, min_trials=3) == (False, 0.4, 3)  # at the median: goes on
    assert should_stop(0.24, 0, SIBLINGS, warmup_epochs=0, min_trials=4) == (True, pytest.approx(0.25), 4)


def test_never_during_warm_up_or_with_too_few_trials():
    assert should_stop(0.0, 0, SIBLINGS, warmup_epochs=1, min_trials=1)[0] is False  # epoch 0 is the warm-up
    assert should_stop(0.0, 1, SIBLINGS, warmup_epochs=1, min_trials=5) == (False, None, 3)  # 4 have finished
    assert should_stop(0.0, 5, SIBLINGS, warmup_epochs=1, min_trials=1) == (False, None, 0)  # nobody got there


def test_min_trials_counts_the_finished_siblings_that_stopped_before_the_epoch_too():
    """Optuna's n_startup_trials: four finished trials, of which three reached epoch 1 (the last stopped after epoch
    0). It used to wait for four values at epoch 1, which a sweep with early stopping may never give."""
    assert should_stop(0.39, 1, SIBLINGS, warmup_epochs=1, min_trials=4) == (True, 0.4, 3)


def test_the_rule_is_optunas_median_pruner_on_the_same_curves():
    """Against optuna.pruners.MedianPruner itself: finished trials holding the siblings' curves, and a running one
    reporting the trial's; random curves of 0 to 4 epochs (a sibling may stop early or never validate)."""
    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = random.Random(0)
    for _ in range(300):
        siblings = [{e: round(rng.random(), 2) for e in range(rng.randint(0, 4))} for _ in range(rng.randint(0, 5))]
        epoch = rng.randint(0, 3)
        curve = {e: round(rng.random(), 2) for e in range(epoch + 1)}
        warmup_epochs, min_trials = rng.randint(0, 2), rng.randint(1, 3)
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(
            n_startup_trials=min_trials, n_warmup_steps=warmup_epochs))
        with warnings.catch_warnings():  # add_trial is experimental in optuna 2
            warnings.simplefilter("ignore")
            for sibling in siblings:
                study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0, intermediate_values=sibling))
        trial = study.ask()
        for e, ap in curve.items():
            trial.report(ap, e)
        ours = should_stop(max(curve.values()), epoch, siblings, warmup_epochs, min_trials)[0]
        assert ours == bool(trial.should_prune()), (curve, siblings, warmup_epochs, min_trials)


def test_siblings_are_the_finished_unpruned_runs_beside(tmp_path):
    def write(job: str, text: str) -> None:
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.json").write_text(text)

    curve = [{"epoch": 0, "step": 10, "AP": 0.25}, {"epoch": 1, "step": 20, "AP": 0.5}]
    write("0", json.dumps({"curve": curve, "pruned": None}))
    write("1", json.dumps({"curve": curve, "pruned": {"epoch": 1}}))  # pruned: not a yardstick
    write("2", json.dumps({"curve": curve, "pruned": None}))  # the trial itself
    write("3", '{"curve": [')  # being written right now
    (tmp_path / "4").mkdir()  # running, nothing written yet
    write("5", json.dumps({"curve": [], "pruned": None}))  # finished without a validation: counts, with no value
    assert sibling_curves(tmp_path / "2") == [{0: 0.25, 1: 0.5}, {}]


def _write_finished(folder: Path, job: str, ap: float) -> None:
    (folder / job).mkdir(parents=True)
    (folder / job / "results.json").write_text(json.dumps({"curve": [{"epoch": 0, "step": 1, "AP": ap}], "pruned": None}))


def _judge_on_rank(rank: int, init_file: str, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sweep = Path(root, f"view_of_rank{rank}")  # what each rank's read of the sweep folder found
        callback = MedianStopping(sweep / "trial", warmup_epochs=0, min_trials=3)
        trainer = SimpleNamespace(sanity_checking=False, should_stop=False, is_global_zero=rank == 0, strategy=DDPStrategy())
        callback.on_validation_end(trainer, SimpleNamespace(curve=[{"epoch": 0, "step": 1, "AP": 0.1}]))
        Path(root, f"rank{rank}.json").write_text(json.dumps([trainer.should_stop, callback.pruned]))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_ranks_stop_together_on_rank_zeros_reading(tmp_path):
    """A third sibling finished between the two ranks' reads: rank 1 saw 3 finished trials (enough to judge, and the
    trial is below their median), rank 0 saw 2 (too few). Rank 1 stopped alone, and rank 0 waited for it forever."""
    for job, ap in (("0", 0.5), ("1", 0.6)):
        _write_finished(tmp_path / "view_of_rank0", job, ap)
        _write_finished(tmp_path / "view_of_rank1", job, ap)
    _write_finished(tmp_path / "view_of_rank1", "2", 0.7)
    assert should_stop(0.1, 0, sibling_curves(tmp_path / "view_of_rank1" / "trial"), 0, 3)[0] is True
    mp.spawn(_judge_on_rank, args=(str(tmp_path / "dist_init"), str(tmp_path)), nprocs=2, join=True)
    decisions = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert decisions == [[False, None], [False, None]]  # rank 0's: too few trials to judge
