"""torchvision's pretrained weights, named in a backbone config (`pretrained: true | false | <name>`) and
loaded from <TORCH_HOME>/hub/checkpoints, downloaded only when the file is not there."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor
from torchvision.models import WeightsEnum

from detlab.errors import ConfigError


def torchvision_weights(model_name: str, pretrained: bool | str | None) -> WeightsEnum | None:
    """The weights entry of torchvision's `model_name` that `pretrained` names (true: its DEFAULT), or None."""
    if pretrained is False or pretrained is None:
        return None
    enum = torchvision.models.get_model_weights(model_name)
    if pretrained is True:
        return enum.DEFAULT
    try:
        return enum[pretrained]
    except KeyError:
        raise ConfigError(
            f"model.backbone.pretrained={pretrained!r} is not a {model_name} weights name; "
            f"use true, false or one of {[w.name for w in enum]}"
        ) from None


def fetch(weights: WeightsEnum, pretrained: bool | str) -> dict[str, Tensor]:
    """torchvision's loader: the file in <TORCH_HOME>/hub/checkpoints if there, else a download."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as err:  # urllib's URLError is an OSError: no network and no cached file
        target = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
        raise ConfigError(
            f"model.backbone.pretrained={pretrained!r}: torchvision's {weights} is not at {target} and could "
            f"not be downloaded from {weights.url} ({err}); put the file there or set pretrained=false"
        ) from err
