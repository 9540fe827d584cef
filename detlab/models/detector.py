"""Detector: backbone -> neck -> head, plus the priors of the input's geometry. Nothing else."""

from __future__ import annotations

from torch import Tensor, nn

from detlab.models.priors import AnchorGenerator
from detlab.structures import HeadOutput, Priors


class Detector(nn.Module):
    """images [B, 3, H, W] -> (HeadOutput, Priors), the same in training and evaluation.

    The model never assigns, computes a loss, decodes or resizes: the assigner, the loss and the
    post-processing do, so each can be swapped on its own.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, priors: AnchorGenerator) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.priors = priors

    def forward(self, images: Tensor) -> tuple[HeadOutput, Priors]:
        levels = self.neck(self.backbone(images))
        priors = self.priors([tuple(x.shape[-2:]) for x in levels], self.neck.strides, images.device)
        return self.head(levels), priors
