"""detlab-train: compose, validate, instantiate, fit, evaluate, write results.json.

    detlab-train model/backbone=resnet50 loss.gamma=0 data.image_size=320 trainer.max_epochs=3
    detlab-train -m loss.gamma=0,1,2          # a Hydra multirun sweep
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

from detlab.checkpoint import WEIGHTS_FILE, AtomicCheckpointIO, RandomState, checkpoint_callbacks, read_checkpoint, save_weights
from detlab.config import CONF_DIR, validate
from detlab.console import end_block, quiet_library_noise, start_block
from detlab.data.datamodule import eval_transform
from detlab.errors import check_writable, user_errors
from detlab.evaluation.figures import plot_error_analysis
from detlab.inference import Predictor
from detlab.module import DetectionModule, check_classes
from detlab.profile.cost import complexity
from detlab.profile.speed import measure_speed, speed_summary
from detlab.provenance import provenance
from detlab.pruning import MedianStopping
from detlab.tracking import logger_summary


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured detector; return (and write to run_dir/results.json) its final evaluation."""
    validate(cfg)
    saved = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None  # a bad file stops before any work
    logger = _logger(cfg, run_dir, wandb_id=saved.get("wandb_id") if saved else None)
    callbacks = _callbacks(cfg, run_dir, logger)  # a callback that rejects its arguments stops before any work too
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    if saved:  # resuming: the checkpoint's head must predict this dataset's classes
        check_classes(saved["hyper_parameters"], cfg.ckpt_path, list(datamodule.class_names), list(datamodule.category_ids))
    module = DetectionModule(
        OmegaConf.to_container(cfg, resolve=True),
        num_classes=datamodule.num_classes,
        category_ids=list(datamodule.category_ids),
        class_names=list(datamodule.class_names),
        val_ann_file=str(datamodule.ann_file("val")),
    )
    # The global random state again from the seed alone: building a model draws from it (one model more than
    # another), and the train loader's order and worker seeds are drawn from it, so that two models trained with
    # one seed see the same batches (experiments/tv_parity). A resume restores the checkpoint's state over this.
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    pruning = MedianStopping(run_dir, cfg.prune.warmup_epochs, cfg.prune.min_trials) if cfg.prune.enabled else None
    if pruning:
        callbacks.append(pruning)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir),
        # without a checkpoint callback Lightning would add its own (epoch=<n>-step=<m>.ckpt)
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    data_files = {split: (ds.ann_file, str(ds.img_dir)) for split, ds in datamodule.datasets.items()}
    origin = provenance(OmegaConf.to_container(cfg, resolve=True), data_files, trainer.strategy.root_device)
    if logger:  # in the W&B config, where runs are filtered and grouped
        logger.log_hyperparams({"provenance": origin})
    cost = complexity(module.model, cfg.data.image_size)
    logged = logger_summary(logger) if trainer.is_global_zero else ("", None)
    if trainer.is_global_zero:
        hydra_cfg = HydraConfig.get()
        print(start_block(hydra_cfg.runtime.choices, datamodule.num_classes, cost, datamodule.counts(), run_dir,
                          logged[0], hydra_cfg.overrides.task), flush=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if module.last_eval is None or module.last_eval_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)

    results = {
        **module.last_eval,
        "complexity": cost,
        "data": {"counts": datamodule.counts(), "problems": datamodule.problems, "notes": datamodule.notes},
        "global_step": trainer.global_step,
        "curve": module.curve,
        "pruned": pruning.pruned if pruning else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "provenance": origin,
    }
    if trainer.is_global_zero:
        if cfg.speed.enabled:  # rank 0 alone: the other ranks would only compete for the same device
            results["speed"] = _speed(cfg, module, datamodule, trainer.strategy.root_device)
        if cfg.checkpoint.weights:
            save_weights(module, run_dir / "checkpoints" / WEIGHTS_FILE, trainer.global_step)
        results["checkpoints"] = sorted(str(p) for p in (run_dir / "checkpoints").glob("*.ckpt"))
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        plot_error_analysis(results, run_dir / "analysis")
        print(end_block(results, run_dir, *logged), flush=True)
    _finish(logger, results)
    return results


def _callbacks(cfg: DictConfig, run_dir: Path, logger) -> list[pl.Callback]:
    """The checkpoints (cfg.checkpoint) and the random state a resume restores, then the callbacks group
    (conf/callbacks: each node built from its _target_, in the order composed; a null node is switched off)."""
    folder = run_dir / "checkpoints"
    callbacks: list[pl.Callback] = [
        *checkpoint_callbacks(folder, cfg.checkpoint.save_last, cfg.checkpoint.save_top_k), RandomState()
    ]
    for node in cfg.callbacks.values():
        if node is None:
            continue
        callback = instantiate(node)
        # Lightning refuses a learning-rate monitor without a logger, and a progress bar when the trainer's is off:
        # the default set's two step aside for logger=none and trainer.enable_progress_bar=false.
        if isinstance(callback, LearningRateMonitor) and not logger:
            continue
        if isinstance(callback, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue
        callbacks.append(callback)
    return callbacks


def _speed(cfg: DictConfig, module: DetectionModule, datamodule, device) -> dict[str, Any]:
    """The speed protocol (detlab.profile.speed) on the trained detector, pre-processing the first val image."""
    predictor = Predictor(
        eval_transform(cfg.data), module.model, module.postprocess, cfg.data.size_divisor,
        datamodule.category_ids, datamodule.class_names,
    )
    return measure_speed(
        predictor,
        image=datamodule.datasets["val"].load_image(0),
        device=device,
        precision=cfg.speed.precision or cfg.trainer.precision,
        batch_size=cfg.speed.batch_size,
        warmup=cfg.speed.warmup,
        repeats=cfg.speed.repeats,
    )


def _logger(cfg: DictConfig, run_dir: Path, wandb_id: str | None):
    """The configured logger; a W&B one continues the resumed checkpoint's W&B run (wandb_id) when it has one."""
    if cfg.logger.get("_target_") is None:
        return False
    if cfg.logger._target_ == "detlab.tracking.wandb_logger":
        return instantiate(cfg.logger, save_dir=str(run_dir), run_id=wandb_id, **cfg.tracking)
    return instantiate(cfg.logger, save_dir=str(run_dir))


def _finish(logger, results: dict[str, Any]) -> None:
    """The final numbers, the data counts and the speed into the logger (W&B keeps each key's last value as
    the run's summary); then close a W&B run, so that its files are complete on disk."""
    if not logger:
        return
    final = {f"final/{k}": v for k, v in results["metrics"].items()}
    final.update({f"model/{k}": v for k, v in results["complexity"].items()})
    final.update(results["data"]["counts"])
    if "speed" in results:
        final.update(speed_summary(results["speed"]))
    logger.log_metrics(final, step=results["global_step"])
    logger.save()
    if isinstance(logger, pl.loggers.WandbLogger) and logger.experiment is not None:
        import wandb

        wandb.finish()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    quiet_library_noise()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN and _launches_processes(cfg.trainer):
        return _single_run(hydra_cfg.overrides.task, run_dir)
    with user_errors("detlab-train"):
        results = train(cfg, run_dir)
    return results["metrics"]["AP"]  # the objective a Hydra sweeper (e.g. Optuna) maximises


class WritableRunDir(Callback):
    """A Hydra callback (conf/train.yaml): the run (or sweep) folder must take files before Hydra writes its
    config and log there, which would otherwise stop with Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        with user_errors("detlab-train"):  # exits itself: Hydra would print the traceback of what a callback raises
            check_writable(folder, f"{key}, the run folder", f"set {key} to a folder you can write to")


def _launches_processes(trainer: DictConfig) -> bool:
    """Whether Lightning will start more processes by running this script again (DDP's subprocess launcher)."""
    devices = trainer.get("devices", 1)
    many = trainer.get("num_nodes", 1) > 1 or (isinstance(devices, int) and devices > 1) or devices in (-1, "-1", "auto")
    return many and str(trainer.get("strategy", "auto")).startswith("ddp") and "spawn" not in str(trainer.strategy)


def _single_run(task_overrides: list[str], run_dir: Path) -> float:
    """One trial of a multirun, trained as a single run of its own in a child process.

    Lightning's DDP launcher starts the other ranks by running sys.argv again, which in a multirun is the
    whole sweep (-m and every value): each rank would start a sweep of its own. A single run relaunches cleanly.
    """
    command = [sys.executable, "-m", "detlab.train", *task_overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(command, check=False)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return json.loads((run_dir / "results.json").read_text())["metrics"]["AP"]


if __name__ == "__main__":
    main()
