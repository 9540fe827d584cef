"""What the torchvision backbones share: ResNet's numbering of the stages (1..4 = C2..C5) and frozen stages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from detlab.errors import ConfigError

NORMS = ("bn", "frozen_bn")


class StagedBackbone(nn.Module):
    """A backbone whose first `frozen_stages` stages (the subclass's `_frozen_modules`) take no gradient and
    keep their BatchNorm statistics (eval mode, as in detectron2) whatever mode the model is put in."""

    frozen_stages: int = -1

    def _frozen_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def freeze(self, frozen_stages: int) -> None:
        self.frozen_stages = frozen_stages
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> StagedBackbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self


def run_collecting(x: Tensor, blocks: Iterable[nn.Module], wanted: set[int]) -> list[Tensor]:
    """Apply `blocks` in order to x; the outputs of the blocks at the positions in `wanted` (0-based), in order."""
    outputs = []
    for position, block in enumerate(blocks):
        x = block(x)
        if position in wanted:
            outputs.append(x)
    return outputs


def check_stage_args(norm: str, frozen_stages: int, out_indices: Sequence[int]) -> None:
    """The keys every torchvision backbone shares, named as in conf/model/backbone."""
    if norm not in NORMS:
        raise ConfigError(f"model.backbone.norm={norm!r}; use one of {list(NORMS)}")
    indices = list(out_indices)
    if not indices or not set(indices) <= {1, 2, 3, 4} or indices != sorted(set(indices)):
        raise ConfigError(f"model.backbone.out_indices={indices} must be increasing stages among 1..4 (C2..C5)")
    if not -1 <= frozen_stages <= 4:
        raise ConfigError(f"model.backbone.frozen_stages={frozen_stages} must be in -1..4")
