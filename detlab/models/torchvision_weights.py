"""torchvision detection state dicts -> detlab model state dicts, for the presets that are torchvision's detectors
(conf/model/tv_*.yaml), so that its published COCO weights load into detlab by a strict load_state_dict.

Each converter takes the dict that torchvision's model.state_dict() returns (what its weights enum saves in the
torch hub cache) and returns one keyed as detlab's ``parts.model.state_dict()``; a dict of another model is an
error that names the keys it lacks and the keys it should not have.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor
from torchvision.models import detection

# torchvision's key (a regular expression) -> detlab's, in order; backbone.body.* keeps torchvision's ResNet names.
_FASTERRCNN_KEYS = (
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.output.\1."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn_head.conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn_head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn_head.box."),
    (r"^roi_heads\.box_head\.", "roi_head."),
    (r"^roi_heads\.box_predictor\.", "roi_head."),
)


def fasterrcnn_resnet50_fpn(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (v1) state dict -> detlab's model=tv_fasterrcnn_r50_fpn.

    Every tensor keeps its values; the keys are renamed, with two exceptions:
    - ``num_batches_tracked`` of torchvision's BatchNorm layers is dropped: detlab's preset uses frozen BatchNorm
      (as torchvision's published model), whose only buffers are the statistics and the affine terms (torchvision's
      FrozenBatchNorm2d drops the counter on load as well). The frozen statistics map by name.
    - ``roi_heads.box_predictor.bbox_pred``: torchvision regresses 4 deltas for each of its C outputs, background
      (label 0) included, weight [C * 4, 1024], bias [C * 4]; detlab's class-specific deltas cover the K = C - 1
      object classes only. The background's 4 rows (the first) are dropped: torchvision never uses them, its
      loss trains only the deltas of the gt's class and its inference removes the background column before NMS.
    The classification layer keeps its C = K + 1 outputs, background first: detlab's layout for a softmax loss
    (the preset's loss=ce with K = 90 COCO classes gives torchvision's 91 outputs).

    Raises ValueError naming the missing and unexpected keys when state_dict is not this model's (another
    architecture, a detlab checkpoint, a wrapper such as {"model": ...}).
    """
    state = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    _check_keys(state, _reference_keys(detection.fasterrcnn_resnet50_fpn), "fasterrcnn_resnet50_fpn")
    converted = {}
    for key, value in state.items():
        for pattern, replacement in _FASTERRCNN_KEYS:
            key, found = re.subn(pattern, replacement, key)
            if found:
                break
        converted[key] = value
    for name in ("roi_head.bbox_pred.weight", "roi_head.bbox_pred.bias"):
        converted[name] = converted[name][4:]
    return converted


def _reference_keys(builder) -> set[str]:
    """The state-dict keys of torchvision's model, built without memory or weights (meta device), BatchNorm
    counters left out."""
    with torch.device("meta"):
        model = builder(weights=None, weights_backbone=None)
    return {k for k in model.state_dict() if not k.endswith(".num_batches_tracked")}


def _check_keys(state: dict[str, Tensor], expected: set[str], name: str) -> None:
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"not a state dict of torchvision's {name}: {len(missing)} missing keys {_few(missing)}, "
            f"{len(unexpected)} unexpected keys {_few(unexpected)}; give the file that torchvision's weights enum "
            "saves (model.state_dict() of that model)"
        )


def _few(keys: list[str], limit: int = 5) -> str:
    return str(keys[:limit])[:-1] + (f", ... {len(keys) - limit} more]" if len(keys) > limit else "]")
