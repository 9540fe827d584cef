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
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from detlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detlab.errors import ConfigError, check_count, check_writable
from detlab.structures import Batch, Detections


def wandb_logged_in() -> bool:
    """True when W&B has credentials on this machine (env var or ~/.netrc), without touching the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):  # none, unreadable or malformed: not logged in, never a crash
        return False


# The modes W&B's own settings accept (wandb.Settings.mode): "dryrun" is an old name of offline, "run" of online.
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
OFFLINE_MODES = ("offline", "dryrun")


def wandb_mode(configured: str = "auto") -> str:
    """W&B's mode for a new run: WANDB_MODE when set (as W&B users expect), else `configured` (logger.mode), whose
    auto is online only when logged in. A WANDB_MODE that W&B refuses is a ConfigError naming it: W&B's own check
    was a pydantic traceback when the run started (detlab-report --wandb), or none (training went offline)."""
    mode = os.environ.get("WANDB_MODE")
    if mode and mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={mode!r} in the environment is not a W&B mode: set online, offline or disabled "
                          "(none at all: online when logged in, offline otherwise)")
    if mode:
        return mode
    if configured == "auto":
        return "online" if wandb_logged_in() else "offline"
    return configured


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
        raise ConfigError(f"logger.mode={mode!r}; use auto, online or offline")
    mode = wandb_mode(mode)
    run_id = run_id or uuid.uuid4().hex[:8]  # W&B's own ids are 8 characters of [a-z0-9] too
    if mode != "disabled":  # WANDB_MODE=disabled: W&B's calls do nothing and no run is written
        _name_run(Path(save_dir), run_id)
        # W&B writes its run into <save_dir>/wandb when the run starts, after the data is read, and a folder that
        # refuses stopped the run there with W&B's traceback (a PermissionError without an errno, which nothing named)
        check_writable(Path(save_dir) / "wandb", "the W&B run's files", "make it writable, or log elsewhere "
                       "(logger=csv, logger=none)")
    import wandb

    return WandbLogger(
        # W&B's own header and 30-line summary at the end are quiet (detlab's end block says where the run is and
        # how to sync it), unless WANDB_QUIET says otherwise
        settings=wandb.Settings(quiet=True) if "WANDB_QUIET" not in os.environ else None,
        save_dir=save_dir,
        project=project,
        name=name,
        group=group,
        tags=list(tags or []),
        offline=mode in OFFLINE_MODES,  # else W&B's mode is WANDB_MODE's (disabled: no run) or online
        id=run_id,
        resume="allow",  # the same id again continues that run (its history from the checkpoint's step on)
    )


@rank_zero_only
def _name_run(save_dir: Path, run_id: str) -> None:
    """<save_dir>/wandb_run_id, by DDP's rank 0 alone: the W&B run is rank 0's, and each other rank makes up an id
    of its own for its stand-in logger, which overwrote the file with the id of no run."""
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "wandb_run_id").write_text(run_id + "\n")


def logger_summary(logger) -> tuple[str, str | None]:
    """Where a run's logger writes, as one line, and for an offline W&B run the command that uploads it. For
    W&B it starts the run (Lightning starts it lazily), so call it on rank 0 (the others hold a stand-in)."""
    if not logger:
        return "none (logger=none): the numbers are in results.json", None
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        if run.disabled:
            return "none (WANDB_MODE=disabled): the numbers are in results.json", None
        sync_dir = Path(run.dir).parent  # run.dir is the run's files/ folder
        if run.offline:  # a resumed run's earlier processes wrote folders of their own, with the same id: all of them
            parts = sorted(sync_dir.parent.glob(f"offline-run-*-{run.id}")) or [sync_dir]
            return f"wandb offline, run {run.id}: {sync_dir}", "wandb sync " + " ".join(map(str, parts))
        return f"wandb online: {run.url} (local files {sync_dir})", None
    return f"{type(logger).__name__}: {logger.log_dir}", None


class EvaluationLogger(pl.Callback):
    """After each validation: the COCO table and per-class AP as W&B tables, and a few drawn images.

    The tables are logged in on_validation_end because Lightning calls callbacks' on_validation_epoch_end before
    the module's, where the evaluation is computed. The images are the first validation batch's with the detections
    its validation_step scored: the model of the AP table (an EMA, callbacks.ema, swaps the trained weights back in
    at the epoch's end; images predicted after it showed another model), and no second forward. The class names are
    the module's (its hyper-parameters).
    """

    def __init__(self, num_images: int = 4) -> None:
        check_count("eval", num_log_images=num_images)  # 0 draws none
        self.num_images = num_images
        self._images: list[Any] = []

    def on_validation_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: list[Detections],
                                batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self.num_images > 0 and _wandb_logger(trainer) and not trainer.sanity_checking \
                and trainer.is_global_zero:
            self._images = wandb_images(batch, outputs, module.hparams["class_names"], self.num_images)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        images, self._images = self._images, []
        wb = _wandb_logger(trainer)
        if wb is None or trainer.sanity_checking or module.last_eval is None or not trainer.is_global_zero:
            return
        # No step of our own: each row takes W&B's last trainer/global_step (Lightning's define_metric step_sync), the
        # one Lightning logged this evaluation's val/AP at (the last batch's, one below trainer.global_step), so the
        # tables, charts and images sit at the val/AP they belong to (the charts were one step later, with the images)
        metrics = module.last_eval["metrics"]
        wb.log_table("val/coco_table", columns=["metric", "value"], data=[[k, float(v)] for k, v in metrics.items()])
        per_class = module.last_eval["per_class_AP"]
        wb.log_table("val/per_class_AP", columns=["class", "AP"], data=[[k, float(v)] for k, v in per_class.items()])
        wb.log_metrics(wandb_analysis(module.last_eval))
        if images:
            wb.log_image("val/predictions", images)


def _wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def wandb_images(batch: Batch, detections: list[Detections], class_names: list[str], num_images: int) -> list[Any]:
    """The first num_images inputs of a batch as W&B images with their predicted and ground-truth boxes.

    Each image is the whole padded input [H, W, 3] uint8, as the model saw it (one size for every image of
    the step, which W&B wants); boxes are drawn in its pixels.
    """
    import wandb

    pixels = input_pixels(batch.images[:num_images])
    class_labels = dict(enumerate(class_names))
    images = []
    for i in range(len(pixels)):  # one wandb.Image per picture: W&B's API takes them one by one
        to_input = batch.scales[i].cpu().repeat(2), batch.offsets[i].cpu().repeat(2)  # input = original * s + o
        det = detections[i]
        valid = batch.gt_valid[i].cpu()
        images.append(
            wandb.Image(
                pixels[i],
                boxes={
                    "predictions": {
                        "box_data": _wandb_boxes(
                            det.boxes.cpu() * to_input[0] + to_input[1], det.labels.cpu(), det.scores.cpu()
                        ),
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


def wandb_analysis(result: dict[str, Any]) -> dict[str, Any]:
    """The error analysis (detlab.evaluation.analysis) as W&B charts and scalars: a PR curve per class at IoU
    0.5 and 0.75, the TIDE breakdown (val/dAP_<type> scalars, comparable across runs, and a bar chart), the
    confusion matrix with background as a table, the calibration curve and val/ECE."""
    import wandb

    logged: dict[str, Any] = {}
    curves = result["pr_curves"]
    for key, iou in (("AP50", "0.50"), ("AP75", "0.75")):
        if curves[key]:
            logged[f"val/pr_curve_{key}"] = wandb.plot.line_series(
                xs=curves["recall"], ys=list(curves[key].values()), keys=list(curves[key]),
                title=f"Precision-recall per class at IoU {iou}", xname="recall",
            )
    if "errors" in result:
        dap, counts = result["errors"]["dAP"], result["errors"]["counts"]
        logged.update({f"val/dAP_{k}": v for k, v in dap.items()})
        table = wandb.Table(columns=["error", "dAP", "count"], data=[[k, dap[k], counts[k]] for k in counts])
        logged["val/errors"] = wandb.plot.bar(table, "error", "dAP", title="TIDE: AP50 gained by fixing each error")
    if "confusion_matrix" in result:
        classes, matrix = result["confusion_matrix"]["classes"], result["confusion_matrix"]["matrix"]
        logged["val/confusion_matrix"] = wandb.Table(
            columns=["ground truth", *(f"predicted {c}" for c in classes)],
            data=[[c, *row] for c, row in zip(classes, matrix)],
        )
    if "calibration" in result:
        calibration = result["calibration"]
        logged["val/ECE"] = calibration["ECE"]
        bins = [[b["confidence"], b["precision"], b["count"]] for b in calibration["bins"] if b["count"]]
        table = wandb.Table(columns=["score", "fraction matched", "count"], data=bins)
        logged["val/calibration"] = wandb.plot.line(table, "score", "fraction matched", title="Calibration")
    return logged


def input_pixels(images: torch.Tensor) -> np.ndarray:
    """Normalised inputs [B, 3, H, W] back to the RGB pixels [B, H, W, 3] uint8 in 0-255 they came from.

    uint8, because wandb.Image casts a float array to integers without scaling: pixels in [0, 1] became a
    black PNG. The zero padding comes back as the mean colour.
    """
    mean = images.new_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = images.new_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    rgb = (images.float() * std + mean) * 255.0
    return rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
