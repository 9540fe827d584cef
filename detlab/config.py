"""The train config composed outside a Hydra app (compose_train), and the checks on a composed config that
Hydra's own checks cannot make, run before any work starts (validate).

Hydra already rejects a misspelt key (`Key 'imag_size' is not in struct`) and an unknown group option
(listing the available ones). What is left are combinations: each check names the key and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from detlab.errors import ConfigError
from detlab.evaluation.backends import BACKENDS


def _conf_dir() -> Path:
    """The config tree: detlab/conf in an installed wheel (package data, see setup.py), else the checkout's conf/
    beside the package (an editable install, PYTHONPATH).

    A folder rather than Hydra's pkg://detlab.conf: in a checkout there is no detlab.conf to import, and
    detlab-data lists the data configs as files.
    """
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf"


# An absolute path: relative ones are resolved against the calling module, which differs between
# `python -m detlab.train` and the `detlab-train` console script.
CONF_DIR = str(_conf_dir())


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `detlab-train <overrides>` runs with, composed outside a Hydra app (a notebook, a test, the
    benchmarks). Hydra's own config is set too, so that ${hydra:...} interpolations resolve as in a run."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first impossible setting or combination in cfg."""
    _check_moved(cfg)
    _check_positive(cfg, "data.image_size", "data.batch_size", "trainer.max_epochs")
    if cfg.eval.backend not in BACKENDS:
        raise ConfigError(f"eval.backend={cfg.eval.backend!r} is not an evaluator; use one of {BACKENDS}")
    _check_levels(cfg.model)
    _check_default_boxes(cfg)
    _check_yolo(cfg)
    _check_two_stage(cfg)
    _check_trainer(cfg.trainer)
    _check_optim(cfg.optim)


def _check_moved(cfg: DictConfig) -> None:
    """Keys that detlab no longer reads stop with the key that replaced them, rather than being ignored."""
    if "callbacks" in cfg.trainer:
        raise ConfigError(
            "trainer.callbacks is not read: detlab-train builds the trainer's callbacks from the callbacks group; "
            "choose its configs (callbacks=[default,early_stopping]) or add yours ('+callbacks.mine={_target_:...}')"
        )
    if cfg.ema.decay is not None:
        raise ConfigError(
            f"ema.decay moved to the callbacks group: use callbacks=[default,ema] callbacks.ema.decay={cfg.ema.decay}"
        )


def _check_optim(optim: DictConfig) -> None:
    """The optimizer's and the schedule's arguments, tried on one parameter: torch.optim would otherwise fail at
    the first step with a TypeError that names no key (`optim.optimizer.lr=abc`)."""
    from hydra.utils import instantiate

    for key, value in optim.optimizer.items():
        if isinstance(value, str) and not key.startswith("_"):  # no torch.optim argument is a string
            raise ConfigError(f"optim.optimizer.{key}={value!r} is a string; give a number, e.g. optim.optimizer.lr=1e-3")
    try:
        optimizer = instantiate(optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"optim.optimizer ({optim.optimizer._target_}) rejects its arguments: {err}") from None
    if "_target_" not in optim.scheduler:  # an optim config written before the schedule had one
        raise ConfigError(
            "optim.scheduler has no _target_; add `_target_: detlab.optim.warmup_schedule` and `_partial_: true` to "
            "it (as conf/optim/adamw.yaml)"
        )
    try:
        instantiate(optim.scheduler)(optimizer, total_steps=100)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optim.scheduler ({optim.scheduler._target_}) rejects its arguments: {err}") from None


def _check_positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if not isinstance(node, int) or node <= 0:
            raise ConfigError(f"{key}={node!r} must be a positive integer")


def _check_levels(model: DictConfig) -> None:
    """One anchor size per pyramid level: the neck's levels are the backbone's outputs plus extra levels."""
    if "priors" not in model or "sizes" not in model.priors or "neck" not in model:
        return
    levels = len(model.backbone.out_indices) + model.neck.get("num_extra_levels", 0)
    if len(model.priors.sizes) != levels:
        raise ConfigError(
            f"model.priors.sizes has {len(model.priors.sizes)} sizes but the neck makes {levels} levels "
            f"(model.backbone.out_indices={list(model.backbone.out_indices)} plus "
            f"model.neck.num_extra_levels={model.neck.get('num_extra_levels', 0)}); give one size per level"
        )


def _check_trainer(trainer: DictConfig) -> None:
    if trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} but no CUDA device is visible; use trainer=cpu "
            "(or trainer=ddp trainer.accelerator=cpu for several CPU processes)"
        )
    on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and trainer.get("sync_batchnorm"):
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm); set it to false on CPU")
    if on_cpu and str(trainer.precision).startswith("16"):
        raise ConfigError(
            f"trainer.precision={trainer.precision} needs a GPU; on CPU use 32-true or bf16-mixed"
        )
    if trainer.get("limit_val_batches") == 0:  # 0 and 0.0: Lightning would skip the final evaluation too
        raise ConfigError(
            f"trainer.limit_val_batches={trainer.limit_val_batches} leaves nothing to score, and every run ends with "
            "a COCO evaluation; to validate only at the end, set trainer.check_val_every_n_epoch above "
            "trainer.max_epochs"
        )


def _check_default_boxes(cfg: DictConfig) -> None:
    """SSD's default boxes: fractions of exactly data.image_size, one scale and one ratio list per source map."""
    priors = cfg.model.get("priors")
    if priors is None or not str(priors.get("_target_", "")).endswith(".DefaultBoxGenerator"):
        return
    size = cfg.data.image_size
    if priors.image_size != size:
        raise ConfigError(
            f"model.priors.image_size={priors.image_size} but data.image_size={size}: the default boxes are "
            "fractions of the input side; set model.priors.image_size='${data.image_size}'"
        )
    divisor = cfg.data.get("size_divisor", 1)
    if divisor > 1 and size % divisor:
        raise ConfigError(
            f"data.size_divisor={divisor} pads the {size} px input to {-(-size // divisor) * divisor} px, but the "
            f"default boxes (model.priors) cover exactly data.image_size={size}; set data.size_divisor=1"
        )
    backbone, neck = cfg.model.backbone, cfg.model.neck
    if "out_indices" not in backbone or "extra_channels" not in neck:
        return
    levels = len(backbone.out_indices) + len(neck.extra_channels)
    if len(priors.aspect_ratios) != levels or len(priors.scales) != levels + 1:
        raise ConfigError(
            f"model.priors.aspect_ratios has {len(priors.aspect_ratios)} levels and model.priors.scales "
            f"{len(priors.scales)} scales, but the network makes {levels} source maps "
            f"(model.backbone.out_indices={list(backbone.out_indices)} plus {len(neck.extra_channels)} in "
            f"model.neck.extra_channels); give one ratio list per map and one scale more than maps"
        )


def _check_yolo(cfg: DictConfig) -> None:
    """YOLO: its head, criterion and loss go together, and one list of anchors per backbone map."""
    model = cfg.model
    head = str(model.get("head", {}).get("_target_", ""))
    criterion = str(model.get("criterion", {}).get("_target_", ""))
    yolo_loss = criterion.endswith(".YoloLoss")
    if head.endswith(".YoloHead") != yolo_loss:
        raise ConfigError(
            "model.head YoloHead (its objectness output) and model.criterion YoloLoss go together; "
            f"got model.head={head or None} with model.criterion={criterion or None}"
        )
    if not yolo_loss:
        return
    from hydra.utils import instantiate  # only to ask the chosen loss how many logits it wants

    if instantiate(cfg.loss).num_outputs(1) != 1:
        raise ConfigError(
            f"loss ({cfg.loss._target_}) is a softmax loss with a background logit; YOLO (model=yolov3) "
            "predicts objectness and independent logistic classes (YOLOv3, section 2.2), so its background is the "
            "objectness and a softmax over K + 1 has nothing to learn: use loss=focal or loss=bce"
        )
    anchors = model.get("priors", {}).get("anchors")
    if anchors is not None and "out_indices" in model.backbone and len(anchors) != len(model.backbone.out_indices):
        raise ConfigError(
            f"model.priors.anchors has {len(anchors)} levels but the backbone returns "
            f"{len(model.backbone.out_indices)} maps (model.backbone.out_indices={list(model.backbone.out_indices)}); "
            "give one list of [w, h] anchors per map"
        )


def _check_two_stage(cfg: DictConfig) -> None:
    """Faster R-CNN: a sigmoid objectness loss for the RPN, and RoI levels among those the neck makes."""
    model = cfg.model
    if not str(model.get("_target_", "")).endswith(".two_stage_detector"):
        return
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate  # to ask the chosen loss for its outputs, the networks for their strides

    rpn_loss = model.rpn.loss
    if instantiate(rpn_loss).num_outputs(1) != 1:
        raise ConfigError(
            f"model.rpn.loss ({rpn_loss._target_}) is a softmax loss with a background logit; the RPN scores each "
            "anchor with one objectness logit (object or not): use loss@model.rpn.loss=bce or loss@model.rpn.loss=focal"
        )
    from detlab.models.heads.roi import check_featmap_names, level_names

    try:
        # Built on the meta device (no memory, no weights: pretrained off) only to read the levels' strides.
        with torch.device("meta"):
            backbone = instantiate(model.backbone, **({"pretrained": False} if "pretrained" in model.backbone else {}))
            neck = instantiate(model.neck, in_channels=list(backbone.out_channels), in_strides=list(backbone.strides))
        check_featmap_names(list(model.roi.head.featmap_names), level_names(neck.strides))
    except (ValueError, InstantiationException) as error:
        reason = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        raise ConfigError(
            f"{reason}. Faster R-CNN pools its RoIs from FPN levels P2-P5 (model.roi.head.featmap_names) over the "
            "backbone's C2-C5 (model.backbone.out_indices=[1,2,3,4] in ResNet's numbering): choose a backbone and "
            "levels that make them"
        ) from error
