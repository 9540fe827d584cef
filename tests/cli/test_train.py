"""The real entry points (detlab-train, detlab-eval) with tiny overrides, as a researcher runs them."""

import csv
import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image

from detlab.cli.train import WritableRunDir
from detlab.config import compose_train
from tests.conftest import TINY, run, wandb_records


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny training run with the default W&B logger (offline), shared by the tests below. W&B is not silenced
    here (conftest silences it elsewhere), so that the console test sees what a user sees."""
    root = tmp_path_factory.mktemp("train")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_QUIET")}
    proc = run("detlab.cli.train", *TINY, f"hydra.run.dir={root / 'run'}", cwd=root, env=env)
    (root / "stdout.txt").write_text(proc.stdout)
    (root / "stderr.txt").write_text(proc.stderr)
    return root / "run"


def test_run_writes_results_config_and_checkpoints(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert isinstance(results["metrics"][key], float)
    assert results["config"]["data"]["image_size"] == 64
    assert results["complexity"]["params"] > 0 and results["complexity"]["gflops"] > 0
    assert results["global_step"] == 3
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert "model.head.depth=1" in (trained_run / ".hydra" / "overrides.yaml").read_text()
    # by default one full checkpoint (last.ckpt, for a resume) and the final weights
    folder = trained_run / "checkpoints"
    assert results["checkpoints"] == [str(folder / "last.ckpt"), str(folder / "weights.ckpt")]
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "weights.ckpt"]
    assert results["data"]["counts"]["data/train_images"] == 12
    assert results["data"]["counts"]["data/val_skipped"] == 0
    speed = results["speed"]
    assert (speed["batch_size"], speed["warmup"], speed["repeats"], speed["input_size"]) == (2, 1, 2, 64)
    assert speed["ms_per_img"] == pytest.approx(speed["latency_ms"]["total"]["median"])
    assert speed["device"].startswith("cpu") and speed["precision"] == "32-true"
    assert set(results["errors"]["dAP"]) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss", "FP", "FN"}
    classes = results["confusion_matrix"]["classes"]
    assert classes[-1] == "background" and len(results["confusion_matrix"]["matrix"]) == len(classes)
    assert len(results["pr_curves"]["recall"]) == 101
    # a calibration only of detections (3 steps may keep none: its ECE of nothing used to read 0.0, perfect)
    assert ("calibration" in results) == (results["scored"]["detections"] > 0)
    assert 0 <= results.get("calibration", {"ECE": 0})["ECE"] <= 1
    for name in ("pr_curves", "errors", "confusion_matrix", "calibration"):
        drawn = (trained_run / "analysis" / f"{name}.png").is_file() and (trained_run / "analysis" / f"{name}.pdf").is_file()
        assert drawn == (name in results)
    origin = results["provenance"]
    assert origin["git_sha"] == subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    assert len(origin["data_fingerprint"]) == len(origin["config_hash"]) == 64 and origin["device"] == speed["device"]


def test_console_start_and_end_blocks(trained_run):
    """The start block (before the first step) and the end block name what ran and where every file went, checked
    against the files and results.json; the known library noise and W&B's own summary are gone."""
    output, errors = ((trained_run.parent / name).read_text() for name in ("stdout.txt", "stderr.txt"))
    results = json.loads((trained_run / "results.json").read_text())
    cost, counts = results["complexity"], results["data"]["counts"]
    [wandb_dir] = (trained_run / "wandb").glob("offline-run-*")
    start = [
        "detector   retinanet (resnet18 backbone, fpn neck, retinanet head), loss focal, 3 classes",
        f"model: {cost['params'] / 1e6:.2f} M parameters, {cost['gflops']:.2f} GFLOPs at 64x64",
        f"data       shapes: train {counts['data/train_images']} images / {counts['data/train_objects']} objects, "
        f"val {counts['data/val_images']} images / {counts['data/val_objects']} objects",
        f"run dir    {trained_run}",
        f"logger     wandb offline, run {(trained_run / 'wandb_run_id').read_text().strip()}: {wandb_dir}",
        f"overrides  {' '.join(TINY)}",  # the task's (Hydra's own, hydra.run.dir, are not)
    ]
    first_step = output.index("Epoch 0")
    assert output.index("\n".join(start)) < first_step, output[:first_step]
    folder = trained_run / "checkpoints"
    sizes = ", ".join(f"{name} ({(folder / name).stat().st_size / 1e6:.1f} MB)" for name in ("last.ckpt", "weights.ckpt"))
    end = [
        f"results      {trained_run / 'results.json'}",
        f"checkpoints  {folder}: {sizes}",
        f"logger       wandb offline, run {wandb_dir.name.split('-')[-1]}: {wandb_dir}",
        f"upload       wandb sync {wandb_dir}",
    ]
    table = output.index("COCO box evaluation")
    assert first_step < table < output.index("\n".join(end)), output[table:]
    assert output.count(start[1]) == 2  # before the first step and under the final table
    for noise in ("litlogger", "LeafSpec", "Total FLOPs"):  # Lightning's tip, torch's deprecation, Lightning's summary
        assert noise not in output + errors
    assert "Run summary" not in output + errors and (output + errors).count("wandb sync") == 1  # W&B's own: quiet


def test_offline_wandb_run_holds_the_ap_table(trained_run):
    runs = list((trained_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = runs[0] / "files"
    tables = list((files / "media" / "table" / "val").glob("coco_table_*.table.json"))
    assert tables, sorted(str(p.relative_to(files)) for p in files.rglob("*"))
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["metric", "value"]
    results = json.loads((trained_run / "results.json").read_text())
    assert dict(table["data"]) == pytest.approx(results["metrics"])
    # The W&B config holds the provenance (an offline run keeps its config in the run's .wandb record).
    fingerprint = results["provenance"]["data_fingerprint"]
    assert f'"data_fingerprint":"{fingerprint}"'.encode() in next(runs[0].glob("run-*.wandb")).read_bytes()
    # and the run's overrides, by which detlab-report --wandb-project groups runs as it groups run folders: without
    # them it grouped by every config key, and a key resolved from the seed (tv_parity's model.weights.seed) made
    # each seed a configuration of its own
    config = {item.key: json.loads(item.value_json) for record in wandb_records(next(runs[0].glob("run-*.wandb")))
              if record.WhichOneof("record_type") == "config" for item in record.config.update}
    assert config["overrides"] == OmegaConf.load(trained_run / ".hydra" / "overrides.yaml")
    confusion = json.loads(next((files / "media" / "table" / "val").glob("confusion_matrix_*.table.json")).read_text())
    assert [row[1:] for row in confusion["data"]] == results["confusion_matrix"]["matrix"]
    pngs = list((files / "media" / "images" / "val").glob("predictions_*.png"))
    assert pngs and all(np.asarray(Image.open(p)).max() > 0 for p in pngs)  # not black: uint8 pixels, not [0, 1]
    # one evaluation, one x: the tables, the error analysis and the images at the step of the val/AP they belong to
    # (the analysis was logged at trainer.global_step, one above the step Lightning logs val/AP at, the images with it)
    steps: dict[str, set] = {}
    for record in wandb_records(next(runs[0].glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            for key in row:
                if key.split("/")[0] == "val" and key != "val/loss":
                    steps.setdefault(key.split("/")[1], set()).add(json.loads(row["trainer/global_step"]))
    for key in ("coco_table", "per_class_AP", "dAP_Cls", "confusion_matrix", "predictions"):
        assert steps[key] == steps["AP"], (key, steps)


def test_speed_entry_point_times_the_checkpoint(trained_run, tmp_path):
    out = tmp_path / "speed.json"
    proc = run("detlab.cli.eval", "speed", str(trained_run), "data.image_size=96", "--batch-size", "2", "--warmup", "1",
               "--repeats", "3", "--output", str(out), cwd=tmp_path)
    speed = json.loads(out.read_text())
    assert (speed["input_size"], speed["batch_size"], speed["repeats"]) == (96, 2, 3)
    assert "ms/img at batch 1" in proc.stdout


def test_eval_entry_point_reproduces_the_run(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    run("detlab.cli.eval", "run", str(trained_run), "--output", str(out), cwd=tmp_path)
    again = json.loads(out.read_text())
    results = json.loads((trained_run / "results.json").read_text())
    assert again["metrics"] == pytest.approx(results["metrics"])


def test_resume_continues_from_the_checkpoint(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    run(
        "detlab.cli.train", *overrides, "trainer.max_epochs=2", "logger=csv", f"ckpt_path={ckpt}",
        f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path,
    )
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert results["global_step"] == 6  # 3 steps from the checkpoint, 3 more
    assert [point["epoch"] for point in results["curve"]] == [0, 1]  # the val curve continues with the checkpoint
    # the logger (here CSV) gets the final table, the data counts and the speed at the last step
    [metrics_csv] = (tmp_path / "resumed").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    final = next(row for row in rows if row.get("final/AP"))
    assert float(final["final/AP"]) == pytest.approx(results["metrics"]["AP"])
    assert float(final["data/train_images"]) == 12 and float(final["data/train_skipped"]) == 0
    assert float(final["speed/ms_per_img"]) == pytest.approx(results["speed"]["ms_per_img"])


def test_callbacks_composed_from_the_command_line_run(tmp_path):
    """callbacks=[default,ema,early_stopping]: the EMA's numbers, its checkpoints and detlab-eval agree on the
    averaged weights (the average itself is checked against a hand computation in test_ema.py), and early stopping
    ends a 3-epoch run after its second validation (AP cannot improve by min_delta=1). checkpoint.save_top_k=-1
    keeps a full checkpoint per validation, save_last=false none after every epoch."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    args = [*overrides, "trainer.max_epochs=3", "logger=csv", "callbacks=[default,ema,early_stopping]",
            "callbacks.ema.decay=0.9", "callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=1.0",
            "checkpoint.save_top_k=-1", "checkpoint.save_last=false", f"hydra.run.dir={tmp_path / 'run'}"]
    run("detlab.cli.train", *args, cwd=tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch=0.ckpt", "best-epoch=1.ckpt", "weights.ckpt"]
    saved = torch.load(folder / "best-epoch=1.ckpt", map_location="cpu", weights_only=False)
    key = "model.head.cls_tower.0.weight"
    assert not torch.equal(saved["state_dict"][key], saved["current_model_state"][key])
    weights = torch.load(folder / "weights.ckpt", map_location="cpu", weights_only=True)  # plain tensors and types
    assert torch.equal(weights["state_dict"][key], saved["state_dict"][key])  # the average at the end, not the weights
    out = tmp_path / "eval.json"
    run("detlab.cli.eval", "run", str(tmp_path / "run"), "--output", str(out), cwd=tmp_path)  # reads weights.ckpt
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert json.loads(out.read_text())["metrics"] == pytest.approx(results["metrics"])
    assert results["global_step"] == 6 and [point["epoch"] for point in results["curve"]] == [0, 1]


def test_weights_file_is_small_and_serves_prediction_and_model_weights(trained_run, tmp_path):
    """weights.ckpt holds the final weights and the run's config, no optimizer state: detlab-predict --run (the run
    directory means it) and model.weights= load it; the weights equal last.ckpt's (no EMA: the same final weights)."""
    folder = trained_run / "checkpoints"
    weights = torch.load(folder / "weights.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert "optimizer_states" not in weights and "optimizer_states" in last
    assert weights["state_dict"].keys() == last["state_dict"].keys()
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in weights["state_dict"].items())
    assert (folder / "weights.ckpt").stat().st_size < 0.5 * (folder / "last.ckpt").stat().st_size  # AdamW: 2 moments
    from detlab.config import compose_train
    from detlab.inference import Predictor, checkpoint_of

    assert checkpoint_of(trained_run) == folder / "weights.ckpt"
    cfg = compose_train([*TINY, f"model.weights={folder / 'weights.ckpt'}"])
    hparams = weights["hyper_parameters"]
    predictor = Predictor.from_config(cfg, hparams["category_ids"], hparams["class_names"])
    loaded = {f"model.{k}": v for k, v in predictor.model.state_dict().items()}
    assert all(torch.equal(v, weights["state_dict"][k]) for k, v in loaded.items())
    image = np.asarray(Image.new("RGB", (96, 80), (120, 60, 30)))
    Image.fromarray(image).save(tmp_path / "a.png")
    run("detlab.cli.predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "dets.json"), "--run", str(trained_run),
        cwd=tmp_path)
    assert isinstance(json.loads((tmp_path / "dets.json").read_text()), list)


def test_run_fine_tunes_weights_of_other_classes(trained_run, tmp_path):
    """model.weights=<a run's weights on 3 classes> with model.weights_strict=false trains on 2 classes: the class
    outputs (2 x 9 anchors instead of 3 x 9) start afresh, are named on the console and in results.json, and the
    rest starts from the file."""
    weights = trained_run / "checkpoints" / "weights.ckpt"
    proc = run("detlab.cli.train", *TINY, "data.source.num_classes=2", f"model.weights={weights}",
               "model.weights_strict=false", "checkpoint.save_last=false", "speed.enabled=false",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = ["head.cls_out.bias (shape [27] for [18])", "head.cls_out.weight (shape [27, 16, 3, 3] for [18, 16, 3, 3])"]
    assert results["weights_not_loaded"] == expected and results["global_step"] == 3
    assert isinstance(results["metrics"]["AP"], float)
    assert "2 tensors of another shape not loaded" in proc.stdout + proc.stderr  # logged once, into train.log too
    assert (tmp_path / "run" / "train.log").read_text().count("tensors of another shape not loaded") == 1
    # the fine-tuned run is reloaded with its own weights, strictly: every tensor of its file
    from detlab.inference import Predictor

    predictor, cfg = Predictor.from_run(tmp_path / "run")
    assert cfg.model.weights_strict is True and predictor.model.weights_not_loaded == []
    # a run without model.weights_strict=false records nothing left out
    assert json.loads((trained_run / "results.json").read_text())["weights_not_loaded"] == []


def test_trial_below_its_siblings_median_is_pruned(tmp_path):
    """prune.enabled: a job of a multirun whose val AP is below the median of the finished jobs beside it stops
    after the warm-up epoch and says so in results.json; a pruned sibling does not count."""
    sweep = tmp_path / "sweep"
    for job, ap, pruned in (("0", 0.9, None), ("1", 0.8, None), ("2", 0.0, {"epoch": 1})):
        (sweep / job).mkdir(parents=True)
        curve = [{"epoch": epoch, "step": 3 * (epoch + 1), "AP": ap} for epoch in range(4)]
        (sweep / job / "results.json").write_text(json.dumps({"curve": curve, "pruned": pruned}))
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    proc = run("detlab.cli.train", *overrides, "trainer.max_epochs=4", "logger=none", "prune.enabled=true",
               "prune.warmup_epochs=1", "prune.min_trials=2", f"hydra.run.dir={sweep / '3'}", cwd=tmp_path)
    results = json.loads((sweep / "3" / "results.json").read_text())
    assert [point["epoch"] for point in results["curve"]] == [0, 1]
    best = max(point["AP"] for point in results["curve"])
    assert results["pruned"] == {"epoch": 1, "AP": best, "median": pytest.approx(0.85), "trials": 2}
    assert results["global_step"] == 6 and results["metrics"]["AP"] == results["curve"][-1]["AP"]
    assert "pruned after epoch 1" in proc.stdout


def test_resume_on_other_classes_stops_naming_the_checkpoint_and_both_class_lists(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    proc = run("detlab.cli.train", *TINY, "trainer.max_epochs=2", "data.source.num_classes=2", f"ckpt_path={ckpt}",
               f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"are not the ones {ckpt} was trained on" in proc.stderr and "'triangle'" in proc.stderr
    assert "its head predicts 3 classes" in proc.stderr and "Traceback" not in proc.stderr


def test_resuming_a_finished_run_stops_and_keeps_its_results(trained_run):
    """Lightning would stop at once, and the run would validate again and overwrite results.json (a curve point for
    an epoch never trained, a second W&B run folder): the resume is refused, naming the checkpoint and the limit.
    The run's recorded config stays its own: Hydra wrote the refused run's over it (.hydra/overrides.yaml said the
    run was trained with loss.gamma=0), which detlab-report groups by."""
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    kept = [trained_run / "results.json", ckpt, *sorted((trained_run / ".hydra").iterdir())]
    before = {p: p.read_bytes() for p in kept}
    proc = run("detlab.cli.train", *TINY, f"ckpt_path={ckpt}", f"hydra.run.dir={trained_run}", cwd=trained_run.parent,
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{ckpt} has finished: it trained 1 epoch(s), 3 steps" in proc.stderr
    assert "trainer.max_epochs=1" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("detlab.cli.train", *TINY, "loss.gamma=0", "trainer.max_epochs=2", f"ckpt_path={ckpt}",
               f"hydra.run.dir={trained_run}", cwd=trained_run.parent, check=False)
    assert proc.returncode == 2 and "loss.gamma=0" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in kept} == before


def test_a_failed_job_does_not_end_the_sweep(tmp_path):
    """Each job of a multirun prints its own error and the next one runs (the first used to end the sweep, the
    jobs after it never started); at the end the failed jobs are named and the status is 2."""
    proc = run("detlab-train", "-m", "optim.optimizer.lr=abc,xyz", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    for value in ("abc", "xyz"):
        assert f"optim.optimizer.lr='{value}' is a string" in proc.stderr
    assert f"2 of 2 jobs failed, each with its error above: {tmp_path / 'sweep' / '0'}, {tmp_path / 'sweep' / '1'}" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    # each failed job's command, run as printed (shell quoting and all), is that job again, as the W&B run of the
    # sweep's job: its name <name>-<job number>, its group the sweep's folder
    commands = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  detlab-train ")]
    assert len(commands) == 2 and " optim.optimizer.lr=xyz " in commands[1]
    program, *words = shlex.split(commands[1].replace("optim.optimizer.lr=xyz", "optim.optimizer.lr=0.001"))
    run(program, *words, *TINY, cwd=tmp_path)
    job = tmp_path / "sweep" / "1"
    assert (job / "results.json").is_file()
    [run_file] = job.glob("wandb/offline-run-*/run-*.wandb")
    [started] = [record.run for record in wandb_records(run_file) if record.HasField("run")]
    assert (started.display_name, started.run_group) == ("retinanet-focal-1", str(tmp_path / "sweep"))


def test_a_failed_submitit_job_is_named_with_its_log(tmp_path):
    """With a submitit launcher each job's output goes to a log file: the summary said its error was 'above'."""
    sweep = tmp_path / "sweep"
    proc = run("detlab-train", "-m", "hydra/launcher=local", "optim.optimizer.lr=abc", f"hydra.sweep.dir={sweep}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"1 of 1 jobs failed, each with its error in its log ({sweep / '.submitit'}/<job id>/*_log.err): " \
        f"{sweep / '0'}" in proc.stderr
    logs = list((sweep / ".submitit").glob("*/*_log.err"))
    assert len(logs) == 1 and "optim.optimizer.lr='abc' is a string" in logs[0].read_text()


def test_runs_started_in_the_same_second_get_a_folder_each(tmp_path):
    """The default run folder is runs/<date>/<time>: two runs started in one second shared it, each overwriting the
    other's .hydra, checkpoints and results.json (overrides.yaml said seed=1, results.json seed 2). A folder given
    with hydra.run.dir (a resume) stays that folder."""
    folder = tmp_path / "runs" / "10-00-00"

    def start(*hydra_overrides: str) -> str:
        hydra = {"run": {"dir": str(folder)}, "overrides": {"hydra": list(hydra_overrides)}}
        config = OmegaConf.create({"hydra": hydra})
        OmegaConf.set_readonly(config.hydra, True)  # as Hydra hands it to a callback
        WritableRunDir().on_run_start(config)
        return config.hydra.run.dir

    assert [start(), start(), start()] == [str(folder), f"{folder}-1", f"{folder}-2"]
    assert start(f"hydra.run.dir={folder}") == str(folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["10-00-00", "10-00-00-1", "10-00-00-2"]


def test_sweeps_started_in_the_same_second_get_a_folder_each(tmp_path):
    """A sweep's default folder (multirun/<date>/<time>, a study's multirun/<study>/<time>) was shared by two sweeps
    started in one second: the second's job 0 wrote into the first's. Here the folder comes from a config (as the
    studies' do, not the command line) and is taken already: the jobs go to <folder>-1, the other stays as it was."""
    conf = tmp_path / "my_conf" / "experiment"
    conf.mkdir(parents=True)
    taken = tmp_path / "multirun" / "10-00-00"
    (conf / "fixed_folder.yaml").write_text(f"# @package _global_\nhydra:\n  sweep:\n    dir: {taken}\n")
    (taken / "0").mkdir(parents=True)  # the other sweep's first job
    run("detlab-train", "-m", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "experiment=fixed_folder", *TINY,
        "logger=none", cwd=tmp_path)
    assert list((taken / "0").iterdir()) == []
    assert (tmp_path / "multirun" / "10-00-00-1" / "0" / "results.json").is_file()
    assert (tmp_path / "multirun" / "10-00-00-1" / "multirun.yaml").is_file()


def test_each_job_of_a_sweep_is_a_wandb_run_of_its_own_name_in_the_sweeps_group(tmp_path):
    """`detlab-train -m loss.gamma=0,1`: each job's W&B run was named retinanet-focal, in no group, so that W&B
    showed the sweep as runs of one name among the project's others (and --group could not select it)."""
    sweep = tmp_path / "sweep"
    run("detlab-train", "-m", "loss.gamma=0,1", *TINY, "speed.enabled=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    runs = {}
    for job in ("0", "1"):
        run_file = next((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        record = next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")
        assert record.run_id == (sweep / job / "wandb_run_id").read_text().strip()
        runs[job] = (record.display_name, record.run_group)
    assert runs == {"0": ("retinanet-focal-0", str(sweep)), "1": ("retinanet-focal-1", str(sweep))}


def test_a_job_that_fails_after_its_wandb_run_started_leaves_the_next_job_a_run_of_its_own(tmp_path):
    """W&B keeps one run per process until it is finished, and a sweep's jobs share the process: after job 0 diverged
    (its W&B run started, never finished), Lightning handed job 1 that run, so job 1 logged into job 0's folder under
    job 0's name, and its wandb_run_id named a run that does not exist. Now the failed job's run ends, failed."""
    sweep = tmp_path / "sweep"
    proc = run("detlab-train", "-m", *TINY, "speed.enabled=false", "optim.optimizer.lr=1e12,0.001",
               f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "the run diverged" in proc.stderr, proc.stderr[-2000:]
    assert (sweep / "1" / "results.json").is_file()
    records = {}
    for job in ("0", "1"):
        [run_file] = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        records[job] = wandb_records(run_file)
        [started] = [r.run for r in records[job] if r.WhichOneof("record_type") == "run"]
        assert (started.run_id, started.display_name) == \
            ((sweep / job / "wandb_run_id").read_text().strip(), f"retinanet-focal-{job}")
    exits = {job: [r.exit.exit_code for r in records[job] if r.WhichOneof("record_type") == "exit"] for job in records}
    assert exits == {"0": [1], "1": [0]}  # the failed job's run ends failed; the finished one's as finished


def test_a_ddp_trial_of_a_sweep_keeps_its_job_number_and_sweep_folder(tmp_path, monkeypatch):
    """The trial that runs as a single run of its own (_single_run) is still its sweep's job, for its W&B name."""
    from detlab.cli import train as cli

    commands = []
    monkeypatch.setattr(cli.subprocess, "run", lambda command, check: commands.append(command) or
                        subprocess.CompletedProcess(command, 2))
    assert cli._single_run(["loss.gamma=1"], tmp_path / "sweep, 2" / "3", 3, str(tmp_path / "sweep, 2")) is None
    overrides = commands[0][3:]
    assert overrides[0] == "loss.gamma=1" and "hydra.job.num=3" in overrides
    cfg = compose_train(overrides)  # Hydra reads them back, folders with a comma too (quoted)
    assert (cfg.loss.gamma, HydraConfig.get().job.num, HydraConfig.get().sweep.dir, HydraConfig.get().run.dir) == \
        (1, 3, str(tmp_path / "sweep, 2"), str(tmp_path / "sweep, 2" / "3"))


def test_a_sweep_or_run_given_a_finished_folder_again_stops_before_writing(tmp_path):
    """detlab-train -m ... hydra.sweep.dir=<a finished sweep> numbered its jobs from 0 again and wrote over the
    finished jobs' .hydra, checkpoints and results.json (a sweep with other values: overrides.yaml said one value,
    results.json was another's); hydra.run.dir=<a finished run> without ckpt_path did the same to that run."""
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):  # a finished sweep of loss.gamma=0,1 (its records; training is not the point here)
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- loss.gamma={job}\n")
        (sweep / job / "results.json").write_text(json.dumps({"metrics": {"AP": 0.5 + int(job) / 10}}))
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    proc = run("detlab-train", "-m", "loss.gamma=2,5", *TINY, "logger=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"hydra.sweep.dir={sweep} holds the results.json of 2 finished run(s) ({sweep / '0'}, {sweep / '1'})" \
        in proc.stderr and "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before
    proc = run("detlab-train", *TINY, "logger=none", f"hydra.run.dir={sweep / '1'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"hydra.run.dir={sweep / '1'} holds the results.json of 1 finished run(s)" in proc.stderr
    assert f"ckpt_path={sweep / '1' / 'checkpoints' / 'last.ckpt'}" in proc.stderr
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before
    # a folder without results.json (a failed or killed job) is still the user's to run again
    (sweep / "1" / "results.json").unlink()
    start = OmegaConf.create({"ckpt_path": None, "hydra": {"run": {"dir": str(sweep / "1")},
                                                           "overrides": {"hydra": [f"hydra.run.dir={sweep / '1'}"]}}})
    WritableRunDir().on_run_start(start)


def test_bad_override_stops_before_work_with_the_key(tmp_path):
    # Hydra's own errors (a key the config lacks, a config option that does not exist, an override it cannot
    # parse): its one message, and status 2 as for every user error (Hydra exits 1)
    for override, says in (("data.imag_size=320", "imag_size"), ("model=nosuch", "model/nosuch"),
                           ("trainer.max_epochs=[1", "'[1'")):
        proc = run("detlab-train", override, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # README's data=coco without its val split: OmegaConf's MissingMandatoryValue traceback, exit 1
    proc = run("detlab-train", "data=coco", "data.train.ann_file=a.json", "data.train.img_dir=img",
               f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.val.ann_file, data.val.img_dir have no value" in proc.stderr
    proc = run("detlab-train", "-m", "--cfg", "job", cwd=tmp_path, check=False)  # the one Hydra raised, not printed
    assert proc.returncode == 2 and "Only one of --run, --multirun" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(
        "detlab-train", "model.neck.num_extra_levels=1", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2
    assert "model.priors.sizes" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("detlab-train", "callbacks=[default,ema]", "callbacks.ema.decay=1.5", f"hydra.run.dir={tmp_path / 'r'}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "callbacks.ema.decay=1.5" in proc.stderr and "Traceback" not in proc.stderr
    assert "Epoch" not in proc.stderr  # before any training
    # before: exit 1 and Hydra's wrapper of Lightning's exception, after the dataset was generated
    proc = run("detlab-train", "trainer.devices=0", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "full_key" not in proc.stderr
    assert "trainer (pytorch_lightning.Trainer) rejects its arguments: `Trainer(devices=0)`" in proc.stderr


def test_ddp_two_cpu_processes_match_single_process_eval(tmp_path):
    """DDP (gloo) trains; its gathered evaluation equals a single process scoring the same weights."""
    # 5 val images on 2 ranks: the distributed sampler pads one duplicate, which the evaluator must drop. Every
    # box scored (score_thresh 0, 100 an image), so that the numbers of two steps' training are not all zeros.
    overrides = [o.replace("num_val_images=6", "num_val_images=5") for o in TINY]
    run(
        "detlab.cli.train", *overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none",
        "model.postprocess.score_thresh=0", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path,
    )
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["global_step"] == 2  # 12 images, 2 ranks x batch 4: ceil(6 / 4) steps per rank
    assert results["scored"] == {"images": 5, "detections": 500}
    assert results["metrics"]["AR100"] > 0
    out = tmp_path / "single.json"
    run("detlab.cli.eval", "run", str(tmp_path / "ddp"), "--output", str(out), cwd=tmp_path)
    single = json.loads(out.read_text())
    assert single["scored"] == results["scored"]
    assert single["metrics"] == pytest.approx(results["metrics"])


def test_eval_entry_point_scores_any_results_file(trained_run, tmp_path):
    """A results file from another framework (here: the val ground truth itself) scored with detlab-eval."""
    config = json.loads((trained_run / "results.json").read_text())["config"]
    from hydra.utils import instantiate

    ann_file = instantiate(config["data"]).ann_file("val")
    gt = json.loads(Path(ann_file).read_text())
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    out = tmp_path / "scored.json"
    run("detlab.cli.eval", "results", "--ann", ann_file, "--results", str(tmp_path / "dets.json"),
        "--output", str(out), cwd=tmp_path)
    assert json.loads(out.read_text())["metrics"]["AP"] == pytest.approx(1.0)
    bad = run("detlab.cli.eval", "results", "--ann", ann_file, "--results", str(tmp_path / "missing.json"),
              cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "missing.json" in bad.stderr and "Traceback" not in bad.stderr
