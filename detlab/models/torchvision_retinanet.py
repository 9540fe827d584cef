"""torchvision's own RetinaNet, trained and evaluated inside detlab's loop: the reference of the training-parity study.

`model=torchvision_retinanet` builds torchvision's `RetinaNet` (ResNet + FPN with P6/P7 from P5, heads of 4 convs,
its default anchors, matcher, losses and post-processing) and splits it into detlab's four parts, so that the
LightningModule, the data, the optimizer, the schedule and the evaluator are detlab's and only the training
computation is torchvision's:

- model:       its backbone, head and anchor generator on the batch's images -> (HeadOutput, Priors);
- assigner:    its `Matcher` (its `compute_loss` before the head's), per image;
- criterion:   its `RetinaNetHead.compute_loss` (focal loss per image over the non-ignored anchors / the image's
               positives, L1 box loss / the image's positives, both averaged over the images);
- postprocess: its `postprocess_detections`, boxes then mapped back to original pixels.

That is torchvision's train-mode `RetinaNet.forward` less its `GeneralizedRCNNTransform`: detlab's batch is
already resized, normalised and padded to a multiple of 32. The transform is built as the identity anyway
(mean 0, std 1, `_skip_resize`), so that the wrapped model called the torchvision way (`net(images, targets)`,
what tests/models/test_torchvision_retinanet.py compares against) computes the same thing.

`initial_weights` gives the same network's seeded initial state dict, which `model=tv_retinanet_r50_fpn` loads
through `model.weights` (experiments/tv_parity): both implementations then start from identical weights.
"""

from __future__ import annotations

import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead, RetinaNetRegressionHead
from torchvision.ops import box_iou, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detlab.errors import ConfigError, check_positive
from detlab.losses.focal import SigmoidFocalLoss
from detlab.models.build import DetectorParts
from detlab.models.torchvision_weights import load_weights
from detlab.structures import Batch, Detections, HeadOutput, Priors, boxes_to_original


def torchvision_retinanet(
    depth: int,
    width: int,
    seed: int,
    cls_loss: DictConfig,
    num_classes: int,
    weights: str | None = None,
    weights_strict: bool = True,
) -> DetectorParts:
    """torchvision's RetinaNet on ResNet-{depth} (trainable BatchNorm, from scratch) with FPN and head width
    `width`, its initial weights drawn from `seed` (as `initial_weights`), as detlab's four parts.

    cls_loss: the `loss` group; torchvision's head trains with a sigmoid focal loss, so only `loss=focal` fits
              (its alpha and gamma are used: gamma 0 is alpha-balanced CE).
    weights:  a detlab checkpoint or weights file of this model (model.weights), loaded strictly unless
              weights_strict is false (as dense_detector's).
    """
    check_positive("model", width=width)
    loss = instantiate(cls_loss)
    if not isinstance(loss, SigmoidFocalLoss):
        raise ConfigError(
            f"model=torchvision_retinanet trains with torchvision's sigmoid focal loss, not {cls_loss._target_}: "
            "use loss=focal (loss.gamma=0 loss.alpha=0.75 is alpha-balanced CE)"
        )
    net = torchvision_model(depth, width, num_classes, seed, alpha=loss.alpha, gamma=loss.gamma)
    return DetectorParts(
        model=load_weights(TorchvisionRetinaNet(net), weights, weights_strict),
        assigner=TorchvisionMatcher(net),
        criterion=TorchvisionLoss(net),
        postprocess=TorchvisionPostProcess(net),
    )


def initial_weights(depth: int, width: int, seed: int, num_classes: int) -> dict[str, Tensor]:
    """The state dict (torchvision's keys) that `torchvision_retinanet` starts from with the same arguments:
    what `model.weights` of detlab's tv_retinanet preset takes to start from the same weights."""
    return torchvision_model(depth, width, num_classes, seed).state_dict()


def torchvision_model(
    depth: int, width: int, num_classes: int, seed: int, alpha: float = 0.25, gamma: float = 2.0
) -> RetinaNet:
    """torchvision's RetinaNet as retinanet_resnet50_fpn builds it (P6/P7 from P5, 4-conv heads without norm, its
    anchors, matcher and post-processing) on resnet{depth} with trainable BatchNorm and every layer trainable,
    FPN and heads `width` wide; weights drawn from `seed` without touching the global random state (so that a
    run's data order does not depend on which implementation it trains). Its transform is the identity."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = torchvision.models.get_model(f"resnet{depth}", weights=None, norm_layer=nn.BatchNorm2d)
        channels = [body.layer1[-1].conv1.in_channels * 2**i for i in (1, 2, 3)]  # C3-C5 (BasicBlock or Bottleneck)
        backbone = BackboneWithFPN(
            body, {"layer2": "0", "layer3": "1", "layer4": "2"}, channels, width, extra_blocks=LastLevelP6P7(width, width)
        )
        head = FocalRetinaNetHead(width, 9, num_classes, alpha, gamma)
        # mean 0, std 1, no resize: detlab's batch comes resized, normalised and padded to 32 (see the module doc)
        return RetinaNet(backbone, num_classes, head=head, image_mean=[0.0] * 3, image_std=[1.0] * 3, _skip_resize=True)


class FocalRetinaNetHead(RetinaNetHead):
    """torchvision's RetinaNetHead whose classification loss takes the focal loss's alpha and gamma (torchvision
    fixes them at 0.25 and 2); the same parameters, built in the same order."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, alpha: float, gamma: float) -> None:
        nn.Module.__init__(self)  # RetinaNetHead.__init__ would build a classification head without alpha, gamma
        self.classification_head = FocalClassificationHead(in_channels, num_anchors, num_classes, alpha, gamma)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors)


class FocalClassificationHead(RetinaNetClassificationHead):
    """RetinaNetClassificationHead.compute_loss with alpha and gamma passed to sigmoid_focal_loss."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, alpha: float, gamma: float) -> None:
        super().__init__(in_channels, num_anchors, num_classes)
        self.alpha, self.gamma = alpha, gamma

    def compute_loss(self, targets, head_outputs, matched_idxs) -> Tensor:
        # torchvision's lines with alpha and gamma added, its per-image loop kept: the per-image normalisation
        # (each image's loss / its own positives, then the mean over images) is what the study compares.
        losses = []
        for targets_per_image, cls_logits_per_image, matched_idxs_per_image in zip(
            targets, head_outputs["cls_logits"], matched_idxs
        ):
            foreground = matched_idxs_per_image >= 0
            gt_classes_target = torch.zeros_like(cls_logits_per_image)
            gt_classes_target[foreground, targets_per_image["labels"][matched_idxs_per_image[foreground]]] = 1.0
            valid = matched_idxs_per_image != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(
                cls_logits_per_image[valid], gt_classes_target[valid], self.alpha, self.gamma, reduction="sum"
            )
            losses.append(loss / max(1, foreground.sum()))
        return sum(losses) / len(targets)


class TorchvisionRetinaNet(nn.Module):
    """images [B, 3, H, W] (detlab's normalised, padded batch) -> (HeadOutput, Priors) of torchvision's RetinaNet.

    cls_logits [B, A, K] and box_reg [B, A, 4] are its head's outputs as they are (level-major, then y, x,
    anchor: detlab's order); the priors are its anchor generator's for this padded size (the same for every
    image of the batch, as in torchvision).
    """

    def __init__(self, net: RetinaNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, targets: Batch | None = None) -> tuple[HeadOutput, Priors]:
        """targets is ignored (a one-stage detector); torchvision's anchors ignore the content sizes too."""
        features = list(self.net.backbone(images).values())
        outputs = self.net.head(features)
        height, width = images.shape[-2:]
        anchors = self.net.anchor_generator(ImageList(images, [(height, width)] * len(images)), features)[0]
        per_location = self.net.anchor_generator.num_anchors_per_location()[0]
        level_sizes = tuple(f.shape[-2] * f.shape[-1] * per_location for f in features)
        strides = torch.cat([
            torch.full((n,), height // f.shape[-2], device=images.device) for n, f in zip(level_sizes, features)
        ])
        return HeadOutput(outputs["cls_logits"], outputs["bbox_regression"]), Priors(anchors, strides, level_sizes)


class TorchvisionMatcher(nn.Module):
    """(outputs, priors, batch) -> matched_gt [B, A]: torchvision's Matcher (its 0.5 / 0.4 with low-quality
    matches) per image, as RetinaNet.compute_loss runs it; -1 background, -2 between the thresholds."""

    def __init__(self, net: RetinaNet) -> None:
        super().__init__()
        self.matcher = net.proposal_matcher  # a plain object, no parameters

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> Tensor:
        matched = torch.full(batch.gt_valid.shape[:1] + priors.boxes.shape[:1], -1, dtype=torch.int64,
                             device=priors.boxes.device)
        # torchvision's Matcher takes one image's IoU matrix at a time; this loop is its own.
        for image, valid in enumerate(batch.gt_valid):
            if valid.any():
                gt_index = valid.nonzero()[:, 0]  # matched indices below refer to the valid rows: map them back
                found = self.matcher(box_iou(batch.gt_boxes[image, gt_index], priors.boxes))
                matched[image] = torch.where(found >= 0, gt_index[found.clamp(min=0)], found)
        return matched


class TorchvisionLoss(nn.Module):
    """{"cls", "box"}: torchvision's RetinaNetHead.compute_loss on the matched anchors (see the module doc)."""

    def __init__(self, net: RetinaNet) -> None:
        super().__init__()
        self._head = [net.head]  # in a list: the head's parameters belong to the model, not to the loss

    def forward(self, outputs: HeadOutput, priors: Priors, matched_gt: Tensor, batch: Batch) -> dict[str, Tensor]:
        targets = [{"boxes": boxes, "labels": labels} for boxes, labels in zip(batch.gt_boxes, batch.gt_labels)]
        head_outputs = {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.box_reg}
        losses = self._head[0].compute_loss(targets, head_outputs, [priors.boxes] * len(batch), list(matched_gt))
        return {"cls": losses["classification"], "box": losses["bbox_regression"]}


class TorchvisionPostProcess(nn.Module):
    """(outputs, priors, batch) -> one Detections per image (boxes in original pixels, labels 0..K-1):
    torchvision's postprocess_detections (its score threshold, top-k per level, NMS and detections per image)."""

    def __init__(self, net: RetinaNet) -> None:
        super().__init__()
        self._net = [net]  # in a list: its parameters belong to the model
        self.max_per_image = net.detections_per_img

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> list[Detections]:
        sizes = list(priors.level_sizes)
        split = {"cls_logits": list(outputs.cls_logits.split(sizes, dim=1)),
                 "bbox_regression": list(outputs.box_reg.split(sizes, dim=1))}
        anchors = [list(priors.boxes.split(sizes))] * len(batch)
        found = self._net[0].postprocess_detections(split, anchors, [tuple(s) for s in batch.image_sizes.tolist()])
        return [
            Detections(boxes_to_original(d["boxes"][None], batch.scales[i : i + 1], batch.offsets[i : i + 1])[0],
                       d["scores"], d["labels"])
            for i, d in enumerate(found)
        ]

