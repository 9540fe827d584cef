"""Detector: backbone -> neck -> head, plus the priors of the input's geometry. Nothing else."""

from __future__ import annotations

from torch import Tensor, nn

from detlab.errors import ConfigError
from detlab.models.priors import PriorGenerator
from detlab.structures import Batch, HeadOutput, Priors


class Detector(nn.Module):
    """images [B, 3, H, W] -> (HeadOutput, Priors), the same in training and evaluation.

    The model never assigns, computes a loss, decodes or resizes: the assigner, the loss and the
    post-processing do, so each can be swapped on its own. The priors follow the shapes of the neck's
    levels, so any input size works (the generator caches them per size).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, priors: PriorGenerator) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.priors = priors

    def forward(self, images: Tensor, targets: Batch | None = None) -> tuple[HeadOutput, Priors]:
        """images [B, 3, H, W] -> cls_logits [B, A, C], box_reg [B, A, 4] and the A priors they refer to.

        targets is ignored: a one-stage detector has nothing to sample between stages (two-stage models do).
        """
        levels = self.neck(self.backbone(images))
        priors = self.priors(
            [tuple(x.shape[-2:]) for x in levels], self.neck.strides, images.device, images.shape[-2:]
        )
        outputs = self.head(levels)
        if outputs.box_reg.shape[1] != len(priors):  # would otherwise surface later as a shape error in the loss
            raise ConfigError(
                f"the head made {outputs.box_reg.shape[1]} predictions per image for {len(priors)} priors: "
                "model.head.num_anchors must equal the prior generator's num_per_location"
            )
        return outputs, priors
