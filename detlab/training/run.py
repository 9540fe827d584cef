"""One training run: validate, instantiate, fit, evaluate, write results.json (detlab-train's work; the command
itself is detlab.cli.train).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from detlab.config import validate
from detlab.errors import ConfigError, DetlabError, writing
from detlab.evaluation.coco_table import METRIC_NAMES
from detlab.evaluation.figures import plot_error_analysis
from detlab.files import write_text_atomically
from detlab.inference import Predictor
from detlab.profile.cost import complexity
from detlab.profile.speed import measure_speed, speed_summary
from detlab.training.checkpoint import (
    WEIGHTS_FILE, AtomicCheckpointIO, RandomState, check_classes, check_resumable, check_state_fits, checkpoint_callbacks,
    read_checkpoint, save_weights,
)
from detlab.training.console import end_block, start_block
from detlab.training.module import DetectionModule
from detlab.training.optim import param_groups
from detlab.training.provenance import provenance
from detlab.training.pruning import MedianStopping
from detlab.training.tracking import logger_summary, wandb_logger


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured detector; return (and write to run_dir/results.json) its final evaluation."""
    saved = check_start(cfg)
    logger = _logger(cfg, run_dir, wandb_id=saved.get("wandb_id") if saved else None)
    try:
        return _train(cfg, run_dir, saved, logger)
    except BaseException as stop:
        _close_failed(logger, stop)
        raise


def _train(cfg: DictConfig, run_dir: Path, saved: dict[str, Any] | None, logger) -> dict[str, Any]:
    # a callback or trainer setting that Lightning refuses stops before any work too
    callbacks = _callbacks(cfg, run_dir, logger)
    pruning = MedianStopping(run_dir, cfg.prune.warmup_epochs, cfg.prune.min_trials) if cfg.prune.enabled else None
    if pruning:
        callbacks.append(pruning)
    trainer: pl.Trainer = _build(
        "trainer", cfg.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        # without a checkpoint callback Lightning would add its own (epoch=<n>-step=<m>.ckpt)
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    if saved:  # resuming: the checkpoint's head must predict this dataset's classes
        trained = saved["hyper_parameters"]
        check_classes(cfg.ckpt_path, trained["class_names"], trained["category_ids"], datamodule.class_names,
                      datamodule.category_ids)
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
    if saved:  # before anything is logged: a weight or parameter group that torch's load would refuse
        check_state_fits(cfg.ckpt_path, saved, OmegaConf.to_container(cfg, resolve=True), module,
                         param_groups(module, cfg.optim))
    data_files = {split: (ds.ann_file, str(ds.img_dir)) for split, ds in datamodule.datasets.items()}
    origin = provenance(OmegaConf.to_container(cfg, resolve=True), data_files, trainer.strategy.root_device)
    if logger:  # in the W&B config, where runs are filtered and grouped (detlab-report --wandb-project: by overrides)
        logger.log_hyperparams({"provenance": origin, "overrides": list(HydraConfig.get().overrides.task)})
    cost = complexity(module.model, cfg.data.image_size)
    logged = logger_summary(logger) if trainer.is_global_zero else ("", None)
    if trainer.is_global_zero:
        hydra_cfg = HydraConfig.get()
        print(start_block(hydra_cfg.runtime.choices, datamodule.num_classes, cost, datamodule.counts(), run_dir,
                          logged[0], hydra_cfg.overrides.task), flush=True)
    with _ranks_stop_together(trainer):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        except SIGTERMException:  # Lightning's stop on SIGTERM: a SystemExit without a status, which reads as 0, finished
            _exit_stopped(run_dir, trainer.global_step, trainer.is_global_zero)
        if module.last_eval is None or module.last_eval_step != trainer.global_step:
            trainer.validate(module, datamodule=datamodule, verbose=False)

    results = {
        **module.last_eval,
        "complexity": cost,
        # model.weights_strict=false: the file's tensors of another shape, left at their initialisation
        "weights_not_loaded": getattr(module.model, "weights_not_loaded", []),
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
        results_file = run_dir / "results.json"
        with writing(results_file, "the run's results", f"its checkpoints are kept: free space, then score them with "
                     f"detlab-eval run {run_dir}"):
            write_text_atomically(results_file, json.dumps(results, indent=2))
        plot_error_analysis(results, run_dir / "analysis")
        print(end_block(results, run_dir, *logged), flush=True)
    _finish(logger, results)
    return results


def check_start(cfg: DictConfig) -> dict[str, Any] | None:
    """What stops a run before any work: validate(cfg) and, for a resume, the checkpoint (cfg.ckpt_path) read and
    checked against cfg; returns it. detlab-train asks before Hydra writes the run's config into its folder (a
    refused resume wrote its overrides over those of the run it names), and train asks again."""
    validate(cfg)
    saved = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None  # a bad file stops before any work
    if saved:
        check_resumable(cfg.ckpt_path, saved, OmegaConf.to_container(cfg, resolve=True))
    return saved


# What torch's gloo raises in a rank whose peer process has gone (NCCL's watchdog ends such a rank itself).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


@contextmanager
def _ranks_stop_together(trainer: pl.Trainer) -> Iterator[None]:
    """Under DDP a rank that stops (a user's error printed as one line, a bug's traceback) closes its connections,
    and every other rank fails in its next collective with torch's error about the lost connection, whose traceback
    told nothing more and buried the first. Such a rank prints one line instead and exits; rank 0, whose status is
    the command's, with the status of the rank that stopped first (2 after a user's error)."""
    try:
        yield
    except RuntimeError as err:
        if trainer.world_size == 1 or not any(text in str(err) for text in PEER_GONE):
            raise
        print(f"detlab-train: rank {trainer.global_rank} stops: another process of this DDP run stopped first (killed, or "
              f"its error is above), and this one lost it: {str(err).splitlines()[0]}", file=sys.stderr, flush=True)
        sys.exit(_stopped_rank_status(trainer))


def _stopped_rank_status(trainer: pl.Trainer) -> int:
    """The exit status of the first of rank 0's child processes (DDP's other ranks) that exited with one, else 1.
    A child ended by a signal (Lightning kills the others once a rank fails) is not the one that stopped first."""
    statuses = []
    for proc in getattr(trainer.strategy.launcher, "procs", []):
        try:
            statuses.append(proc.wait(timeout=10))
        except subprocess.TimeoutExpired:
            continue
    return next((status for status in statuses if status > 0), 1)


def _exit_stopped(run_dir: Path, step: int, says: bool) -> None:
    """After SIGTERM (a scheduler's pre-emption, `kill`): say where the run stopped and how to resume it (`says`:
    DDP's rank 0 alone, Lightning passes the signal on to every rank), and exit with the status of a process SIGTERM
    ended (143), so that a shell, a scheduler or a sweep sees it unfinished."""
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = f"resume: the same overrides, ckpt_path={last} hydra.run.dir={run_dir}" if last.is_file() else \
        "no last.ckpt was written yet"
    if says:
        print(f"detlab-train: stopped by SIGTERM at step {step}, before results.json; {resume}", file=sys.stderr,
              flush=True)
    sys.exit(128 + signal.SIGTERM)


def _callbacks(cfg: DictConfig, run_dir: Path, logger) -> list[pl.Callback]:
    """The checkpoints (cfg.checkpoint) and the random state a resume restores, then the callbacks group
    (conf/callbacks: each node built from its _target_, in the order composed; a null node is switched off)."""
    folder = run_dir / "checkpoints"
    callbacks: list[pl.Callback] = [
        *checkpoint_callbacks(folder, cfg.checkpoint.save_last, cfg.checkpoint.save_top_k), RandomState()
    ]
    for name, node in cfg.callbacks.items():
        if node is None:
            continue
        callback = _build(f"callbacks.{name}", node)
        if not isinstance(callback, pl.Callback):  # Lightning would call its hooks once the fit starts
            if "_target_" not in node:
                raise ConfigError(
                    f"callbacks.{name}={OmegaConf.to_container(node)} builds no Lightning callback (no _target_): "
                    f"choose its config (callbacks=[default,{name}]) to set its keys, or give one of yours as "
                    f"'+callbacks.{name}={{_target_:my_package.MyCallback}}'")
            raise ConfigError(f"callbacks.{name} builds a {type(callback).__module__}.{type(callback).__qualname__}, "
                              f"not a Lightning callback (pytorch_lightning.Callback): fix its _target_ ({node._target_})")
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor not in MONITORED and not monitor.startswith("train/loss_"):
            raise ConfigError(f"callbacks.{name}.monitor={monitor!r} is not a metric detlab logs; use one of "
                              f"{sorted(MONITORED)} or train/loss_<term>")  # Lightning's traceback after an epoch
        # Lightning refuses a learning-rate monitor without a logger, and a progress bar when the trainer's is off:
        # the default set's two step aside for logger=none and trainer.enable_progress_bar=false.
        if isinstance(callback, LearningRateMonitor) and not logger:
            continue
        if isinstance(callback, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue
        callbacks.append(callback)
    return callbacks


# What a callback's `monitor` can name: the metrics DetectionModule logs (train/loss_<term>: the model's terms).
MONITORED = {"train/loss", "val/loss", *(f"val/{name}" for name in METRIC_NAMES)}


def _build(key: str, node: DictConfig, **kwargs: Any) -> Any:
    """A Lightning object (the trainer, a callback, the logger) from its node; arguments its class refuses (Lightning's
    MisconfigurationException, a TypeError or ValueError for a wrong one) stop with the key, not a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, (MisconfigurationException, TypeError, ValueError)) or isinstance(cause, DetlabError):
            raise  # ours are one-line messages already; anything else is a bug
        raise ConfigError(f"{key} ({node._target_}) rejects its arguments: {cause}") from None


def _speed(cfg: DictConfig, module: DetectionModule, datamodule, device) -> dict[str, Any]:
    """The speed protocol (detlab.profile.speed) on the trained detector, pre-processing the first val image."""
    return measure_speed(
        Predictor.from_module(module),
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
    if get_object(cfg.logger._target_) is wandb_logger:  # the object, not its name: any path to it counts
        return _build("logger", cfg.logger, save_dir=str(run_dir), run_id=wandb_id, **_tracking(cfg.tracking))
    return _build("logger", cfg.logger, save_dir=str(run_dir))


def _tracking(tracking: DictConfig) -> dict[str, Any]:
    """The W&B run's name and group (cfg.tracking). A job of a multirun (hydra.job.num set) is one of several runs of
    one name (retinanet-focal for each job of `-m loss.gamma=0,1,2`): its name gets the job's number, its folder in
    the sweep, and without a tracking.group its sweep folder is its group, which holds the sweep's jobs together."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is None or OmegaConf.is_missing(hydra_cfg.job, "num"):  # a single run
        return dict(tracking)
    num = hydra_cfg.job.num
    return {**tracking, "name": f"{tracking.name}-{num}" if tracking.name else None,
            "group": tracking.group or str(hydra_cfg.sweep.dir)}


def _close_failed(logger, stop: BaseException) -> None:
    """End the W&B run of a run that stopped (a user's error, a bug, SIGTERM) as failed, with the status it exits with.
    W&B keeps one run per process (wandb.run) until it is finished: in a multirun, whose jobs share the process, the
    next job's logger took the failed job's run over (Lightning reuses wandb.run), logging into its folder and name."""
    if isinstance(logger, pl.loggers.WandbLogger):
        import wandb

        if wandb.run is not None:
            code = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 1
            wandb.finish(exit_code=code or 1)


def _finish(logger, results: dict[str, Any]) -> None:
    """The final numbers, the data counts and the speed into the logger (W&B keeps each key's last value as
    the run's summary); then close a W&B run, so that its files are complete on disk."""
    if not logger:
        return
    # in the config, where detlab-report --wandb-project leaves pruned runs out (as it leaves their folders out)
    logger.log_hyperparams({"pruned": results["pruned"]})
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
