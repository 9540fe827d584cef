"""Checkpoint files: written whole or not at all, read with a named error, and carrying the random state.

- `AtomicCheckpointIO` (Lightning's CheckpointIO plugin) writes a checkpoint to a temporary file in the same
  folder, flushes it to the disk and renames it over the old one: a kill or a full disk leaves the previous
  `last.ckpt` / `best.ckpt` as it was, never a truncated file. (Lightning's own TorchCheckpointIO stages the
  file in the system's temp folder and moves it: across file systems that move is a copy, which a kill or a
  full disk cuts short.)
- `read_checkpoint` is how detlab opens a checkpoint (resume, evaluation, speed): a truncated, corrupt or
  foreign file is a CheckpointError naming it; `check_resumable` what a resume (ckpt_path) can continue, and
  `check_state_fits` that its weights and optimizer state fit the model and optimizer the run built.
- `checkpoint_callbacks` writes what the `checkpoint` config asks for: last.ckpt after every epoch (save_last)
  and the save_top_k best by val AP, both full checkpoints (optimizer and schedule state included, for a
  resume); `save_weights` the small weights file at the end (weights and hyper-parameters only), which
  detlab-predict, detlab-eval and `model.weights=` read like any checkpoint.
- `RandomState` keeps the random generators (Python, NumPy, torch) in the checkpoint and restores them on
  resume, so that the epochs after a resume draw the same shuffles and augmentations as an uninterrupted run.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, WeightAveraging

from detlab.distributed import from_every_rank
from detlab.errors import CheckpointError, ConfigError, writing
from detlab.files import replaced_atomically

# The keys every checkpoint detlab writes holds (Lightning's, plus the module's hyper-parameters).
REQUIRED_KEYS = ("state_dict", "hyper_parameters", "global_step")
WEIGHTS_FILE = "weights.ckpt"  # in <run dir>/checkpoints
# What a resume restores, so a resumed run must keep the checkpoint's values: the weights fit its model and the head
# its loss sized, and the optimizer state brings back its own lr and weight decay over optim.* (a changed value would
# be recorded in results.json and never used).
RESUMED_KEYS = ("model", "loss", "optim")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A detlab checkpoint's dict (on the CPU); CheckpointError for a missing, truncated, corrupt or foreign file."""
    path = Path(path)
    if path.is_dir():  # detlab-eval and detlab-predict take a run directory (inference.checkpoint_of); a resume does not
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: give the .ckpt file itself (a run's "
                              "checkpoints/last.ckpt to resume it)")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (give a .ckpt file written by detlab-train)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises whatever its unpickler meets in a bad file
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "it is truncated or corrupt: use another checkpoint (best.ckpt, or last.ckpt of the run)"
        ) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing or "cfg" not in checkpoint["hyper_parameters"]:
        raise CheckpointError(
            f"{path} is not a checkpoint written by detlab-train (it lacks {missing or ['hyper_parameters.cfg']}); "
            "give the last.ckpt or best.ckpt of a detlab run"
        )
    return checkpoint


def check_resumable(path: str | Path, checkpoint: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """CheckpointError unless the run configured by `cfg` (resolved, plain) can continue `checkpoint` (at path):
    a full checkpoint (not a weights file), the same RESUMED_KEYS, its weight average when it kept one, and training
    left before trainer.max_epochs or trainer.max_steps or early stopping (else Lightning stops at once and the run's results would be
    overwritten by a re-run)."""
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(
            f"{path} holds weights only (no optimizer or loop state), so there is nothing to resume: resume from the "
            f"run's checkpoints/last.ckpt, or start a new run from these weights with model.weights={path}"
        )
    changed = [
        f"{key}={new!r} (the checkpoint's: {old!r})"
        for key, old, new in _differences(checkpoint["hyper_parameters"]["cfg"], cfg, RESUMED_KEYS)
    ]
    if changed:
        raise CheckpointError(
            f"ckpt_path={path} continues a run with other {', '.join(RESUMED_KEYS)} than this one: "
            f"{'; '.join(changed)}. A resume keeps the checkpoint's model and optimizer state: resume with the run's "
            f"own overrides (its .hydra/overrides.yaml), or start a new run from its weights with model.weights={path}"
        )
    if "current_model_state" in checkpoint and not _has_callback(cfg, WeightAveraging):
        # Lightning's WeightAveraging keeps the average as the checkpoint's state_dict (the trained weights beside it,
        # which only the callback restores): without it the run continued from the average, with the optimizer state
        # of the trained weights
        raise CheckpointError(
            f"{path} was written with a weight average (callbacks.ema), and this run has none: its state_dict is the "
            f"average, which a resume without the callback would train on. Resume with the run's callbacks "
            f"(callbacks=[default,ema]), or start a new run from the average with model.weights={path}"
        )
    epochs = checkpoint["loops"].get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    limits = {key: cfg["trainer"].get(key) for key in ("max_epochs", "max_steps")}
    reached = {"max_epochs": epochs, "max_steps": checkpoint["global_step"]}
    stops = [f"trainer.{key}={limit}" for key, limit in limits.items()
             if limit not in (None, -1) and reached[key] is not None and reached[key] >= limit]
    early = [state["stopped_epoch"] for key, state in checkpoint.get("callbacks", {}).items()
             if key.startswith("EarlyStopping") and isinstance(state, Mapping) and state.get("stopped_epoch")]
    if early and _has_callback(cfg, EarlyStopping):
        # Lightning restores EarlyStopping's state (its patience too): the run trained one epoch more, stopped again
        # and wrote over the finished run's results.json
        raise CheckpointError(
            f"{path} has finished: early stopping ended it after epoch {early[0]}, and a resume with it stops again "
            f"at the first validation that does not improve (its state, patience included, is the checkpoint's). Score the run again with detlab-eval run, or "
            f"train on without early stopping (callbacks=[default])"
        )
    if stops:
        raise CheckpointError(
            f"{path} has finished: it trained {epochs} epoch(s), {checkpoint['global_step']} steps, and this run stops "
            f"at {' and '.join(stops)}. Raise it to train on, or score the run again with detlab-eval run"
        )


def check_state_fits(
    path: str | Path, checkpoint: Mapping[str, Any], cfg: Mapping[str, Any], module: torch.nn.Module,
    groups: Sequence[Mapping[str, Any]],
) -> None:
    """CheckpointError unless the checkpoint's weights have this run's module's names and shapes, and its optimizer
    state the sizes of `groups` (the parameter groups this run's optimizer is built over), checked before anything
    is logged or trained. check_resumable compares the keys both configs hold; a key the checkpoint's config lacks
    (one detlab added after the checkpoint was written) is met here, where it changed the model or the optimizer,
    instead of in torch's load (a ValueError about parameter groups, or a RuntimeError listing missing weights)."""
    shapes = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    saved = {name: tuple(value.shape) for name, value in checkpoint["state_dict"].items()}
    weights = sorted(name for name in shapes.keys() | saved.keys() if shapes.get(name) != saved.get(name))
    sizes = [len(group["params"]) for group in groups]
    saved_sizes = [len(group["params"]) for group in checkpoint["optimizer_states"][0]["param_groups"]]
    if not weights and sizes == saved_sizes:
        return
    what = (f"{len(weights)} weight(s) differ in name or shape (first: {weights[0]}: this run's "
            f"{shapes.get(weights[0])}, the checkpoint's {saved.get(weights[0])})" if weights else
            f"the optimizer's parameter groups hold {sizes} parameters, the checkpoint's {saved_sizes}")
    lacks = [f"{key}={value!r}" for key, value in _absent(checkpoint["hyper_parameters"]["cfg"], cfg, RESUMED_KEYS)]
    because = f" This run sets keys the checkpoint's config lacks: {', '.join(lacks)}." if lacks else ""
    raise CheckpointError(
        f"ckpt_path={path} does not fit this run's model and optimizer: {what}.{because} A resume continues the "
        f"checkpoint's own run: resume with the settings it was trained with, or start a new run from its weights "
        f"with model.weights={path}"
    )


def _absent(old: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str], prefix: str = ""):
    """(dotted key, new value) for each leaf under `keys` that `new` holds and `old` lacks."""
    for key in keys:
        if key not in new:
            continue
        if key not in old:
            yield f"{prefix}{key}", new[key]
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            yield from _absent(old[key], new[key], list(new[key]), f"{prefix}{key}.")


def _has_callback(cfg: Mapping[str, Any], kind: type) -> bool:
    """Whether the callbacks group of a (resolved, plain) config builds a `kind` (detlab's EMA is a WeightAveraging)."""
    from hydra.utils import get_object

    for node in (cfg.get("callbacks") or {}).values():
        target = node.get("_target_") if isinstance(node, Mapping) else None
        try:
            found = get_object(target) if isinstance(target, str) else None
        except (ImportError, ValueError):  # a target that does not import: _build names it when the callbacks are built
            continue
        if isinstance(found, type) and issubclass(found, kind):
            return True
    return False


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str], prefix: str = ""):
    """(dotted key, old value, new value) for each leaf under `keys` that both configs hold with different values."""
    for key in keys:
        if key not in old or key not in new:
            continue
        if isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            yield from _differences(old[key], new[key], [k for k in new[key] if k in old[key]], f"{prefix}{key}.")
        elif old[key] != new[key]:
            yield f"{prefix}{key}", old[key], new[key]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with the write made atomic (see the module's docstring); reads via read_checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        fix = "the previous checkpoint there is kept; free space on that disk or set hydra.run.dir to another folder"
        with writing(path, "a checkpoint", fix):
            path.parent.mkdir(parents=True, exist_ok=True)
            with replaced_atomically(path) as file:
                torch.save(checkpoint, file)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)


def checkpoint_callbacks(folder: Path, save_last: bool, save_top_k: int) -> list[ModelCheckpoint]:
    """The full checkpoints of a run (conf/train.yaml's `checkpoint`): the save_top_k best by val AP (best.ckpt
    when one, best-epoch=<n>.ckpt when several; -1 keeps every validation's) and last.ckpt after every epoch."""
    if not isinstance(save_top_k, int) or save_top_k < -1:
        raise ConfigError(f"checkpoint.save_top_k={save_top_k!r}: use 0 (none), k >= 1 (the k best by val AP) or -1 "
                          "(every validation's)")
    callbacks = []
    if save_top_k != 0:
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="best" if save_top_k == 1 else "best-{epoch}",
                                         monitor="val/AP", mode="max", save_top_k=save_top_k))
    if save_last:
        # A checkpoint of its own, not ModelCheckpoint(save_last=True): that writes last.ckpt only when a best
        # improved, so a run whose AP plateaued resumed from its best epoch, not its last. At the end of every train
        # epoch (after that epoch's validation): Lightning's default under trainer.check_val_every_n_epoch > 1 saves at
        # validation end only, so no last.ckpt until then, and one inside the epoch, whose replay on resume drew the
        # train loader's seed again (other shuffles than the run never stopped).
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False,
                                         save_on_train_epoch_end=True))
    return callbacks


def save_weights(module: pl.LightningModule, path: Path, global_step: int) -> None:
    """The weights file: the module's weights and hyper-parameters (the run's config and label space), without
    the optimizer state, random state or loops, written atomically. A third of a full AdamW checkpoint."""
    weights = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "global_step": global_step,
        "pytorch-lightning_version": pl.__version__,  # what wrote it, as in Lightning's full checkpoints
    }
    AtomicCheckpointIO().save_checkpoint(weights, path)


class RandomState(pl.Callback):
    """The random generators in the checkpoint, restored on resume, so that a resumed run draws what an
    uninterrupted one would have drawn: Python's, NumPy's and torch's global generators (the shuffle, the
    loader workers' seeds) and, when the loader has no workers, the train augmentation's own generators (under DDP,
    each rank's).

    Loader workers (data.num_workers > 0) are persistent: they keep the augmentation stream they were started
    with across epochs, which no checkpoint can hold; a resumed run then augments with other draws.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Plain types and tensors only: Lightning and detlab-eval load checkpoints with torch's weights_only.
        name, keys, *rest = np.random.get_state()
        state = {"python": random.getstate(), "numpy": (name, keys.tolist(), *rest), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        state["augment"] = [
            (step.py_random.getstate(), step.random_generator.bit_generator.state)
            for step in _augmentation_steps(trainer)
        ]
        # every rank comes here and Lightning writes rank 0's dict: it keeps each rank's augmentation stream
        state["augment_by_rank"] = from_every_rank(state["augment"])
        checkpoint["random_state"] = state

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("random_state")
        if state is None:  # a checkpoint written before detlab kept it
            return
        random.setstate(state["python"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            # one state per GPU of the saving machine: a resume on fewer GPUs restores those it has (torch would
            # index a generator that is not there), one on more keeps the extra GPUs' fresh ones
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
        # Under DDP each rank continues its own stream; a rank the saving run did not have keeps the fresh one of
        # its rank (DetectionDataModule.setup), as does a changed augmentation config.
        by_rank = state.get("augment_by_rank", [state["augment"]])
        saved = by_rank[trainer.global_rank] if trainer.global_rank < len(by_rank) else None
        steps = _augmentation_steps(trainer)
        if saved is not None and len(steps) == len(saved):
            for step, (py_state, np_state) in zip(steps, saved):
                step.py_random.setstate(py_state)
                step.random_generator.bit_generator.state = np_state


def _augmentation_steps(trainer: pl.Trainer) -> list[Any]:
    """The train transform's albumentations Compose and its steps, each of which holds its own generators."""
    datasets = getattr(trainer.datamodule, "datasets", {})
    stack = [getattr(getattr(datasets.get("train"), "transform", None), "pipeline", None)]
    steps = []
    while stack:
        step = stack.pop()
        if hasattr(step, "py_random") and hasattr(step, "random_generator"):
            steps.append(step)
        stack.extend(getattr(step, "transforms", None) or [])
    return steps


def load_hparams(checkpoint: str | Path) -> dict[str, Any]:
    """The plain hyper-parameters a checkpoint stores: cfg, num_classes, category_ids, class_names."""
    return read_checkpoint(checkpoint)["hyper_parameters"]


def check_classes(
    checkpoint: str | Path, trained_names: Sequence[str], trained_ids: Sequence[int],
    class_names: Sequence[str], category_ids: Sequence[int],
) -> None:
    """A checkpoint's head has one output per class it was trained on (trained_names, trained_ids), and its labels
    mean the categories of the file it was trained on: a dataset with other classes cannot continue or score it."""
    if list(category_ids) != list(trained_ids) or list(class_names) != list(trained_names):
        raise CheckpointError(
            f"the dataset's classes {list(class_names)} (category ids {list(category_ids)}) are not the ones "
            f"{checkpoint} was trained on: {list(trained_names)} (ids {list(trained_ids)}); its head predicts "
            f"{len(trained_ids)} classes. Use the dataset it was trained on, or start a new run without it"
        )
