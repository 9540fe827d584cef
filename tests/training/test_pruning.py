"""The median-stopping rule (detlab.training.pruning) on hand-made curves: Optuna's MedianPruner with warm-up and a
minimum number of finished trials, judged against the finished, unpruned runs beside a trial."""

import json

import pytest

from detlab.training.pruning import should_stop, sibling_curves

SIBLINGS = [{0: 0.1, 1: 0.3}, {0: 0.2, 1: 0.5}, {0: 0.3, 1: 0.4}, {0: 0.9}]  # the last one has no epoch 1 yet


def test_stops_below_the_median_at_the_same_epoch():
    assert should_stop(0.39, 1, SIBLINGS, warmup_epochs=1, min_trials=3) == (True, 0.4, 3)
    assert should_stop(0.40, 1, SIBLINGS, warmup_epochs=1, min_trials=3) == (False, 0.4, 3)  # at the median: goes on
    assert should_stop(0.24, 0, SIBLINGS, warmup_epochs=0, min_trials=4) == (True, pytest.approx(0.25), 4)


def test_never_during_warm_up_or_with_too_few_trials():
    assert should_stop(0.0, 0, SIBLINGS, warmup_epochs=1, min_trials=1)[0] is False  # epoch 0 is the warm-up
    assert should_stop(0.0, 1, SIBLINGS, warmup_epochs=1, min_trials=4) == (False, None, 3)
    assert should_stop(0.0, 5, SIBLINGS, warmup_epochs=1, min_trials=1) == (False, None, 0)  # nobody got there


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
    assert sibling_curves(tmp_path / "2") == [{0: 0.25, 1: 0.5}]
