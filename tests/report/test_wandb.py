"""detlab-report --wandb-project: runs read back through W&B's public API (a fake one here: no network), as
detlab-train logs them, must report as their run folders do."""

from types import SimpleNamespace

import pytest

from detlab.cli.report import main
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
    assert [g.overrides for g in group_runs(wandb_runs("me/detlab")[0])] == local


def test_pruned_and_unfinished_runs_are_left_out_and_named_as_their_folders_are(project, tmp_path):
    """A pruned trial finishes (its W&B state "finished", final/* logged at its pruned epoch): read from W&B it was
    averaged with the full-budget runs, where its folder is left out and listed (experiments/README: Pruning)."""
    import json

    from detlab.report.wandb import wandb_runs

    pruned = {"epoch": 1, "AP": 0.01, "median": 0.2, "trials": 3}
    for name, seed, ap in (("0", 0, 0.3), ("1", 1, 0.32), ("2", 2, 0.01)):
        folder = fake_run(tmp_path, name, [f"seed={seed}"], ap)
        if name == "2":
            results = json.loads((folder / "results.json").read_text())
            (folder / "results.json").write_text(json.dumps({**results, "pruned": pruned}))
        project.append(remote_run(name, [f"seed={seed}"], ap, config={"pruned": pruned if name == "2" else None}))
    project.append(remote_run("3", ["seed=3"], 0.0, state="crashed"))
    local_runs, local_left_out = find_runs([tmp_path])
    runs, left_out = wandb_runs("me/detlab", "study")
    assert [r.values["AP"] for r in runs] == [r.values["AP"] for r in local_runs] == [0.3, 0.32]
    assert [name.split("/")[-1] for name in left_out] == ["2", "3"] and [p.name for p in local_left_out] == ["2"]
    main(["--wandb-project", "me/detlab", "--group", "study", "--output", str(tmp_path / "report")])
    assert "or pruned, left out: me/detlab/2, me/detlab/3\n" in (tmp_path / "report" / "results.md").read_text()


def test_a_run_logs_whether_it_was_pruned_into_its_wandb_config(tmp_path):
    """What the reader above relies on: run._finish puts results.json's "pruned" into the W&B config."""
    import json
    import time

    from google.protobuf.message import DecodeError

    from detlab.training.run import _finish
    from detlab.training.tracking import wandb_logger
    from tests.conftest import wandb_records

    pruned = {"epoch": 1, "AP": 0.01, "median": 0.2, "trials": 3}
    logger = wandb_logger(str(tmp_path), project="p", mode="offline")
    _finish(logger, {"metrics": {"AP": 0.01}, "complexity": {"params": 10}, "data": {"counts": {}}, "global_step": 4,
                     "pruned": pruned})
    [run_file] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(300):  # W&B's service process may still be writing the file when finish() returns
        try:
            records = wandb_records(run_file)
        except DecodeError:  # a record half written
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        time.sleep(0.1)
    config = {item.key: json.loads(item.value_json) for record in records
              if record.WhichOneof("record_type") == "config" for item in record.config.update}
    assert config["pruned"] == pruned


def test_speed_device_spread_and_cost_read_from_wandb_as_from_the_folder(project, tmp_path):
    """The speed warnings (another device, a busy machine), the speed plot's device and --metrics params/gflops came
    from results.json alone: read from W&B a run had no device, no spread and no cost, though W&B holds all three
    (the provenance in the config, speed/total_ms* and model/* in the summary), so a report of runs measured on two
    machines said nothing."""
    from detlab.profile.speed import speed_summary
    from detlab.report.study import speed_warnings
    from detlab.report.wandb import wandb_runs

    for name, device, median, p90 in (("0", "cpu: A", 20.0, 22.0), ("1", "cuda: B", 10.0, 40.0)):
        fake_run(tmp_path, name, [f"seed={name}"], 0.3, ms=median, device=device, p90=p90)
        speed = {"ms_per_img": median, "img_per_s": 1e3 / median,
                 "latency_ms": {stage: {"median": median, "p90": p90} for stage in ("preprocess", "model",
                                                                                    "postprocess", "total")}}
        remote = remote_run(name, [f"seed={name}"], 0.3, config={"provenance": {"device": device}})
        remote.summary.update({**speed_summary(speed), "model/params": 1000.0, "model/gflops": 2.5})
        project.append(remote)
    local, _ = find_runs([tmp_path])
    runs, _ = wandb_runs("me/detlab")
    assert [(r.device, r.speed_spread) for r in runs] == [(r.device, r.speed_spread) for r in local] == \
        [("cpu: A", pytest.approx(1.1)), ("cuda: B", pytest.approx(4.0))]
    named_as_in_wandb = [w.replace(f"{tmp_path}/", "me/detlab/") for w in speed_warnings(local)]
    assert len(named_as_in_wandb) == 2 and speed_warnings(runs) == named_as_in_wandb  # two devices; a busy machine
    assert (runs[0].values["params"], runs[0].values["gflops"]) == (1000.0, 2.5)


def test_a_sweep_without_tracking_group_names_no_study(project, tmp_path, monkeypatch, capsys):
    """W&B groups a multirun without tracking.group by its sweep folder: taken as the study's name, the default
    output experiments/<study> became the sweep folder itself (an absolute path), and the title that path. Its run
    folders name no study (results.json's tracking.group): the report asks for --output or --study, as for them."""
    from detlab.report.wandb import wandb_runs

    sweep = tmp_path / "multirun" / "2026-12-07" / "10-00-00"
    for name in ("0", "1"):
        project.append(remote_run(name, [f"seed={name}"], 0.3, group=str(sweep),
                                  config={"cfg": {"tracking": {"group": None}}}))
    project.append(remote_run("2", ["seed=2"], 0.3, group="focal_gamma", config={"cfg": {"tracking": {"group": "focal_gamma"}}}))
    assert [r.study for r in wandb_runs("me/detlab")[0]] == [None, None, "focal_gamma"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["--wandb-project", "me/detlab", "--group", str(sweep)])
    assert stop.value.code == 2 and "give --output or --study" in capsys.readouterr().err
    assert not sweep.exists()


def test_reading_wandb_without_a_login_is_one_message(tmp_path, monkeypatch, capsys):
    """W&B's real API without credentials (a HOME without .netrc, no WANDB_API_KEY; the server address made local so
    that nothing leaves the machine): W&B's UsageError traceback and status 1 before; now one message, status 2."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as stop:
        main(["--wandb-project", "me/detlab", "--group", "g", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.startswith("detlab-report: error: --wandb-project me/detlab: W&B's API answered: No API key configured")
