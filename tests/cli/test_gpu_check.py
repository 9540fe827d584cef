"""make gpu-check without a GPU: it says so and stops at once, with exit status 0; rehearsed on the CPU."""

import json
import re
from pathlib import Path

import pytest
import torch

from detlab.cli import gpu_check


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for step in ("gpu_tier", "throughput", "short_training", "environment"):  # at once: nothing is built or run
        monkeypatch.setattr(gpu_check, step, lambda *args, step=step: pytest.fail(f"gpu_check ran {step} without CUDA"))
    monkeypatch.setattr(gpu_check.bench_cli, "main", lambda *args: pytest.fail("gpu_check ran the bench without CUDA"))
    assert gpu_check.main(["--json", str(tmp_path / "gpu.json")]) == 0
    assert "no CUDA device visible" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()


def test_the_gpu_tier_is_found_in_the_checkout():
    assert gpu_check.TIER.is_file()  # gpu_tier runs it under pytest (rehearsed below)
    assert gpu_check.TIER.parent.samefile(Path(__file__).parents[1])
    marked = re.compile(r"pytest\.mark\.gpu\b")
    elsewhere = [p for p in gpu_check.TIER.parent.rglob("*.py") if p != gpu_check.TIER and marked.search(p.read_text())]
    assert not elsewhere, f"gpu-check runs {gpu_check.TIER.name} alone: move these gpu tests there: {elsewhere}"


def test_a_failing_step_leaves_the_steps_before_it_in_the_json(monkeypatch, tmp_path):
    """The lent GPU runs the check once: a step that fails (here the throughput, as an out-of-memory would) keeps
    its traceback, and the JSON holds what the steps before it measured."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "environment", lambda device: {"device": "faked"})
    monkeypatch.setattr(gpu_check, "gpu_tier", lambda: {"passed": True, "summary": "3 passed", "output": ""})
    monkeypatch.setattr(gpu_check.bench_cli, "main", lambda argv: [{"what": "forward", "ratio": 1.0}])

    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_check, "throughput", out_of_memory)
    report_file = tmp_path / "gpu.json"
    with pytest.raises(RuntimeError, match="out of memory"):
        gpu_check.main(["--json", str(report_file)])
    report = json.loads(report_file.read_text())
    assert report["gpu_tier"]["summary"] == "3 passed" and report["bench"] == [{"what": "forward", "ratio": 1.0}]
    assert "throughput" not in report


def test_a_hung_child_is_a_failed_step_with_its_output(monkeypatch, tmp_path):
    """A child (the gpu tier, the training) past its timeout is killed and reported failed, with what it printed
    (bytes on POSIX), instead of ending the whole check with subprocess's TimeoutExpired."""
    def hung(command, **kwargs):
        raise gpu_check.subprocess.TimeoutExpired(command, kwargs["timeout"], output=b"collected 4 items\n", stderr=b"")

    monkeypatch.setattr(gpu_check.subprocess, "run", hung)
    tier = gpu_check.gpu_tier()
    assert not tier["passed"] and "collected 4 items" in tier["output"] and "240" in tier["summary"]
    training = gpu_check.short_training(0.1, tmp_path)
    assert not training["passed"] and "killed after 186 s" in training["output"]


def test_each_sides_peak_is_its_own_step_above_what_both_hold_resident(monkeypatch):
    """Both models and their optimizer states stay on the GPU while either steps: a plain max_memory_allocated
    counted the other side's weights and state in each side's peak. A faked CUDA allocator: 6 GiB resident, the
    detlab step adds 3 GiB at its peak (and keeps 1, its gradients), torchvision's 2 GiB."""
    gib = 2**30
    allocator = {"now": 6 * gib, "peak": 6 * gib}

    def stepping(adds: int, keeps: int):
        def step():
            allocator["peak"] = max(allocator["peak"], allocator["now"] + adds * gib)
            allocator["now"] += keeps * gib
        return step

    monkeypatch.setattr(gpu_check.bench, "preset_pair", lambda *args: (None, None, None))
    monkeypatch.setattr(gpu_check.bench, "training_steps",
                        lambda *args, **kwargs: (stepping(3, 1), stepping(2, 0), (640, 640)))
    monkeypatch.setattr(gpu_check.bench, "compare", lambda *args, **kwargs: {"detlab_ms": 100.0, "reference_ms": 50.0})
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocator["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocator["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: allocator.update(peak=allocator["now"]))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    row = gpu_check.throughput(torch.device("cpu"), warmup=0, repeats=1)
    assert (row["detlab_step_peak_gib"], row["torchvision_step_peak_gib"], row["both_resident_gib"]) == (3, 2, 6)
    assert row["detlab_img_per_s"] == 160 and row["torchvision_img_per_s"] == 320


@pytest.mark.slow
def test_the_whole_check_rehearsed_on_the_cpu(monkeypatch, tmp_path, capsys):
    """Every step of make gpu-check with CUDA's calls stubbed, tiny sizes, and trainer=gpu on the CPU in bf16-mixed:
    the plumbing (paths, arguments, the report and its summary) and the GPU trainer's precision path work before a
    GPU is lent, whose minutes are few."""

    class CudaAsCpu:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def device(name, *args):
            return torch.device("cpu" if name == "cuda" else name, *args)

    monkeypatch.setattr(gpu_check, "torch", CudaAsCpu())
    for name, value in (("is_available", True), ("device_count", 1), ("max_memory_allocated", 0), ("memory_allocated", 0)):
        monkeypatch.setattr(torch.cuda, name, lambda *args, value=value: value)
    for name in ("reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: None)
    monkeypatch.setitem(gpu_check.THROUGHPUT, "batch", 1)
    monkeypatch.setitem(gpu_check.THROUGHPUT, "image_size", 128)
    bench_args = []
    real_bench, real_run = gpu_check.bench_cli.main, gpu_check.subprocess.run
    monkeypatch.setattr(gpu_check.bench_cli, "main", lambda argv: bench_args.extend(argv) or real_bench(
        ["--device", "cpu", "--quick", "--batch-sizes", "1", "--image-size", "128", "--presets", "--eval-images", "20",
         "--loader-batches", "0"]))

    def run(command, **kwargs):
        if "detlab.cli.train" in command:
            assert "trainer=gpu" in command
            # trainer=gpu as it is (its clipping, the optimizer's fused kernels) on the CPU, with the CPU's mixed
            # precision: bf16-mixed takes Lightning's MixedPrecision plugin as 16-mixed does, where the fused
            # optimizer and the clipping once stopped every trainer=gpu run at its first step
            command = [*command, "trainer.accelerator=cpu", "trainer.precision=bf16-mixed",
                       "data.source.num_train_images=16", "data.source.num_val_images=8", "data.image_size=96"]
        return real_run(command, **kwargs)

    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    report_file = tmp_path / "gpu.json"
    assert gpu_check.main(["--json", str(report_file), "--train-minutes", "0.2", "--warmup", "0", "--repeats", "1"]) == 0
    assert bench_args == ["--device", "cuda"]
    report = json.loads(report_file.read_text())
    assert report["gpu_tier"]["passed"] and "skipped" in report["gpu_tier"]["summary"]  # found, and skips on a CPU
    assert report["training"]["passed"] and report["bench"]
    assert report["throughput"]["detlab_img_per_s"] > 0 and report["throughput"]["torchvision_img_per_s"] > 0
    summary = capsys.readouterr().out
    assert "gpu tier:   ok" in summary and "training:   ok" in summary and "AP " in summary
