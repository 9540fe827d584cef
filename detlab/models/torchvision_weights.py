"""torchvision's detection state dicts renamed into detlab's models (the `model=tv_*` presets), key by key.

Each converter takes the state dict that torchvision's weights enum saves (what `model.state_dict()` returns)
and gives the state dict of the matching detlab preset's `parts.model`, to load with strict=True. A state dict
of another model is an error that names the keys it lacks and the keys it should not have.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

SHOWN_KEYS = 5  # keys named in an error message, per kind; the rest are counted


def ssd300_vgg16(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's `ssd300_vgg16` -> detlab's `model=tv_ssd300_vgg16` (VGG16, SSD300 neck, SSD head).

    The tensors are the same objects, only renamed. The class logits need no reordering: both heads lay out
    each default box's C outputs together (anchor-major), torchvision's 91 with background at 0 being detlab's
    K + 1 softmax outputs for K = 90 (detlab label l is torchvision label l + 1).
    """
    # conv1_1 .. conv4_3 in torchvision's vgg16.features numbering, which detlab's VGG16 keeps
    layers = {f"backbone.features.{i}": f"backbone.features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)}
    # torchvision's extra.0 is features 23..29 (pool4, conv5_1 .. conv5_3) then (pool5, fc6, ReLU, fc7)
    layers |= {f"backbone.extra.0.{i - 23}": f"backbone.features.{i}" for i in (24, 26, 28)}
    layers |= {"backbone.extra.0.7.1": "backbone.fc6", "backbone.extra.0.7.3": "backbone.fc7"}
    # extra.1 .. extra.4 are conv8 .. conv11 (1x1, ReLU, 3x3, ReLU): detlab's neck
    layers |= {f"backbone.extra.{k}.{j}": f"neck.extra.{k - 1}.{j}" for k in range(1, 5) for j in (0, 2)}
    layers |= {f"head.classification_head.module_list.{i}": f"head.cls_convs.{i}" for i in range(6)}
    layers |= {f"head.regression_head.module_list.{i}": f"head.box_convs.{i}" for i in range(6)}
    renames = {f"{theirs}.{name}": f"{ours}.{name}" for theirs, ours in layers.items() for name in ("weight", "bias")}
    renames["backbone.scale_weight"] = "backbone.l2norm.weight"  # conv4_3's L2Norm scale
    return _renamed(state_dict, renames, "ssd300_vgg16")


def _renamed(state_dict: Mapping[str, Tensor], renames: dict[str, str], model: str) -> dict[str, Tensor]:
    """state_dict with every key renamed by renames (torchvision key -> detlab key), which must cover it exactly."""
    missing = [key for key in renames if key not in state_dict]
    unexpected = [key for key in state_dict if key not in renames]
    if missing or unexpected:
        raise ValueError(
            f"not a state dict of torchvision's {model}: missing keys {_some(missing)}; unexpected keys "
            f"{_some(unexpected)}. Give the file that torchvision's {model} weights save (its model.state_dict())"
        )
    return {renames[key]: value for key, value in state_dict.items()}


def _some(keys: list[str]) -> str:
    """The first few keys and how many there are in all, for an error message."""
    if not keys:
        return "none"
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"{keys[:SHOWN_KEYS]}{more} ({len(keys)} in all)"
