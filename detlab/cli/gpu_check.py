"""make gpu-check: one script (at most 8 minutes on one GPU) that verifies detlab on CUDA and measures it.

    python -m detlab.cli.gpu_check [--json gpu_check.json] [--train-minutes 2]

1. the suite's `gpu` tier (tests/test_gpu.py under pytest): CUDA NMS through detlab's post-processing equals
   the CPU's; a 16-mixed and a bf16 training step of the default model are finite; NCCL DDP on 2 GPUs when
   there are 2 or more;
2. make bench's rows on CUDA (detlab.cli.bench --device cuda);
3. RetinaNet R50-FPN training throughput (img/s) and peak memory at 640 px, bf16, batch 16:
   model=tv_retinanet_r50_fpn against torchvision's retinanet_resnet50_fpn with the same weights, alternating in
   the same run (detlab.profile.bench's training steps and protocol);
4. a short training (detlab-train trainer=gpu on the built-in shapes data, --train-minutes of wall time): it
   ends with a finite loss (DetectionModule stops on a non-finite one) and the COCO table.
Prints a summary and writes every number to --json, rewritten after each step: a step that fails, or a kill at the
lent machine's limit, leaves the steps before it. Without CUDA it says so and exits 0 at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from detlab.cli import bench as bench_cli
from detlab.files import write_text_atomically
from detlab.profile import bench
from detlab.profile.speed import environment

ROOT = Path(__file__).resolve().parents[2]  # the checkout (detlab/cli/gpu_check.py): its tests/ hold the tier
TIER = ROOT / "tests" / "test_gpu.py"  # the `gpu` tier: pytest -m gpu
THROUGHPUT = {"preset": "tv_retinanet_r50_fpn", "batch": 16, "image_size": 640, "precision": "bf16-mixed"}


def child(command: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, str]:
    """(exit status, stdout, stderr) of command; status None when it ran past timeout seconds (killed): a hung step
    is a failed one, not the end of this script."""
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:  # its output so far: bytes on POSIX, whatever text= says
        stdout, stderr = (out.decode(errors="replace") if isinstance(out, bytes) else out or ""
                          for out in (expired.stdout, expired.stderr))
        return None, stdout, stderr + f"\ngpu-check: killed after {timeout:g} s"
    return proc.returncode, proc.stdout, proc.stderr


def gpu_tier() -> dict[str, Any]:
    """The gpu tier's file under pytest in a child process (a failing test must not take this script with it).
    Its file alone: collecting the whole suite would import what only other tiers need (W&B, the sweepers),
    which a bare GPU machine may lack."""
    returncode, stdout, stderr = child(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(TIER)], ROOT, 240)
    lines = stdout.strip().splitlines()
    if returncode is None:
        return {"passed": False, "summary": "killed after 240 s", "output": (stdout + stderr)[-4000:]}
    return {"passed": returncode == 0, "summary": lines[-1] if lines else stderr[-500:], "output": stdout[-4000:]}


def throughput(device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Training img/s and peak memory of detlab's preset and torchvision's model (THROUGHPUT's conditions)."""
    size, batch = THROUGHPUT["image_size"], THROUGHPUT["batch"]
    cfg, parts, theirs = bench.preset_pair(THROUGHPUT["preset"], size, size, device)
    ours, reference, (h, w) = bench.training_steps(cfg, parts, theirs, batch, device, THROUGHPUT["precision"],
                                                   photo_shape=(size, size))
    row = bench.compare("train step", ours, reference, warmup, repeats, device, model=THROUGHPUT["preset"],
                        batch=batch, input=f"{h}x{w}", precision=THROUGHPUT["precision"])
    # Both models, their gradients and optimizer states stay resident while either steps, so a plain peak would
    # count the other side's too: each side's peak is measured above what is allocated when its step starts (its
    # activations and the step's temporaries), and what both hold resident is reported once beside them.
    peaks = {}
    resident = torch.cuda.memory_allocated(device)
    for name, step in (("detlab", ours), ("torchvision", reference)):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peaks[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    return {**row, "detlab_img_per_s": batch * 1e3 / row["detlab_ms"],
            "torchvision_img_per_s": batch * 1e3 / row["reference_ms"],
            "detlab_step_peak_gib": peaks["detlab"], "torchvision_step_peak_gib": peaks["torchvision"],
            "both_resident_gib": resident / 2**30}


def short_training(minutes: float, workdir: Path) -> dict[str, Any]:
    """detlab-train on the built-in data for `minutes` of wall time (Lightning's max_time), then its evaluation."""
    run_dir = workdir / "train"
    seconds = int(minutes * 60)
    overrides = ["trainer=gpu", "trainer.max_epochs=1000", f"+trainer.max_time='00:00:{seconds // 60:02d}:{seconds % 60:02d}'",
                 "logger=none", "speed.repeats=10", f"hydra.run.dir={run_dir}"]
    returncode, stdout, stderr = child([sys.executable, "-m", "detlab.cli.train", *overrides], workdir, seconds + 180)
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if returncode == 0 and results_file.is_file() else {}
    return {"passed": bool(results), "overrides": overrides, "metrics": results.get("metrics"),
            "global_step": results.get("global_step"), "output": (stdout + stderr)[-3000:]}


def summary(report: dict[str, Any]) -> str:
    tier, train, speed = report["gpu_tier"], report["training"], report["throughput"]
    ap = f"AP {train['metrics']['AP']:.3f}" if train["metrics"] else "no COCO table"
    return "\n".join([
        f"gpu-check on {report['environment']['device']} ({report['gpus']} GPU(s)), torch {report['environment']['torch']}, "
        f"CUDA {report['environment']['cuda']}",
        f"gpu tier:   {'ok' if tier['passed'] else 'FAILED'} ({tier['summary']})",
        f"throughput: {THROUGHPUT['preset']} at {speed['input']}, {THROUGHPUT['precision']}, batch {speed['batch']}: "
        f"detlab {speed['detlab_img_per_s']:.1f} img/s (step peak {speed['detlab_step_peak_gib']:.2f} GiB), "
        f"torchvision {speed['torchvision_img_per_s']:.1f} img/s (step peak {speed['torchvision_step_peak_gib']:.2f} "
        f"GiB); peaks above the {speed['both_resident_gib']:.2f} GiB both models hold resident",
        f"training:   {'ok' if train['passed'] else 'FAILED'}, {train['global_step']} steps, {ap}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detlab.cli.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--train-minutes", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "nothing to check")
        return 0
    device = torch.device("cuda")
    report: dict[str, Any] = {"environment": environment(device), "gpus": torch.cuda.device_count()}

    def save() -> None:  # after each step: what was measured outlives a later step's failure or a kill
        write_text_atomically(args.json, json.dumps(report, indent=1))

    report["gpu_tier"] = gpu_tier()
    save()
    print(report["gpu_tier"]["output"], flush=True)
    report["bench"] = bench_cli.main(["--device", "cuda"])
    save()
    report["throughput"] = throughput(device, args.warmup, args.repeats)
    save()
    with tempfile.TemporaryDirectory() as tmp:
        report["training"] = short_training(args.train_minutes, Path(tmp))
    save()
    print(report["training"]["output"], flush=True)
    print(summary(report))
    print(f"report: {args.json}")
    return 0 if report["gpu_tier"]["passed"] and report["training"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
