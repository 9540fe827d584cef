"""What detlab-train prints around the training: a start block (what runs, how big, on which data, where its files
go) and an end block (the scores and where everything was written); and the known library noise kept off the
console, filtered by its message so that nothing else is hidden.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detlab.evaluation.coco_table import format_table
from detlab.profile.cost import format_complexity
from detlab.profile.speed import format_speed

# Known noise, by message: torch 2.14 deprecates the LeafSpec that Lightning 2.6's _pytree still builds (a
# FutureWarning on every fit), and Lightning advertises its litlogger service on every Trainer. Under DDP Lightning
# asks for sync_dist=True on each val/AP..val/ARl metric (12 lines a run), which the evaluator has gathered from
# every rank already (DetectionModule.on_validation_epoch_end): each rank logs the same numbers.
NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"It is recommended to use `self\.log\('val/A[PR]\w*', \.\.\., sync_dist=True\)`",
)
NOISE_LOGS = {"pytorch_lightning.utilities.rank_zero": ("try installing [litlogger]",)}


def quiet_library_noise() -> None:
    """Filter the known noise (above) at an entry point; every other warning and log line still shows."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, messages in NOISE_LOGS.items():
        logging.getLogger(name).addFilter(lambda record, drop=messages: not any(m in record.getMessage() for m in drop))


def start_block(
    choices: Mapping[str, str],
    num_classes: int,
    cost: Mapping[str, Any],
    counts: Mapping[str, int],
    run_dir: Path,
    logger_line: str,
    overrides: Sequence[str],
) -> str:
    """The lines printed before the first step.

    choices:  Hydra's config choices (model, model/backbone, loss, data, ...); cost: profile.complexity;
    counts:   DetectionDataModule.counts(); logger_line: logger_summary's.
    """
    groups = [g for g in ("model/backbone", "model/neck", "model/head") if choices.get(g)]
    parts = ", ".join(f"{choices[g]} {g.split('/')[1]}" for g in groups)
    splits = [s for s in ("train", "val") if f"data/{s}_images" in counts]
    data = ", ".join(f"{s} {counts[f'data/{s}_images']} images / {counts[f'data/{s}_objects']} objects" for s in splits)
    detector = choices.get("model") + (f" ({parts})" if parts else "")
    lines = [
        f"detector   {detector}, loss {choices.get('loss')}, {num_classes} classes",
        format_complexity(cost),
        f"data       {choices.get('data')}: {data}",
        f"run dir    {run_dir}",
        f"logger     {logger_line}",
        f"overrides  {' '.join(overrides) or '(none)'}",
    ]
    return "\n".join(lines)


def end_block(results: Mapping[str, Any], run_dir: Path, logger_line: str, sync: str | None) -> str:
    """The lines printed at the end: the COCO table, cost and speed, results.json, the checkpoints with their
    sizes, the logger's files and, for an offline W&B run, the command that uploads it (sync)."""
    lines = [format_table(results), format_complexity(results["complexity"])]
    if "speed" in results:
        lines.append(format_speed(results["speed"]))
    lines.append(f"results      {run_dir / 'results.json'}")
    sizes = [f"{Path(p).name} ({Path(p).stat().st_size / 1e6:.1f} MB)" for p in results["checkpoints"]]
    written = ", ".join(sizes) or "none (checkpoint.save_last, save_top_k and weights are off)"
    lines.append(f"checkpoints  {run_dir / 'checkpoints'}: {written}")
    lines.append(f"logger       {logger_line}")
    if sync:
        lines.append(f"upload       {sync}")
    return "\n".join(lines)
