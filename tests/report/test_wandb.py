"""detlab-report --wandb-project: runs read back through W&B's public API (a fake one here: no network), as
detlab-train logs them, must report as their run folders do."""

from types import SimpleNamespace

import pytest

from detlab.report.runs import find_runs, group_runs
from tests.report.test_report import fake_run


def remote_run(name: str, overrides: list[str], ap: float, state: str = "finished", group: str = "study",
               config: dict | None = None) -> SimpleNamespace:
    """A W&B run as the public API returns it, holding what detlab-train logs: the overrides and provenance in its
    config (run.train), final/* and speed/* in its summary (run._finish)."""
    summary = {"final/AP": ap, "final/AP50": ap + 0.2, "final/AP75": ap - 0.05, "final/APl": -1.0,
               "model/params": 1000, "val/AP": ap}
    return SimpleNamespace(state=state, group=group, path=["me", "detlab", name], summary=summary,
                           config={"overrides": overrides, "provenance": {"git_sha": "0" * 40}, **(config or {})})


@pytest.fixture
def project(monkeypatch):
    """The fake project's runs: the list that wandb.Api().runs(...) returns (the group filter applied)."""
    import wandb

    runs: list[SimpleNamespace] = []

    class Api:
        def runs(self, path, filters=None):
            return [r for r in runs if not filters or r.group == filters["group"]]

    monkeypatch.setattr(wandb, "Api", Api)
    return runs


def test_a_resumed_run_is_the_configuration_it_resumes(project, tmp_path):
    """A resumed run logs its ckpt_path among its overrides (the W&B config's "overrides"): read back from W&B it was
    a configuration of its own, where its run folder (runs.NOT_CONFIGURATION) is the configuration it resumes."""
    from detlab.report.wandb import wandb_runs

    jobs = {"0": ["loss.gamma=2", "seed=0"], "1": ["loss.gamma=2", "seed=1", f"ckpt_path={tmp_path}/1/last.ckpt"]}
    for name, overrides in jobs.items():
        fake_run(tmp_path, name, overrides, 0.3)
        project.append(remote_run(name, overrides, 0.3))
    local = [g.overrides for g in group_runs(find_runs([tmp_path])[0])]
    assert local == [{"loss.gamma": "2"}]
    assert [g.overrides for g in group_runs(wandb_runs("me/detlab"))] == local
