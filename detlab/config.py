"""The train config composed outside a Hydra app (compose_train), and the checks on a composed config that
Hydra's own checks cannot make, run before any work starts (validate).

Hydra already rejects a misspelt key (`Key 'imag_size' is not in struct`) and an unknown group option
(listing the available ones). What is left are values and combinations, each check naming the key and the fix:
here the keys and the trainer's; the rules of the model's parts live in the parts and their builders, which
validate runs by building them.

torch is imported inside the checks that use it: every command reads CONF_DIR from here, and `--help` must not
wait for torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from detlab.errors import ConfigError, check_count, check_non_negative, check_positive
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
# `python -m detlab.cli.train` and the `detlab-train` console script.
CONF_DIR = str(_conf_dir())


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `detlab-train <overrides>` runs with, composed outside a Hydra app (a notebook, a test, the
    benchmarks). Hydra's own config is set too, so that ${hydra:...} interpolations resolve as in a run."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


# The config groups every run composes (conf/train.yaml's defaults, less the optional ones): `~logger` on the command
# line removes one, and the first check that read it stopped with OmegaConf's ConfigAttributeError traceback.
REQUIRED_GROUPS = ("data", "loss", "model", "optim", "trainer", "logger")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first impossible setting or combination in cfg."""
    removed = [group for group in REQUIRED_GROUPS if group not in cfg]
    if removed:
        group = removed[0]
        options = sorted(path.stem for path in (Path(CONF_DIR) / group).glob("*.yaml"))
        raise ConfigError(f"~{group} removed the {group} config group, which every run needs: choose one of its "
                          f"options instead ({group}={'|'.join(options)})"
                          + ("; logger=none trains without a logger" if group == "logger" else ""))
    _check_missing(cfg)
    _check_moved(cfg)
    check_positive("data", image_size=cfg.data.image_size, batch_size=cfg.data.batch_size,
                   size_divisor=cfg.data.get("size_divisor", 1))
    check_positive("trainer", max_epochs=cfg.trainer.max_epochs)
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed!r} must be an integer in [0, 2^32 - 1], the range numpy's generators take")
    if cfg.eval.backend not in BACKENDS:
        raise ConfigError(f"eval.backend={cfg.eval.backend!r} is not an evaluator; use one of {BACKENDS}")
    _check_trainer(cfg.trainer)
    if cfg.speed.enabled:
        _check_speed(cfg.speed, cfg.trainer)
    _check_optim(cfg.optim)
    _check_names(cfg)
    _check_model(cfg)


def _check_missing(cfg: DictConfig) -> None:
    """Every mandatory value (`???`: the paths of data=coco, voc, yolo, udacity, mot) given: one left out stopped
    the run with OmegaConf's MissingMandatoryValue traceback when the data module was built, exit 1."""
    missing = _missing_keys({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no value (??? in its "
                          f"config); give {'it' if len(missing) == 1 else 'each'} on the command line, e.g. "
                          f"{missing[0]}=...")


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of the values ??? in a plain container (OmegaConf.to_container, unresolved), in order."""
    if node == "???":
        return [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [key for k, v in items for key in _missing_keys(v, f"{prefix}.{k}" if prefix else str(k))]


def _check_names(cfg: DictConfig) -> None:
    """The run's names for the logger are text: a number (`tracking.name=123`, which Hydra reads as an int, or
    `tracking.name=${seed}`, an interpolation of a number) stopped the run in W&B's or Lightning's code."""
    for node, prefix, keys in ((cfg.tracking, "tracking", ("project", "group", "name")), (cfg.logger, "logger", ("name",))):
        for key in keys:
            value, written = _as_logged(node, key)
            if value is not None and not isinstance(value, str):
                fix = (f"quote a name made of digits: \"{prefix}.{key}='{value}'\"" if value == written else
                       f"{written} is {value!r}: write it inside text, e.g. {prefix}.{key}=run-{written}")
                raise ConfigError(f"{prefix}.{key}={written!r} is not text; {fix}")
    tags, written = _as_logged(cfg.tracking, "tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
        shown = repr(tags) if tags == written else f"{written!r} (resolved: {tags!r})"
        raise ConfigError(f"tracking.tags={shown}: give a list of text, quoting a tag made of digits: "
                          "\"tracking.tags=[baseline,'2024']\"")


def _as_logged(node: DictConfig, key: str) -> tuple[Any, Any]:
    """(value, as written) of node.key: the value the logger gets (resolved, a list plain), or the written one where it
    cannot resolve here (${hydra:...} in a config composed without Hydra's config: text, which resolves to text)."""
    written = OmegaConf.to_container(node, resolve=False).get(key)
    try:
        value = node.get(key)
        return (OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value), written
    except InterpolationResolutionError:
        return written, written


def _check_model(cfg: DictConfig) -> None:
    """Build the detector's parts as a run would, so that every component and builder checks its own rules (which
    loss a head takes, one prior entry per level, the levels RoIs pool from, ...) before any data is read; and ask
    the priors, and the backbone and neck on the meta device, whether they fit the data's input side.

    Built on the meta device (no memory, no arithmetic) for one class, without pretrained or model.weights files:
    what is checked is the combination, not the weights.
    """
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from detlab.models.priors import PriorGenerator

    # Resolved copies, so that switching the files off leaves cfg as it is (interpolations resolved against it).
    model, loss = (OmegaConf.create(OmegaConf.to_container(node, resolve=True)) for node in (cfg.model, cfg.loss))
    if "weights" in model:
        model.weights = None
    if "pretrained" in model.get("backbone", {}):
        model.backbone.pretrained = False
    try:
        with torch.device("meta"):
            parts = instantiate(model, cls_loss=loss, num_classes=1)
        priors = getattr(parts.model, "priors", None)
        if isinstance(priors, PriorGenerator):
            divisor = cfg.data.get("size_divisor", 1)
            priors.check_input(cfg.data.image_size, divisor, cfg.data.get("resize", "letterbox"))
            _trace_levels(parts.model, -(-cfg.data.image_size // divisor) * divisor)
    except (ValueError, InstantiationException) as error:
        node = ""
        while isinstance(error, InstantiationException) and isinstance(error.__cause__, Exception):
            found = re.search(r"\nfull_key: (\S+)$", str(error))  # the node Hydra was building, inside cfg.model
            node = found.group(1) if found else node
            error = error.__cause__  # Hydra's wrapper: the component's own message is the cause's
        if isinstance(error, TypeError):  # Python's message names the class, not the config node or the fix
            raise ConfigError(_argument_message(node, error)) from error
        raise ConfigError(str(error)) from error


def _argument_message(node: str, error: TypeError) -> str:
    """A component that refused its arguments (a key another option of its group takes, as a preset's
    model.backbone.norm with model/backbone=vgg16), named by its config key, with the fix."""
    key = "loss" if node == "cls_loss" else f"model.{node}" if node else "model"  # the builders get loss as cls_loss
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if unexpected:
        arg = unexpected.group(1)
        return (f"{key}.{arg} is not an argument of {key} ({error}): delete it (~{key}.{arg} on the command line) "
                f"or choose a {key} that takes it")
    return f"{key}: {error}"


def _trace_levels(model, side: int) -> None:
    """The backbone and the neck on a meta input of side x side (the data's input, padded; shapes only, no
    arithmetic), and the priors of the levels they make: the rules that depend on the input's size (SSD's unpadded
    extra layers on a map too small for them, ...) stop here, before the data is read, rather than at the first
    batch."""
    import torch

    images = torch.empty(1, 3, side, side, device="meta")
    try:
        levels = model.neck(model.backbone(images))
    except ValueError as error:  # BatchNorm on a 1 x 1 map of one image: a batch of one would stop the same way
        if "more than 1 value per channel" not in str(error):
            raise
        raise ConfigError(f"data.image_size is too small for model.backbone and model.neck: at a {side} x {side} "
                          f"input a level's map is 1 x 1, where BatchNorm cannot train on one image ({error}); raise data.image_size") from None
    model.priors([tuple(x.shape[-2:]) for x in levels], model.neck.strides, images.device, images.shape[-2:])


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
    import torch
    from hydra.utils import instantiate

    if not isinstance(optim.get("decay_norms_and_biases", False), bool):
        raise ConfigError(f"optim.decay_norms_and_biases={optim.decay_norms_and_biases!r} must be true or false")
    for key, value in optim.optimizer.items():
        if isinstance(value, str) and not key.startswith("_"):  # no torch.optim argument is a string
            raise ConfigError(f"optim.optimizer.{key}={value!r} is a string; give a number, e.g. optim.optimizer.lr=1e-3")
    try:
        optimizer = instantiate(optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"optim.optimizer ({optim.optimizer._target_}) rejects its arguments: {err}") from None
    if "_target_" not in optim.scheduler:  # an optim config written before the schedule had one
        raise ConfigError(
            "optim.scheduler has no _target_; add `_target_: detlab.training.optim.warmup_schedule` and `_partial_: true` to "
            "it (as conf/optim/adamw.yaml)"
        )
    try:
        instantiate(optim.scheduler)(optimizer, total_steps=100)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optim.scheduler ({optim.scheduler._target_}) rejects its arguments: {err}") from None


def _on_cpu(trainer: DictConfig) -> bool:
    import torch

    return trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())


def _check_mixed_precision(precision: str | int) -> None:
    """trainer.precision among the ones detlab runs (speed.PRECISIONS: float32, or float32 weights under autocast).
    Lightning's 16-true and bf16-true cast the model and every float tensor of the batch to 16 bits: the targets in
    input pixels (bfloat16 keeps 8 significant bits: x2 = 101.7 trained as 101.5) and the scale to original pixels
    (0.8 as 0.8008) before any of detlab's float32 box coding, IoU and losses could keep them exact."""
    from detlab.profile.speed import PRECISIONS

    if str(precision) not in PRECISIONS:
        why = ("16-true / bf16-true would round the boxes to 16 bits" if str(precision).startswith(("16", "bf16")) else
               "the speed protocol and the float32 inputs take no other")
        raise ConfigError(f"trainer.precision={precision!r} is not one detlab trains with; use 32-true, bf16-mixed or "
                          "(on a GPU) 16-mixed: mixed precision keeps the weights, the targets and the box arithmetic in "
                          f"float32 ({why})")


def _check_cpu_precision(key: str, precision: str | int, trainer: DictConfig) -> None:
    if _on_cpu(trainer) and str(precision).startswith("16"):
        raise ConfigError(f"{key}={precision} needs a GPU; on CPU use 32-true or bf16-mixed")


def _check_speed(speed: DictConfig, trainer: DictConfig) -> None:
    """The speed protocol that follows training, checked before it: a setting it refuses used to stop the run
    after the last epoch, before results.json was written."""
    from detlab.profile.speed import check_protocol

    key = "speed.precision" if speed.precision is not None else "trainer.precision"
    precision = speed.precision if speed.precision is not None else trainer.precision
    check_protocol(speed.batch_size, speed.warmup, speed.repeats, precision, key)
    _check_cpu_precision(key, precision, trainer)


def _check_launcher(strategy: object) -> None:
    """DDP runs as Lightning's script launcher starts it (strategy=ddp: each rank runs detlab-train again). A strategy
    that spawns or forks its ranks trained to the end, then stopped without results.json: its launcher hands the
    weights back to the first process through a bare state_dict file, which is no detlab checkpoint, and the
    evaluation, curve and random state stay in the ranks that made them."""
    if not isinstance(strategy, str):
        return
    from pytorch_lightning.strategies import StrategyRegistry

    start_method = StrategyRegistry[strategy]["init_params"].get("start_method") if strategy in StrategyRegistry else None
    if start_method in ("spawn", "fork", "forkserver"):
        plain = re.sub(r"^ddp_(spawn|fork|notebook)", "ddp", strategy)
        raise ConfigError(f"trainer.strategy={strategy} starts its processes by {start_method}, which detlab-train does "
                          f"not support (the run's results would stay in the processes); use trainer.strategy={plain} "
                          "(trainer=ddp)")


def _check_nodes(num_nodes: object) -> None:
    """trainer.num_nodes > 1 needs the other machines' processes: a cluster launch Lightning detects (SLURM,
    torchrun, LSF, MPI) or, by hand, MASTER_ADDR set on every node (Lightning's own environment). Without one the
    run started this machine's ranks and waited for the rest (gloo's and NCCL's 30-minute timeout) before failing."""
    if num_nodes in (None, 1):
        return
    check_positive("trainer", num_nodes=num_nodes)
    from lightning_fabric.plugins.environments import (
        LSFEnvironment, MPIEnvironment, SLURMEnvironment, TorchElasticEnvironment,
    )

    if "MASTER_ADDR" in os.environ or any(env.detect() for env in (
            TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)):
        return
    raise ConfigError(
        f"trainer.num_nodes={num_nodes} but no cluster launch is found (SLURM's srun, torchrun --nnodes, LSF, MPI, "
        "or MASTER_ADDR, MASTER_PORT and NODE_RANK set on each node): this run would start this machine's processes "
        "and wait for the other nodes'. On one machine, use trainer.devices=<processes> instead"
    )


def _check_trainer(trainer: DictConfig) -> None:
    import torch

    if trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} but no CUDA device is visible; use trainer=cpu "
            "(or trainer=ddp trainer.accelerator=cpu for several CPU processes)"
        )
    if _on_cpu(trainer) and trainer.get("sync_batchnorm"):
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm); set it to false on CPU")
    _check_launcher(trainer.get("strategy"))
    _check_nodes(trainer.get("num_nodes"))
    _check_mixed_precision(trainer.precision)
    _check_cpu_precision("trainer.precision", trainer.precision, trainer)
    if trainer.get("gradient_clip_val") is not None:  # a negative one scales every gradient by a negative number
        check_non_negative("trainer", gradient_clip_val=trainer.gradient_clip_val)
    every = trainer.get("check_val_every_n_epoch")
    if every is not None:
        check_positive("trainer", check_val_every_n_epoch=every)
    if trainer.get("log_every_n_steps") is not None:  # 0: no step logged (Lightning's); it took -2 as 2, 1.5 as 3
        check_count("trainer", log_every_n_steps=trainer.log_every_n_steps)
    sanity = trainer.get("num_sanity_val_steps")
    if sanity is not None and (not isinstance(sanity, int) or isinstance(sanity, bool) or sanity < -1):
        raise ConfigError(f"trainer.num_sanity_val_steps={sanity!r}: use a number of batches, 0 for none or -1 for "
                          "the whole val set (Lightning's)")
    for key in ("limit_train_batches", "limit_val_batches"):
        limit = trainer.get(key)
        batches, fraction = isinstance(limit, int) and limit >= 0, isinstance(limit, float) and 0 <= limit <= 1
        if limit is not None and not (batches or fraction):
            raise ConfigError(f"trainer.{key}={limit!r}: use a number of batches (an integer), a fraction of them "
                              "in [0, 1], or null for all")
    if trainer.get("limit_val_batches") == 0:  # 0 and 0.0: Lightning would skip the final evaluation too
        raise ConfigError(
            f"trainer.limit_val_batches={trainer.limit_val_batches} leaves nothing to score, and every run ends with "
            "a COCO evaluation; to validate only at the end, set trainer.check_val_every_n_epoch above "
            "trainer.max_epochs"
        )
