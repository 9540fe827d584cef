"""DetectionModule: the LightningModule that wires model, assigner, loss and post-processing.

The whole training step is four lines: forward, assign, loss, sum. Evaluation runs the post-processing and
feeds the COCO evaluator, which scores against the dataset's own annotation file with original image ids.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.precision import MixedPrecision

from detlab.errors import DivergenceError
from detlab.evaluation.coco_evaluator import CocoEvaluator
from detlab.training.optim import configure_optimizer
from detlab.structures import Batch, Detections


class DetectionModule(pl.LightningModule):
    """Trains and evaluates one detector.

    cfg:          the run's resolved config (a plain dict, stored in the checkpoint so that a run is
                  reloaded by composing its config again); uses cfg["model"], cfg["loss"], cfg["optim"],
                  cfg["eval"].
    num_classes:  K, the dataset's number of classes.
    category_ids: label -> the annotation file's category id.
    class_names:  label -> class name.
    val_ann_file: the annotation file the validation split is scored against.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        num_classes: int,
        category_ids: list[int],
        class_names: list[str],
        val_ann_file: str,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        conf = OmegaConf.create(cfg)
        parts = instantiate(conf.model, cls_loss=conf.loss, num_classes=num_classes)
        self.model, self.assigner, self.criterion, self.postprocess = parts
        self.optim_cfg: DictConfig = conf.optim
        self.evaluator = CocoEvaluator(val_ann_file, category_ids, class_names, backend=conf.eval.backend)
        self.last_eval: dict[str, Any] | None = None
        self.last_eval_step = -1
        self.curve: list[dict[str, float]] = []  # {"epoch", "step", "AP"} after each validation (kept in checkpoints)

    def _losses(self, batch: Batch, outputs, priors) -> dict[str, torch.Tensor]:
        matched_gt = self.assigner(outputs, priors, batch)
        return self.criterion(outputs, priors, matched_gt, batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        outputs, priors = self.model(batch.images, targets=batch)
        losses = self._losses(batch, outputs, priors)
        loss = sum(losses.values())
        self._stop_if_diverged("training", losses, outputs)
        self.log_dict({f"train/loss_{k}": v for k, v in losses.items()}, batch_size=len(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> list[Detections]:
        """The batch's detections (original pixels), scored by the evaluator and returned for the callbacks."""
        outputs, priors = self.model(batch.images, targets=batch)
        losses = self._losses(batch, outputs, priors)
        self._stop_if_diverged("validation", losses, outputs)
        self.log("val/loss", sum(losses.values()), batch_size=len(batch), sync_dist=True)
        detections = self.postprocess(outputs, priors, batch)
        self.evaluator.update(detections, batch.image_ids)
        return detections

    def _stop_if_diverged(self, stage: str, losses: dict[str, torch.Tensor], outputs) -> None:
        """DivergenceError when a loss term or a head output is not finite: NaN class outputs score no
        detection at all, so a diverged run would otherwise end with AP 0 and exit 0. One host sync a step."""
        predicted = {name: t for name, t in vars(outputs).items() if torch.is_tensor(t) and t.is_floating_point()}
        if bool(torch.stack([torch.isfinite(t).all() for t in (*losses.values(), *predicted.values())]).all()):
            return
        bad = [name for name, t in predicted.items() if not torch.isfinite(t).all()]
        raise DivergenceError(
            f"non-finite {stage} loss terms {({k: float(v.detach()) for k, v in losses.items()})}"
            + (f" and head outputs {bad}" if bad else "")
            + f" at step {self.global_step} (epoch {self.current_epoch}): the run diverged; lower "
            f"optim.optimizer.lr (now {self.optim_cfg.optimizer.get('lr')}) or raise optim.scheduler.warmup_steps"
        )

    def on_validation_epoch_end(self) -> None:
        # compute() gathers across ranks itself, so every rank logs the same numbers: no sync_dist needed.
        self.last_eval = self.evaluator.compute()
        self.last_eval_step = self.global_step
        if not self.trainer.sanity_checking:
            self.curve.append({"epoch": self.current_epoch, "step": self.global_step, "AP": float(self.last_eval["metrics"]["AP"])})
        for name, value in self.last_eval["metrics"].items():
            self.log(f"val/{name}", float(value), prog_bar=name == "AP50")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["curve"] = self.curve
        if isinstance(self.logger, WandbLogger):  # a resume continues this W&B run (wandb_logger's run_id)
            checkpoint["wandb_id"] = self.logger.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.curve = checkpoint.get("curve", [])

    def configure_optimizers(self):
        trainer = self.trainer
        clips_mixed_precision = bool(trainer.gradient_clip_val) and isinstance(trainer.precision_plugin, MixedPrecision)
        return configure_optimizer(self.optim_cfg, self, int(trainer.estimated_stepping_batches), clips_mixed_precision)
