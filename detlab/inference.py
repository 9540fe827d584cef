"""One object for inference: the eval transform, the model and the post-processing, with the label space.

`Predictor` turns RGB images (or a collated Batch) into detections in original pixels and COCO category ids. It
serves every caller outside the training step: detlab-eval run and speed, detlab-predict, the speed protocol at
the end of a run and the images logged to W&B. Built three ways: `from_run` (a run directory or checkpoint: its
saved config and weights, the one loader of a trained run), `from_config` (a composed config: a preset with
`model.weights`, or any model) and `from_module` (the DetectionModule being trained, sharing its model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from detlab.data.collate import collate
from detlab.data.datamodule import eval_transform
from detlab.data.transforms import DetectionTransform
from detlab.errors import CheckpointError, ConfigError
from detlab.structures import Batch, Detections
from detlab.training.checkpoint import WEIGHTS_FILE, load_hparams

NO_BOXES, NO_LABELS = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def resolve_device(name: torch.device | str) -> torch.device:
    """A --device argument as a torch device: "auto" is CUDA when there is one, else the CPU; a name torch does
    not know, or a CUDA device this machine does not have, stops with the argument named (torch would fail at the
    first tensor moved, with a traceback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible (torch {torch.__version__}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


class Predictor:
    """images (RGB uint8 [H, W, 3] arrays) -> one Detections per image, boxes xyxy in original pixels.

    transform:    the eval transform (DetectionTransform of the run's data config).
    model, postprocess: a detector's parts (detlab.models.build).
    size_divisor: the collate's padding multiple (data.size_divisor).
    category_ids: label -> category id (the label space); class_names: label -> name.
    """

    def __init__(
        self,
        transform: DetectionTransform,
        model: nn.Module,
        postprocess: nn.Module,
        size_divisor: int,
        category_ids: Sequence[int],
        class_names: Sequence[str],
    ) -> None:
        self.transform = transform
        self.model = model
        self.postprocess = postprocess
        self.size_divisor = size_divisor
        self.category_ids = [int(c) for c in category_ids]
        self.class_names = [str(n) for n in class_names]

    @classmethod
    def from_config(
        cls, cfg: DictConfig, category_ids: Sequence[int], class_names: Sequence[str] | None = None
    ) -> Predictor:
        """The detector of a composed config (its model.weights loaded, if set) for the given label space."""
        parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=len(category_ids))
        names = class_names if class_names is not None else [str(c) for c in category_ids]
        return cls(eval_transform(cfg.data), parts.model, parts.postprocess, cfg.data.size_divisor, category_ids, names)

    @classmethod
    def from_run(cls, path: str | Path, overrides: Sequence[str] = ()) -> tuple[Predictor, DictConfig]:
        """The trained detector of a run directory (its final weights, see checkpoint_of) or a checkpoint file: its
        saved config (plus dotlist overrides such as data.image_size=512) rebuilt, its weights loaded, its label
        space; and that config."""
        checkpoint = checkpoint_of(path)
        hparams = load_hparams(checkpoint)
        cfg = with_overrides(OmegaConf.create(hparams["cfg"]), overrides, checkpoint)
        cfg.model.weights = str(checkpoint)  # the run's own weights replace whatever it started from
        if "weights_strict" in cfg.model:  # and fit it whole: a run fine-tuned with weights_strict=false included
            cfg.model.weights_strict = True
        return cls.from_config(cfg, hparams["category_ids"], hparams["class_names"]), cfg

    @classmethod
    def from_module(cls, module: nn.Module) -> Predictor:
        """The detector a DetectionModule trains (its model and post-processing shared, not copied), with its
        run's eval transform and label space."""
        data = module.hparams["cfg"]["data"]
        return cls(eval_transform(data), module.model, module.postprocess, data["size_divisor"],
                   module.hparams["category_ids"], module.hparams["class_names"])

    def to(self, device: torch.device | str) -> Predictor:
        """Move the model to device (resolve_device's names)."""
        self.model.to(resolve_device(device))
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Sequence[np.ndarray], image_ids: Sequence[int] | None = None) -> Batch:
        """A padded Batch on the model's device; image_ids default to 0..B-1."""
        ids = range(len(images)) if image_ids is None else image_ids
        # the transform works on one image at a time, as the dataset does per item
        samples = [self.transform(image, NO_BOXES, NO_LABELS, image_id=i) for image, i in zip(images, ids)]
        return self.on_device(collate(samples, size_divisor=self.size_divisor))

    def on_device(self, batch: Batch) -> Batch:
        """The batch's tensors on the model's device."""
        device = self.device
        return Batch(**{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)})

    def forward(self, batch: Batch) -> tuple[Batch, Any, Any]:
        # the targets carry each image's content size: two-stage models clip their proposals to it
        return (batch, *self.model(batch.images, targets=batch))

    def detect(self, state: tuple[Batch, Any, Any]) -> list[Detections]:
        batch, outputs, priors = state
        return self.postprocess(outputs, priors, batch)

    @torch.inference_mode()
    def predict_batch(self, batch: Batch) -> list[Detections]:
        """Detections of a collated Batch on the model's device, boxes in original pixels, labels 0..K-1: the model
        in eval mode for the call, then back in the mode it was in (W&B images are drawn during training)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.detect(self.forward(batch))
        finally:
            self.model.train(was_training)

    def __call__(self, images: Sequence[np.ndarray], image_ids: Sequence[int] | None = None) -> list[Detections]:
        """Detections of each RGB image, boxes in original pixels, labels 0..K-1."""
        return self.predict_batch(self.preprocess(images, image_ids))

    def coco_results(self, detections: Sequence[Detections], image_ids: Sequence[int]) -> list[dict[str, Any]]:
        """COCO results (image_id, category_id, bbox [x, y, w, h] in original pixels, score) of per-image
        detections; labels whose id no category has (torchvision's unused COCO ids) are kept: scoring drops them."""
        results = []
        for image_id, det in zip(image_ids, detections):
            boxes = det.boxes.detach().float().cpu()
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            for box, score, label in zip(xywh, det.scores.tolist(), det.labels.tolist()):
                results.append(
                    {"image_id": int(image_id), "category_id": self.category_ids[label], "bbox": box, "score": score}
                )
        return results


def with_overrides(cfg: DictConfig, overrides: Sequence[str], checkpoint: Path) -> DictConfig:
    """A run's saved config with dotlist overrides (data.image_size=512), each checked against it: a key it does not
    have (a misspelling was ignored, or failed deep inside a constructor), a whole group replaced by a name
    (model=ssd300: the saved config holds the run's resolved groups, which no name selects here) and model.weights
    or model.weights_strict (the run's own weights are loaded, strictly) are ConfigErrors naming the override."""
    missing = object()
    for item in overrides:
        key, sep, _ = item.partition("=")
        try:
            value = OmegaConf.select(OmegaConf.from_dotlist([item]), key) if sep else None
        except (yaml.YAMLError, OmegaConfBaseException) as err:  # the value's or the key's grammar: the user's to fix
            raise ConfigError(f"override {item!r}: not key=value ({type(err).__name__}: {str(err).splitlines()[0]})") from None
        if not sep or not key:
            raise ConfigError(f"override {item!r}: give key=value, a key of the run's config (data.image_size=512)")
        if key in ("model.weights", "model.weights_strict"):
            raise ConfigError(f"override {item!r}: a run is loaded with its own weights ({checkpoint}); to predict "
                              "with other weights, configure the model without the run (model=<preset> model.weights=...)")
        current = OmegaConf.select(cfg, key, default=missing)
        parent_key = key.rpartition(".")[0]
        parent = OmegaConf.select(cfg, parent_key, default=missing) if parent_key else cfg
        if current is missing and parent is not None:  # a null parent (data.val: null) takes new keys
            known = sorted(parent) if isinstance(parent, DictConfig) else []
            raise ConfigError(f"override {item!r}: the config of {checkpoint} has no key {key}"
                              + (f" ({parent_key or 'its top level'} has {', '.join(map(str, known))})" if known else ""))
        if isinstance(current, DictConfig) and not isinstance(value, (dict, DictConfig)):
            first = next((k for k in current if not str(k).startswith("_")), "<key>")
            raise ConfigError(f"override {item!r}: {key} is the run's whole {key} config, saved resolved, not a "
                              f"choice to switch; override its keys ({key}.{first}=...), or configure the model "
                              f"without the run")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a .ckpt path or a run directory names: the run's final weights (checkpoints/weights.ckpt),
    or its last.ckpt while it has none (a run still training, stopped, or with checkpoint.weights=false)."""
    path = Path(path)
    if path.is_dir():
        weights, last = path / "checkpoints" / WEIGHTS_FILE, path / "checkpoints" / "last.ckpt"
        path = last if last.is_file() and not weights.is_file() else weights
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (give a run directory or a .ckpt file)")
    return path
