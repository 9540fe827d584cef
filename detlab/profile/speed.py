"""The speed protocol (`measure_speed`), so that numbers from different runs and machines can be compared:
- three stages timed separately, each one's output feeding the next: pre-processing (the eval transform of a
  real image, collate to a Batch, copy to the device), the model's forward, post-processing (decode + NMS);
- latency per image at batch 1, and throughput at `batch_size` images per call;
- `warmup` untimed iterations first (cuDNN autotuning, allocator growth, lazy prior caches), then `repeats`
  timed ones; the device is synchronised before each clock read (torch.cuda.synchronize on CUDA: kernels
  are asynchronous, so an unsynchronised clock measures the launch, not the work; nothing on CPU);
- median and 90th percentile over the repeats, per stage and for the sum of the stages;
- recorded with the facts that decide the number: input size, batch size, precision, device name,
  torch/CUDA versions, CPU threads, parameters and FLOPs.
Pre-processing runs in this process, one image after the other, as in a single-image deployment; a
DataLoader with workers overlaps it with the model in training.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlab.data.coco.reader import read_image_file
from detlab.errors import ConfigError
from detlab.inference import Predictor
from detlab.profile.cost import complexity

# Lightning's precision names (and their short aliases) -> the autocast dtype (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32-true": None, "32": None, "16-mixed": torch.float16, "16": torch.float16,
    "bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16,
}
STAGES = ("preprocess", "model", "postprocess")


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits until `device` has finished its queued work (a no-op where work is synchronous)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def time_stages(
    stages: Sequence[tuple[str, Callable[[Any], Any]]],
    first_input: Any,
    warmup: int,
    repeats: int,
    synchronize: Callable[[], None],
) -> dict[str, list[float]]:
    """Run the stages as a pipeline (each gets the previous one's output) warmup + repeats times; return the
    seconds each stage took in the timed repeats, {name: [repeats floats]}.

    The loop is sequential by nature: each repeat is one measurement.
    """
    times: dict[str, list[float]] = {name: [] for name, _ in stages}
    for iteration in range(warmup + repeats):
        value = first_input
        for name, stage in stages:
            synchronize()  # the previous stage's queued work must not be billed to this one
            start = time.perf_counter()
            value = stage(value)
            synchronize()
            if iteration >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """{"median": ms, "p90": ms} of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90))}


def measure_speed(
    predictor: Predictor,
    *,
    image: np.ndarray | None = None,
    device: torch.device | str | None = None,
    precision: str | int = "32-true",
    batch_size: int = 8,
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, Any]:
    """Speed of a built detector under the protocol above, as a plain dict for results.json ("speed").

    predictor:    the inference object (detlab.inference.Predictor): the run's eval transform, model and
                  post-processing, so that a preset is timed with its own resize and normalisation.
    image:        a real RGB uint8 image [H, W, 3] to pre-process (e.g. the first val image); None = a
                  synthetic image_size x image_size one.
    device:       where to run; None = where the model's parameters are. The model is moved there.
    precision:    a Lightning precision name: 32-true, 16-mixed or bf16-mixed (autocast).

    Returns {"ms_per_img", "img_per_s", "latency_ms" (batch 1) and "batch_ms" (at batch_size), each
    {stage: {"median", "p90"}} for preprocess, model, postprocess and total, then batch_size, warmup,
    repeats, input_size, precision, params, gflops, device, torch, cuda, threads}.
    """
    check_protocol(batch_size, warmup, repeats, precision)
    autocast_dtype = PRECISIONS[str(precision)]
    model = predictor.model
    device = torch.device(device) if device is not None else predictor.device
    model.to(device)
    image_size = predictor.transform.image_size
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    sync = synchronizer(device)
    stages = [("preprocess", predictor.preprocess), ("model", predictor.forward), ("postprocess", predictor.detect)]

    was_training = model.training
    model.eval()
    try:
        autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            latency = time_stages(stages, [image], warmup, repeats, sync)
            batched = time_stages(stages, [image] * batch_size, warmup, repeats, sync)
    finally:
        model.train(was_training)

    latency_ms, batch_ms = _per_stage_ms(latency), _per_stage_ms(batched)
    return {
        "ms_per_img": latency_ms["total"]["median"],
        "img_per_s": batch_size * 1e3 / batch_ms["total"]["median"],
        "latency_ms": latency_ms,
        "batch_ms": batch_ms,
        "batch_size": batch_size,
        "warmup": warmup,
        "repeats": repeats,
        "precision": str(precision),
        **complexity(model, image_size),
        **environment(device),
    }


def speed_summary(speed: dict[str, Any]) -> dict[str, float]:
    """The logger's summary of `measure_speed`'s dict: slash-separated scalars (speed/ms_per_img, ...)."""
    summary = {"speed/ms_per_img": speed["ms_per_img"], "speed/img_per_s": speed["img_per_s"]}
    for stage in (*STAGES, "total"):
        summary[f"speed/{stage}_ms"] = speed["latency_ms"][stage]["median"]
        summary[f"speed/{stage}_ms_p90"] = speed["latency_ms"][stage]["p90"]
    return summary


def environment(device: torch.device) -> dict[str, Any]:
    """The device's name and the software versions and settings a speed number depends on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}: {cpu_name()}"
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "allocator": allocator_settings(),
    }


def allocator_settings() -> dict[str, str]:
    """The environment variables that change how host memory is allocated (glibc's MALLOC_*, jemalloc's
    MALLOC_CONF, tcmalloc's TCMALLOC_*, a preloaded allocator): on a CPU they move a training step by 10-20 %
    (README, Benchmarks), so a speed number carries them. Empty: the C library's defaults."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "TCMALLOC_")) or k == "LD_PRELOAD"}


def describe_allocator(settings: dict[str, str]) -> str:
    """", K=V" per allocator setting, for a line of conditions; nothing for the C library's defaults."""
    return "".join(f", {k}={v}" for k, v in settings.items())


def run_speed(
    path: str | Path,
    overrides: Sequence[str] = (),
    image: str | Path | None = None,
    device: str = "auto",
    **protocol: Any,
) -> dict[str, Any]:
    """`measure_speed` of a trained run, for `detlab-eval speed`: a run directory's final weights or a checkpoint,
    rebuilt by Predictor.from_run from its saved config (plus dotlist overrides such as data.image_size=512).
    Neither the dataset nor its annotation file has to exist on the machine that measures. image: an image file to
    pre-process (None = synthetic). device: auto (CUDA when there is one), cpu, cuda, cuda:1, ... protocol:
    measure_speed's keywords (batch_size, warmup, repeats, precision; precision defaults to the run's
    trainer.precision).
    """
    predictor, cfg = Predictor.from_run(path, overrides)
    protocol.setdefault("precision", cfg.trainer.get("precision", "32-true"))
    return measure_speed(
        predictor.to(device), image=read_image_file(image) if image is not None else None, **protocol
    )


def format_speed(speed: dict[str, Any]) -> str:
    """A few lines for the console: the headline numbers and the conditions they hold under."""
    lat = speed["latency_ms"]
    stages = ", ".join(f"{s} {lat[s]['median']:.2f}" for s in STAGES)
    return (
        f"speed: {speed['ms_per_img']:.2f} ms/img at batch 1 ({stages}; p90 {lat['total']['p90']:.2f}), "
        f"{speed['img_per_s']:.1f} img/s at batch {speed['batch_size']}\n"
        f"       {speed['input_size']} px, {speed['precision']}, {speed['device']}, torch {speed['torch']}, "
        f"CUDA {speed['cuda']}{describe_allocator(speed['allocator'])}, median of {speed['repeats']} after "
        f"{speed['warmup']} warm-up"
    )


def _per_stage_ms(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    total = np.sum([times[s] for s in STAGES], axis=0)  # per repeat: the stages of one pass add up
    return {**{s: summarize_ms(times[s]) for s in STAGES}, "total": summarize_ms(total)}


def check_protocol(batch_size: int, warmup: int, repeats: int, precision: str | int,
                   precision_key: str = "speed.precision") -> None:
    """The protocol's settings (conf/train.yaml's `speed`); validate() asks before training, which the protocol
    follows. precision_key: where the precision came from (trainer.precision when speed.precision is null)."""
    for key, value, least in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"speed.{key}={value!r} must be an integer >= {least}")
    if str(precision) not in PRECISIONS:  # (validate refuses such a trainer.precision before, for training too)
        raise ConfigError(f"{precision_key}={precision!r} is not one the speed protocol measures; use 32-true, "
                          "16-mixed or bf16-mixed")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
