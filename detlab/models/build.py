"""Builders named by `_target_` in conf/model/*.yaml: a config node in, the four objects out.

As DETR's build() returns model, criterion and postprocessors, a builder returns
(model, assigner, criterion, postprocess), wiring the channel counts and strides that one part
needs from another, and sharing one box coder between the loss and the post-processing.
"""

from __future__ import annotations

from typing import NamedTuple

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from detlab.models.detector import Detector


class DetectorParts(NamedTuple):
    model: nn.Module
    assigner: nn.Module
    criterion: nn.Module
    postprocess: nn.Module


def dense_detector(
    backbone: DictConfig,
    neck: DictConfig,
    head: DictConfig,
    priors: DictConfig,
    box_coder: DictConfig,
    assigner: DictConfig,
    box_loss: DictConfig,
    criterion: DictConfig,
    postprocess: DictConfig,
    cls_loss: DictConfig,
    num_classes: int,
) -> DetectorParts:
    """A one-stage dense detector (RetinaNet, SSD, YOLO): backbone -> neck -> head over priors.

    criterion is the loss that combines the classification loss (the `loss` config group) with box_loss.

    The classification loss decides the number of logits (K for sigmoid losses, K + 1 for softmax ones).
    """
    classification = instantiate(cls_loss)
    coder = instantiate(box_coder)
    backbone_net = instantiate(backbone)
    neck_net = instantiate(neck, in_channels=list(backbone_net.out_channels), in_strides=list(backbone_net.strides))
    prior_gen = instantiate(priors)
    num_outputs = classification.num_outputs(num_classes)
    # The loss decides sigmoid (K outputs) or softmax (K + 1, background first); the head's bias init and
    # the decoding follow it, so the three cannot disagree.
    softmax = num_outputs == num_classes + 1
    head_net = instantiate(
        head,
        in_channels=neck_net.out_channels,
        num_anchors=prior_gen.num_per_location,
        num_classes=num_outputs,
        background_first=softmax,
    )
    return DetectorParts(
        model=Detector(backbone_net, neck_net, head_net, prior_gen),
        assigner=instantiate(assigner),
        criterion=instantiate(criterion, cls_loss=classification, box_loss=instantiate(box_loss), box_coder=coder),
        postprocess=instantiate(postprocess, box_coder=coder, softmax=softmax),
    )
