"""`make bench` runs end to end on tiny inputs (its numbers are read by people, never asserted: timings
belong in the benchmark, not in unit tests)."""

import json

import pytest
import torch

from detlab.cli import bench as bench_cli
from detlab.errors import user_errors
from detlab.profile import bench


def test_bench_compares_every_part_with_its_reference(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4294967296")  # recorded with every row, printed under the table
    out_json = tmp_path / "bench.json"
    tiny_run = ["data.source.num_train_images=12", "data.source.num_val_images=2", "data.num_workers=1"]
    rows = bench_cli.main(["--batch-sizes", "1", "2", "--image-size", "64", "--warmup", "0", "--repeats", "1",
                       "--eval-images", "3", "--eval-repeats", "1", "--presets", "tv_retinanet_r50_fpn",
                       "--step-batch-sizes", "2", "--step-image-size", "64", "--step-max-size", "96",
                       "--step-warmup", "0", "--step-repeats", "1", "--loader-batches", "2", "--loader-repeats", "1",
                       "--loader-overrides", *tiny_run, "--json", str(out_json)])
    # the forward at the first batch only, the loss and post-processing at each
    assert [(r["what"], r["batch"]) for r in rows][:5] == [
        ("forward", 1), ("loss", 1), ("postprocess", 1), ("loss", 2), ("postprocess", 2)
    ]
    assert [r["what"] for r in rows[5:7]] == [
        "COCO eval, hotcoco (3 images, 300 detections)", "COCO eval, faster_coco_eval (3 images, 300 detections)"
    ]
    # the default run's train loader (4 images per batch) against its own training step
    loader = rows[7]
    assert (loader["what"], loader["batch"], loader["input"]) == ("data loading / train step", 4, "160 letterbox")
    assert loader["loader_img_per_s"] == pytest.approx(4e3 / loader["detlab_ms"])
    assert loader["ratio"] == pytest.approx(loader["loader_img_per_s"] / loader["step_img_per_s"])
    assert [(r["what"], r["model"], r["batch"]) for r in rows[8:]] == [
        ("inference", "tv_retinanet_r50_fpn", 2), ("train step", "tv_retinanet_r50_fpn", 2)
    ]
    # 480 x 640 and 640 x 480 photos resized to 64 / 96 (72 x 96 and 96 x 72) pad to 96 x 96
    assert rows[9]["input"] == "64/96 keep-ratio, 96x96"
    assert all(r["detlab_ms"] > 0 and r["reference_ms"] > 0 for r in rows)
    assert all(r["threads"] == torch.get_num_threads() and r["torch"] == torch.__version__ for r in rows)
    printed = capsys.readouterr().out
    assert "| forward" in printed and "ratio > 1: detlab is faster" in printed
    assert all(r["allocator"]["MALLOC_TRIM_THRESHOLD_"] == "4294967296" for r in rows)
    assert "threads, MALLOC_TRIM_THRESHOLD_=4294967296" in printed
    # the README's table comes from the --json file: the same table as printed
    assert json.loads(out_json.read_text()) == rows
    bench_cli.main(["--table", str(out_json)])
    assert capsys.readouterr().out.strip() == bench.table(rows).strip() and bench.table(rows) in printed


@pytest.mark.parametrize("preset, input_hw, our_cls, their_cls", [
    ("tv_retinanet_r50_fpn", (96, 96), "head.cls_out", "head.classification_head.cls_logits"),
    # SSD300 keeps its fixed 300 x 300 input, whatever the step image size
    ("tv_ssd300_vgg16", (300, 300), "head.cls_convs.0", "head.classification_head.module_list.0"),
])
def test_whole_step_models_are_the_same_detector(preset, input_hw, our_cls, their_cls):
    """The inference row's two sides give the same detections (same weights, input transform and
    post-processing), and each training step moves its own model's weights."""
    device = torch.device("cpu")
    cfg, parts, theirs = bench.preset_pair(preset, 64, 96, device)
    ours, reference = bench.inference_pair(cfg, parts, theirs, 2, device)
    for got, expected in zip(ours(), reference()):
        assert len(got.scores) == len(expected["scores"]) > 10
        torch.testing.assert_close(got.scores.sort().values, expected["scores"].sort().values, atol=1e-5, rtol=0)
    ours_step, reference_step, hw = bench.training_steps(cfg, parts, theirs, 2, device)
    assert hw == input_hw
    ours_weight, their_weight = parts.model.get_submodule(our_cls).weight, theirs.get_submodule(their_cls).weight
    before = ours_weight.detach().clone()
    torch.testing.assert_close(before, their_weight.detach(), atol=0, rtol=0)
    ours_step()
    reference_step()
    # each step trains its own model (a step of the wrong parameters, or none, would leave these unchanged)
    assert (ours_weight.detach() != before).any() and (their_weight.detach() != before).any()


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "argument --repeats: '0' is not an integer >= 1"),
    (["--step-batch-sizes", "2", "-1"], "argument --step-batch-sizes: '-1' is not an integer >= 1"),
    (["--warmup", "-1"], "argument --warmup: '-1' is not an integer >= 0"),
    (["--table", "{missing}"], "missing.json: cannot read it as JSON"),
    (["--table", "{gpu_check}"], "gpu_check.json: not the rows a --json run of this command writes"),
])
def test_bad_arguments_stop_with_one_message(argv, message, tmp_path, capsys):
    """A count of 0 repeats failed minutes later in numpy (an empty median); a --table file that is not a bench
    --json (missing, or gpu_check.json's object) failed with a traceback. Each is one message and exit 2, at once."""
    (tmp_path / "gpu_check.json").write_text(json.dumps({"bench": [], "throughput": {}}))
    argv = [a.format(missing=tmp_path / "missing.json", gpu_check=tmp_path / "gpu_check.json") for a in argv]
    tiny = ["--batch-sizes", "1", "--image-size", "32", "--eval-images", "1", "--presets", "--loader-batches", "0"]
    with pytest.raises(SystemExit) as stop, user_errors("python -m detlab.cli.bench"):
        bench_cli.main([*tiny, *argv])  # tiny: a check that regressed would run a few seconds, not the bench
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_help_says_the_whole_first_sentence(capsys):
    """--help's description is the module's first sentence whole: its first line alone ended mid-parenthesis,
    "timed in one run (the rows"."""
    with pytest.raises(SystemExit):
        bench_cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "timed in one run (the rows and what each measures: detlab.profile.bench)." in out


def test_table_names_each_device_with_its_rows():
    """With --device cuda the COCO engines still run on the CPU: the line under the table named only the first
    row's device (the GPU) for every row."""
    common = {"model": "-", "batch": 2, "input": "64x64", "detlab_ms": 1.0, "reference_ms": 2.0, "ratio": 2.0,
              "warmup": 1, "repeats": 3, "torch": torch.__version__, "threads": 4, "allocator": {}}
    rows = [{**common, "what": "forward", "device": "NVIDIA H100"}, {**common, "what": "loss", "device": "NVIDIA H100"},
            {**common, "what": "COCO eval, hotcoco (3 images, 300 detections)", "device": "cpu: Test CPU"}]
    footer = bench.table(rows).splitlines()[-1]
    assert footer.startswith("NVIDIA H100 (forward, loss); cpu: Test CPU (COCO eval, hotcoco (3 images, 300 detections)),")
    assert bench.table(rows[:2]).splitlines()[-1].startswith(f"NVIDIA H100, torch {torch.__version__}, 4 threads;")
