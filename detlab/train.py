"""detlab-train: compose, validate, instantiate, fit, evaluate, write results.json.

    detlab-train model/backbone=resnet50 loss.gamma=0 data.image_size=320 trainer.max_epochs=3
    detlab-train -m loss.gamma=0,1,2          # a Hydra multirun sweep
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from detlab.config import validate
from detlab.evaluation.coco_evaluator import format_table
from detlab.module import DetectionModule
from detlab.profile import complexity
from detlab.tracking import EvaluationLogger


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured detector; return (and write to run_dir/results.json) its final evaluation."""
    validate(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = DetectionModule(
        OmegaConf.to_container(cfg, resolve=True),
        num_classes=datamodule.num_classes,
        category_ids=list(datamodule.category_ids),
        class_names=list(datamodule.class_names),
        val_ann_file=str(datamodule.ann_file("val")),
    )
    logger = _logger(cfg, run_dir)
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/AP", mode="max", save_last=True),
        EvaluationLogger(list(datamodule.class_names), num_images=cfg.eval.num_log_images),
    ]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if module.last_eval is None or module.last_eval_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)

    results = {
        **module.last_eval,
        "complexity": complexity(module.model, cfg.data.image_size),
        "global_step": trainer.global_step,
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        print(format_table(results), flush=True)
        cost = results["complexity"]
        print(f"model: {cost['params'] / 1e6:.2f} M parameters, {cost['gflops']:.2f} GFLOPs at "
              f"{cost['input_size']}x{cost['input_size']}", flush=True)
        print(f"results: {run_dir / 'results.json'}", flush=True)
    _finish(logger, results)
    return results


def _logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger.get("_target_") is None:
        return False
    if cfg.logger._target_ == "detlab.tracking.wandb_logger":
        return instantiate(cfg.logger, save_dir=str(run_dir), **cfg.tracking)
    return instantiate(cfg.logger, save_dir=str(run_dir))


def _finish(logger, results: dict[str, Any]) -> None:
    """Write the final numbers into the W&B run's summary and close it, so its files are complete on disk."""
    if isinstance(logger, pl.loggers.WandbLogger) and logger.experiment is not None:
        import wandb

        if wandb.run is not None:
            wandb.run.summary.update({f"final/{k}": v for k, v in results["metrics"].items()})
            wandb.run.summary.update({f"model/{k}": v for k, v in results["complexity"].items()})
            wandb.finish()


# An absolute path: relative ones are resolved against the calling module, which differs between
# `python -m detlab.train` and the `detlab-train` console script. conf/ lives beside the package
# (installed editable, as the Makefile does).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg, run_dir)
    except Exception as err:
        problem = user_error(err)
        # Bad input or an impossible config: the message names the file, record or key. No stack trace
        # unless asked for, the way Hydra itself does it.
        if problem is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"detlab-train: error: {problem}\n(set HYDRA_FULL_ERROR=1 for the stack trace)", file=sys.stderr, flush=True)
        sys.exit(2)
    return results["metrics"]["AP"]  # the objective a Hydra sweeper (e.g. Optuna) maximises


def user_error(err: BaseException) -> BaseException | None:
    """The bad-input error behind err (a config or data problem whose message says what to fix), or None.

    hydra.utils.instantiate wraps what a constructor raises in an InstantiationException: look through it.
    """
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, (ValueError, FileNotFoundError)) else None


if __name__ == "__main__":
    main()
