"""Weights files into a built detector: torchvision's detection state dicts, detlab's checkpoints and weights.

`load_weights(model, path)` is what `model.weights=<path>` does. The file may be
- a torchvision detection state dict (what torchvision's weights enum saves in the torch hub cache, or
  `torch.save(model.state_dict())` of its detector): recognised by its keys and renamed to detlab's by the
  converter of that detector, for the matching preset (`model=tv_retinanet_r50_fpn`, `model=tv_ssd300_vgg16`, ...);
- a detlab Lightning checkpoint (`checkpoints/*.ckpt`): its `model.*` weights;
- a plain state dict of detlab's model (a weights file).
Instead of a path, `model.weights` may be a config node whose `_target_` returns such a state dict: in
experiments/tv_parity, torchvision's seeded initial weights (detlab.models.torchvision_retinanet.initial_weights),
so that detlab's preset starts from the very weights torchvision's own RetinaNet starts from.
Loading is strict (`model.weights_strict=true`, the default): a file made for another architecture is an error naming
the missing and unexpected keys, and so is a tensor of another shape. With `model.weights_strict=false` (fine-tuning
weights trained on other classes, as detectron2's MODEL.WEIGHTS and mmdetection's load_from do) a tensor whose name
fits and whose shape does not (the class outputs) is not loaded and keeps its fresh initialisation (the head's
prior-probability bias included); a missing or unexpected key is still an error. The tensors left so are logged once
and kept in the model's `weights_not_loaded` (a run writes them to results.json).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from detlab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
MAX_LISTED = 8  # keys named in a mismatch message


def retinanet_resnet50_fpn(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's retinanet_resnet50_fpn (v1) state dict -> the keys of detlab's tv_retinanet_r50_fpn model.

    The backbone keeps torchvision's ResNet names; FPN inner/layer blocks become the neck's lateral/output
    convs and P6/P7 its extra convs; the heads' conv towers (Conv2dNormActivation, conv at index 0 of each
    block) become the towers' convs at 0, 2, 4, 6 (a ReLU between them).
    """
    rules = [
        (r"^backbone\.body\.", "backbone."),
        (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral.\1."),
        (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.output.\1."),
        (r"^backbone\.fpn\.extra_blocks\.p6\.", "neck.extra.0."),
        (r"^backbone\.fpn\.extra_blocks\.p7\.", "neck.extra.1."),
        (r"^head\.classification_head\.conv\.(\d+)\.0\.", lambda m: f"head.cls_tower.{2 * int(m[1])}."),
        (r"^head\.regression_head\.conv\.(\d+)\.0\.", lambda m: f"head.box_tower.{2 * int(m[1])}."),
        (r"^head\.classification_head\.cls_logits\.", "head.cls_out."),
        (r"^head\.regression_head\.bbox_reg\.", "head.box_out."),
    ]
    return _rename(state_dict, rules)


def fasterrcnn_resnet50_fpn(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's fasterrcnn_resnet50_fpn (v1) state dict -> the keys of detlab's tv_fasterrcnn_r50_fpn model.

    Every tensor keeps its values; the keys are renamed, with one exception: ``roi_heads.box_predictor.bbox_pred``
    regresses 4 deltas for each of torchvision's C outputs, background (label 0) included, weight [C * 4, 1024],
    bias [C * 4]; detlab's class-specific deltas cover the K = C - 1 object classes only. The background's 4 rows
    (the first) are dropped: torchvision never uses them, its loss trains only the deltas of the gt's class and
    its inference removes the background column before NMS. The classification layer keeps its C = K + 1
    outputs, background first: detlab's layout for a softmax loss (loss=ce with K = 90 COCO classes).
    """
    rules = [
        (r"^backbone\.body\.", "backbone."),
        (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral.\1."),
        (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.output.\1."),
        (r"^rpn\.head\.conv\.0\.0\.", "rpn_head.conv."),
        (r"^rpn\.head\.cls_logits\.", "rpn_head.objectness."),
        (r"^rpn\.head\.bbox_pred\.", "rpn_head.box."),
        (r"^roi_heads\.box_head\.", "roi_head."),
        (r"^roi_heads\.box_predictor\.", "roi_head."),
    ]
    converted = _rename(state_dict, rules)
    for name in ("roi_head.bbox_pred.weight", "roi_head.bbox_pred.bias"):
        if name in converted:  # else the strict load names it missing
            converted[name] = converted[name][4:]
    return converted


def ssd300_vgg16(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's ssd300_vgg16 state dict -> the keys of detlab's tv_ssd300_vgg16 model.

    VGG's conv1_1 .. conv4_3 keep torchvision's vgg16 names (backbone.features.0 .. 21), as detlab's VGG16 does;
    torchvision's extra.0 is features 23..29 (pool4, conv5_x) followed by (pool5, fc6, ReLU, fc7), and its
    extra.1 .. extra.4 (conv8 .. conv11) are detlab's neck. The class logits need no reordering: both heads lay
    out each default box's C outputs together, torchvision's 91 with the background at 0 being detlab's K + 1
    softmax outputs for K = 90 (data.category_ids 1..90: detlab label l is torchvision label l + 1).
    """
    rules = [
        (r"^backbone\.scale_weight$", "backbone.l2norm.weight"),
        (r"^backbone\.extra\.0\.7\.1\.", "backbone.fc6."),
        (r"^backbone\.extra\.0\.7\.3\.", "backbone.fc7."),
        (r"^backbone\.extra\.0\.(\d+)\.", lambda m: f"backbone.features.{23 + int(m[1])}."),
        (r"^backbone\.extra\.(\d+)\.", lambda m: f"neck.extra.{int(m[1]) - 1}."),
        (r"^head\.classification_head\.module_list\.", "head.cls_convs."),
        (r"^head\.regression_head\.module_list\.", "head.box_convs."),
    ]
    return _rename(state_dict, rules)


# torchvision detector -> (a key only its state dicts have, its converter, the preset that matches it)
TORCHVISION_DETECTORS: dict[str, tuple[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]], str]] = {
    "retinanet_resnet50_fpn": (
        "head.classification_head.cls_logits.weight", retinanet_resnet50_fpn, "model=tv_retinanet_r50_fpn"
    ),
    "fasterrcnn_resnet50_fpn": (
        "roi_heads.box_predictor.cls_score.weight", fasterrcnn_resnet50_fpn, "model=tv_fasterrcnn_r50_fpn"
    ),
    "ssd300_vgg16": ("backbone.scale_weight", ssd300_vgg16, "model=tv_ssd300_vgg16"),
}


def load_weights(model: nn.Module, path: str | Path | Mapping | None, strict: bool = True) -> nn.Module:
    """model with the weights of the file at path loaded (see the module's docstring; strict: model.weights_strict);
    path None: as is; a config node (a Mapping with `_target_`): the state dict it instantiates to."""
    if not isinstance(strict, bool):  # a string such as "no" would be truthy
        raise ConfigError(f"model.weights_strict={strict!r}: give true (every tensor of the file must fit) or false "
                          "(tensors of another shape, such as the class outputs, keep their fresh initialisation)")
    if path is None:
        return model
    if isinstance(path, Mapping):
        return load_state(model, instantiate(path), f"model.weights={path.get('_target_')}", strict)
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"model.weights={path}: no such file")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to replace; the cause is named
        raise CheckpointError(f"model.weights={path}: not a readable torch weights file ({type(err).__name__}: {err})") from None
    return load_state(model, loaded, f"model.weights={path}", strict)


def load_state(model: nn.Module, loaded: object, name: str, strict: bool = True) -> nn.Module:
    """model with `loaded` (what torch.load gave: a torchvision or detlab state dict, or a checkpoint) loaded;
    `name` says where it came from in messages. Missing and unexpected keys are an error; so are tensors of
    another shape when strict, else they are left as initialised and listed in `model.weights_not_loaded`."""
    state, source = _detlab_state(loaded, name)
    missing, unexpected, shapes = _mismatch(model, state)
    reshaped = [f"{key} ({shape})" for key, shape in shapes.items()]
    if missing or unexpected or (strict and reshaped):
        listed = sorted(missing + reshaped) if strict else missing
        raise CheckpointError(
            f"{name} ({source}) does not fit the configured model: {len(listed)} missing keys "
            f"{listed[:MAX_LISTED]}, {len(unexpected)} unexpected keys {unexpected[:MAX_LISTED]}; "
            + _hint(source, only_shapes=strict and not missing and not unexpected)
        )
    fitting = {k: v for k, v in state.items() if k not in shapes}
    model.load_state_dict(fitting, strict=not shapes, assign=any(t.is_meta for t in model.state_dict().values()))
    model.weights_not_loaded = reshaped
    if reshaped:  # once, where the model is built (a run's module, a Predictor)
        log.warning("%s (%s): %d tensors of another shape not loaded, left at their initialisation "
                    "(model.weights_strict=false):\n  %s", name, source, len(reshaped), "\n  ".join(reshaped))
    return model


def _detlab_state(loaded: object, name: str) -> tuple[dict[str, Tensor], str]:
    """(the state dict in detlab's model keys, a word on what the file was) of a loaded weights file."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):  # a Lightning checkpoint
        model_keys = {k[len("model."):]: v for k, v in loaded["state_dict"].items() if k.startswith("model.")}
        return model_keys, "a detlab checkpoint"
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise CheckpointError(f"{name}: not a state dict (a mapping of names to tensors) or a checkpoint")
    for name, (signature, convert, preset) in TORCHVISION_DETECTORS.items():
        if signature in loaded:
            return convert(loaded), f"torchvision's {name}, for {preset}"
    return dict(loaded), "a state dict in detlab's keys"


def _mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list[str], list[str], dict[str, str]]:
    """Keys the model has and the file lacks, keys the file has and the model lacks (both sorted), and the keys both
    have with other shapes, in order, each with "shape <file's> for <model's>"."""
    own = model.state_dict()
    # torchvision's FrozenBatchNorm2d drops num_batches_tracked when loading: a BatchNorm state fits it
    extra = {k for k in state if k not in own and not k.endswith("num_batches_tracked")}
    missing = {k for k in own if k not in state}
    wrong = {k: f"shape {list(state[k].shape)} for {list(v.shape)}" for k, v in sorted(own.items())
             if k in state and state[k].shape != v.shape}
    return sorted(missing), sorted(extra), wrong


def _hint(source: str, only_shapes: bool) -> str:
    if source.startswith("torchvision"):
        hint = "configure the preset named (its data.category_ids fix the class outputs) and no other backbone"
    else:
        hint = "build the model the file was trained as (the run's config: detlab-eval run / detlab-predict --run)"
    if only_shapes:  # the same architecture: another class count, most often
        hint += ("; or, to fine-tune on other classes, model.weights_strict=false loads the tensors that fit and "
                 "leaves those of another shape at their initialisation")
    return hint


def _rename(state_dict: Mapping[str, Tensor], rules: list[tuple[str, object]]) -> dict[str, Tensor]:
    """state_dict with each key renamed by the first rule whose pattern it matches (others kept as they are)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            new, count = re.subn(pattern, replacement, key, count=1)
            if count:
                key = new
                break
        out[key] = value
    return out
