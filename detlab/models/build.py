"""Builders named by `_target_` in conf/model/*.yaml: a config node in, the four objects out.

As DETR's build() returns model, criterion and postprocessors, a builder returns
(model, assigner, criterion, postprocess), one-stage (dense_detector) or two-stage (two_stage_detector),
wiring the channel counts and strides that one part needs from another, and sharing one box coder between
the loss and the post-processing.
"""

from __future__ import annotations

from typing import NamedTuple

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from detlab.errors import ConfigError
from detlab.models.detector import Detector
from detlab.models.torchvision_weights import load_weights
from detlab.models.two_stage import FasterRCNN


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
    weights: str | DictConfig | None = None,
    weights_strict: bool = True,
) -> DetectorParts:
    """A one-stage dense detector (RetinaNet, SSD, YOLO): backbone -> neck -> head over priors.

    criterion is the loss that combines the classification loss (the `loss` config group) with box_loss.
    weights: a file to load into the model (detlab.models.torchvision_weights.load_weights): a
    torchvision detection state dict for the matching preset, or a detlab checkpoint or weights file; or a
    config node that makes the state dict (torchvision's seeded initial weights in experiments/tv_parity).
    weights_strict: false leaves the file's tensors of another shape (the class outputs of other classes) at
    their initialisation; missing or unexpected keys stay an error.

    The classification loss decides the number of logits (K for sigmoid losses, K + 1 for softmax ones).
    """
    _check_objectness(get_class(head._target_), get_class(criterion._target_))
    classification, num_outputs, softmax = _classification(cls_loss, num_classes)
    coder = instantiate(box_coder)
    backbone_net, neck_net, prior_gen = _trunk(backbone, neck, priors)
    head_net = instantiate(
        head,
        in_channels=neck_net.out_channels,
        num_anchors=prior_gen.num_per_location,
        num_classes=num_outputs,
        background_first=softmax,
    )
    return DetectorParts(
        model=load_weights(Detector(backbone_net, neck_net, head_net, prior_gen), weights, weights_strict),
        assigner=instantiate(assigner),
        criterion=instantiate(criterion, cls_loss=classification, box_loss=instantiate(box_loss), box_coder=coder),
        postprocess=instantiate(postprocess, box_coder=coder, softmax=softmax),
    )


def _classification(cls_loss: DictConfig, num_classes: int) -> tuple[nn.Module, int, bool]:
    """The classification loss, its number of outputs and whether they are softmax ones. The loss decides
    sigmoid (K outputs) or softmax (K + 1, background first); the head's bias init and the decoding follow it,
    so the three cannot disagree."""
    classification = instantiate(cls_loss)
    num_outputs = classification.num_outputs(num_classes)
    return classification, num_outputs, num_outputs == num_classes + 1


def _trunk(backbone: DictConfig, neck: DictConfig, priors: DictConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The backbone, the neck over its channels and strides, and the prior generator checked against the neck's
    levels (built in this order, which the seeded initial weights depend on)."""
    backbone_net = instantiate(backbone)
    neck_net = instantiate(neck, in_channels=list(backbone_net.out_channels), in_strides=list(backbone_net.strides))
    prior_gen = instantiate(priors)
    prior_gen.check_levels(neck_net.strides)
    return backbone_net, neck_net, prior_gen


def _check_objectness(head: type, criterion: type) -> None:
    """A head with an objectness output goes with the criterion that trains it, the others with one that does
    not: checked on the classes, before anything is built (a YOLO neck's levels would not fit another head)."""
    if head.has_objectness != criterion.uses_objectness:
        raise ConfigError(
            f"model.head ({head.__name__}) {'predicts' if head.has_objectness else 'has no'} objectness but "
            f"model.criterion ({criterion.__name__}) {'needs' if criterion.uses_objectness else 'ignores'} it: an "
            "objectness head goes with an objectness criterion (model.head=yolo with detlab.losses.yolo.YoloLoss, "
            "as model=yolov3), the others with detlab.losses.dense.DenseDetectionLoss"
        )


def two_stage_detector(
    backbone: DictConfig,
    neck: DictConfig,
    priors: DictConfig,
    rpn: DictConfig,
    roi: DictConfig,
    criterion: DictConfig,
    postprocess: DictConfig,
    cls_loss: DictConfig,
    num_classes: int,
    weights: str | DictConfig | None = None,
    weights_strict: bool = True,
) -> DetectorParts:
    """Faster R-CNN with FPN: backbone -> neck -> RPN over the anchors (priors) -> proposals -> RoI box head.

    rpn: head, box_coder, proposals, assigner (max-IoU + sampling: the module's assigner), loss (a sigmoid
         objectness loss) and box_loss of the first stage.
    roi: sampler (RoIs drawn from the proposals in training), head, box_coder and box_loss of the second stage.
    criterion combines the four terms; the RoI head's classification loss is cls_loss (the `loss` config group),
    which decides its outputs (K sigmoid or K + 1 softmax) and so its bias init and decoding.
    weights, weights_strict: a file to load into the model, as dense_detector's.
    """
    classification, num_outputs, softmax = _classification(cls_loss, num_classes)
    rpn_coder, roi_coder = instantiate(rpn.box_coder), instantiate(roi.box_coder)
    backbone_net, neck_net, anchors = _trunk(backbone, neck, priors)
    model = FasterRCNN(
        backbone=backbone_net,
        neck=neck_net,
        rpn_head=instantiate(rpn.head, in_channels=neck_net.out_channels, num_anchors=anchors.num_per_location),
        priors=anchors,
        proposals=instantiate(rpn.proposals, box_coder=rpn_coder),
        roi_sampler=instantiate(roi.sampler),
        roi_head=instantiate(
            roi.head,
            in_channels=neck_net.out_channels,
            level_strides=list(neck_net.strides),
            num_outputs=num_outputs,
            num_classes=num_classes,
            background_first=softmax,
        ),
    )
    loss = instantiate(
        criterion,
        rpn_cls_loss=instantiate(rpn.loss),
        rpn_box_loss=instantiate(rpn.box_loss),
        rpn_box_coder=rpn_coder,
        cls_loss=classification,
        box_loss=instantiate(roi.box_loss),
        box_coder=roi_coder,
    )
    return DetectorParts(
        model=load_weights(model, weights, weights_strict),
        assigner=instantiate(rpn.assigner),
        criterion=loss,
        postprocess=instantiate(postprocess, box_coder=roi_coder, softmax=softmax),
    )
