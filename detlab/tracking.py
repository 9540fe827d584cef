"""Experiment tracking: the W&B logger (offline unless logged in) and the callback that logs evaluation.

Scalars go through `LightningModule.log` and reach any logger; the COCO table, per-class AP and the drawn
validation images are W&B media, logged by `EvaluationLogger` when the run has a W&B logger.
"""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from detlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detlab.structures import Batch



def wandb_logged_in() -> bool:
    """True when W&B has credentials on this machine (env var or ~/.netrc), without touching the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """W&B's mode for a new run: WANDB_MODE when set (as W&B users expect), else online only when logged in."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def wandb_logger(
    save_dir: str,
    project: str,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str = "auto",
    run_id: str | None = None,
) -> WandbLogger:
    """A WandbLogger writing under save_dir. mode: auto (online only if logged in) | online | offline.

    WANDB_MODE in the environment wins over `mode`, as W&B users expect. run_id: the W&B run to continue (a
    resumed checkpoint's, see DetectionModule.on_save_checkpoint), else a new one; either way it is written to
    `<save_dir>/wandb_run_id`, so that the run folder names its W&B run.
    """
    if mode not in ("auto", "online", "offline"):
        raise ValueError(f"logger.mode={mode!r}; use auto, online or offline")
    if mode == "auto":
        mode = wandb_mode()
    run_id = run_id or uuid.uuid4().hex[:8]  # W&B's own ids are 8 characters of [a-z0-9] too
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    (Path(save_dir) / "wandb_run_id").write_text(run_id + "\n")
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        group=group,
        tags=list(tags or []),
        offline=mode != "online",
        id=run_id,
        resume="allow",  # the same id again continues that run (its history from the checkpoint's step on)
    )


class EvaluationLogger(pl.Callback):
    """After each validation: the COCO table and per-class AP as W&B tables, and a few drawn images.

    It hooks on_validation_end because Lightning calls callbacks' on_validation_epoch_end before the
    module's, where the evaluation is computed.
    """

    def __init__(self, class_names: list[str], num_images: int = 4) -> None:
        self.class_names = class_names
        self.num_images = num_images

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or trainer.sanity_checking or module.last_eval is None or not trainer.is_global_zero:
            return
        wb = loggers[0]
        metrics = module.last_eval["metrics"]
        wb.log_table("val/coco_table", columns=["metric", "value"], data=[[k, float(v)] for k, v in metrics.items()])
        per_class = module.last_eval["per_class_AP"]
        wb.log_table("val/per_class_AP", columns=["class", "AP"], data=[[k, float(v)] for k, v in per_class.items()])
        if self.num_images > 0:
            wb.log_image("val/predictions", self._draw(trainer, module))

    @torch.no_grad()
    def _draw(self, trainer: pl.Trainer, module: pl.LightningModule) -> list[Any]:
        import wandb

        loader = trainer.val_dataloaders
        batch: Batch = module.transfer_batch_to_device(next(iter(loader)), module.device, 0)
        was_training = module.training
        module.eval()
        detections = module(batch)
        module.train(was_training)
        images = []
        for i in range(min(self.num_images, len(batch))):
            # The whole padded input, as the model saw it: one size for every image of the step (W&B wants that).
            pixels = batch.images[i].permute(1, 2, 0).float().cpu().numpy() * IMAGENET_STD + IMAGENET_MEAN
            sx, sy = batch.scales[i].tolist()
            ox, oy = batch.offsets[i].tolist()
            to_input = torch.tensor([sx, sy, sx, sy]), torch.tensor([ox, oy, ox, oy])

            det = detections[i]
            pred_xyxy = det.boxes.cpu() * to_input[0] + to_input[1]
            valid = batch.gt_valid[i].cpu()
            class_labels = dict(enumerate(self.class_names))
            images.append(
                wandb.Image(
                    np.clip(pixels, 0, 1),
                    boxes={
                        "predictions": {
                            "box_data": _wandb_boxes(pred_xyxy, det.labels.cpu(), det.scores.cpu()),
                            "class_labels": class_labels,
                        },
                        "ground_truth": {
                            "box_data": _wandb_boxes(batch.gt_boxes[i].cpu()[valid], batch.gt_labels[i].cpu()[valid], None),
                            "class_labels": class_labels,
                        },
                    },
                    caption=f"image_id {int(batch.image_ids[i])}",
                )
            )
        return images


def _wandb_boxes(boxes_xyxy: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None) -> list[dict]:
    """W&B's box_data for boxes [N, 4] in the drawn image's pixels."""
    out = []
    for j, (box, label) in enumerate(zip(boxes_xyxy.tolist(), labels.tolist())):
        item = {
            "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
            "domain": "pixel",
            "class_id": int(label),
        }
        if scores is not None:
            item["scores"] = {"score": float(scores[j])}
        out.append(item)
    return out
