"""Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017): backbone -> FPN -> RPN -> proposals -> RoI head.

Three pieces, in the order they run: the proposal generator (RPN outputs -> the best non-overlapping boxes per
image), the model (both stages, with the RoI sampling between them in training) and the post-processing (RoI
outputs -> detections in original pixels). Everything is batched over the images: proposals live in a padded
[B, R, 4] tensor with a validity mask, as the targets do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detlab.errors import ConfigError, check_non_negative, check_positive
from detlab.models.assigners import RoISampler
from detlab.models.heads.roi import RoIBoxHead
from detlab.models.heads.rpn import RPNHead
from detlab.models.postprocess import (
    check_thresholds,
    class_probabilities,
    clip_to_images,
    decode_at,
    nms_top_k_per_image,
    select_detections,
    top_k_per_level,
)
from detlab.models.priors import AnchorGenerator
from detlab.structures import Batch, BoxCoder, Detections, HeadOutput, Priors, TwoStageOutput


class ProposalGenerator(nn.Module):
    """The RPN's proposals: per level the ``pre_nms_top_n`` anchors of highest objectness, decoded and clipped to
    the image, boxes narrower or shorter than ``min_size`` dropped, NMS at ``nms_iou`` within each image, the best
    ``post_nms_top_n`` per image. Training and evaluation have their own top-n (torchvision's FPN models:
    2000 / 1000 before NMS). No gradient flows through the proposals (Faster R-CNN's approximate joint training).

    nms_per_level: False compares all levels' boxes of an image together (one NMS group per image, detlab's
                   default); True compares boxes of the same level only (one group per image and level), as
                   torchvision's and detectron2's RPNs: a large box of P5 then does not suppress a P2 box that
                   overlaps it, and the levels' survivors compete only for the post-NMS top-n.
    With nms_per_level and the top-n above this is torchvision's filter_proposals; its score_thresh 0.0 on the
    sigmoid keeps every box, so there is no such option here.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        pre_nms_top_n: int = 2000,
        post_nms_top_n: int = 1000,
        eval_pre_nms_top_n: int = 1000,
        eval_post_nms_top_n: int = 1000,
        nms_iou: float = 0.7,
        min_size: float = 1e-3,
        nms_per_level: bool = False,
    ) -> None:
        super().__init__()
        check_positive("model.rpn.proposals", pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                       eval_pre_nms_top_n=eval_pre_nms_top_n, eval_post_nms_top_n=eval_post_nms_top_n)
        check_thresholds("model.rpn.proposals", nms_iou)
        check_non_negative("model.rpn.proposals", min_size=min_size)
        self.box_coder = box_coder
        self.train_top_n = (pre_nms_top_n, post_nms_top_n)
        self.eval_top_n = (eval_pre_nms_top_n, eval_post_nms_top_n)
        self.nms_iou = nms_iou
        self.min_size = min_size
        self.nms_per_level = nms_per_level

    def extra_repr(self) -> str:
        return (
            f"train_top_n={self.train_top_n}, eval_top_n={self.eval_top_n}, nms_iou={self.nms_iou}, "
            f"nms_per_level={self.nms_per_level}"
        )

    @torch.no_grad()
    def forward(self, rpn: HeadOutput, anchors: Priors, image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """rpn (cls_logits [B, A, 1], box_reg [B, A, 4]) on anchors [A], image_sizes (h, w) [B, 2] ->
        proposals [B, R, 4] xyxy and valid [B, R], R = post_nms_top_n, each image's by decreasing objectness."""
        pre_nms_top_n, size = self.train_top_n if self.training else self.eval_top_n
        num_images = len(rpn.box_reg)
        # Logits rank as their sigmoids do, without the ties of probabilities that round to 1.
        logits, anchor_index, _ = top_k_per_level(rpn.cls_logits.detach().float(), anchors.level_sizes, pre_nms_top_n)
        boxes = decode_at(self.box_coder, rpn.box_reg.detach(), anchors, anchor_index, image_sizes)  # [B, T, 4]
        candidate = ((boxes[..., 2:] - boxes[..., :2]) >= self.min_size).all(dim=-1)  # [B, T]
        image_index = torch.arange(num_images, device=boxes.device)[:, None].expand_as(logits)[candidate]
        groups = image_index
        if self.nms_per_level:
            levels = torch.arange(len(anchors.level_sizes), device=boxes.device)
            anchor_level = levels.repeat_interleave(torch.tensor(anchors.level_sizes, device=boxes.device))  # [A]
            groups = image_index * len(levels) + anchor_level[anchor_index[candidate]]
        boxes, logits = boxes[candidate], logits[candidate]
        keep, counts = nms_top_k_per_image(boxes, logits, groups, image_index, num_images, self.nms_iou, size)
        # keep is grouped by image: slot = rank within its image, at row image * size + slot of the padded output
        image_index = image_index[keep]
        slot = torch.arange(len(keep), device=keep.device) - (counts.cumsum(0) - counts)[image_index]
        row = image_index * size + slot
        proposals = boxes.new_zeros(num_images * size, 4).index_copy_(0, row, boxes[keep])
        valid = torch.zeros(num_images * size, dtype=torch.bool, device=boxes.device).index_fill_(0, row, True)
        return proposals.view(num_images, size, 4), valid.view(num_images, size)


class FasterRCNN(nn.Module):
    """images [B, 3, H, W] (and the targets in training) -> (TwoStageOutput, Priors = the RPN's anchors).

    The model runs both stages. Between them, in training, the RoI sampler draws the RoIs the box head learns
    from (proposals plus gt boxes, balanced positives and background): the one place where a detlab model looks
    at the targets, because the second stage's inputs depend on them. In evaluation it runs the box head on every
    proposal; given targets, it also matches them (roi_matched_gt) so that a validation loss exists.
    Without targets, proposals are clipped to the padded input rather than each image's content.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn_head: RPNHead,
        priors: AnchorGenerator,
        proposals: ProposalGenerator,
        roi_sampler: RoISampler,
        roi_head: RoIBoxHead,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.priors = priors  # the RPN's anchors
        self.proposals = proposals
        self.roi_sampler = roi_sampler
        self.roi_head = roi_head

    def forward(self, images: Tensor, targets: Batch | None = None) -> tuple[TwoStageOutput, Priors]:
        """images [B, 3, H, W] -> TwoStageOutput (see its fields for the shapes) and the A anchors of the RPN."""
        if self.training and targets is None:
            raise ValueError(
                "FasterRCNN in training mode samples its RoIs against the targets: call model(images, targets=batch), "
                "or model.eval() for inference"
            )
        levels = self.neck(self.backbone(images))
        anchors = self.priors(
            [tuple(x.shape[-2:]) for x in levels], self.neck.strides, images.device, images.shape[-2:]
        )
        rpn = self.rpn_head(levels)
        if rpn.box_reg.shape[1] != len(anchors):  # would otherwise surface later as a shape error in the loss
            raise ConfigError(
                f"the RPN head made {rpn.box_reg.shape[1]} predictions per image for {len(anchors)} anchors: "
                "model.rpn.head's num_anchors must equal the anchor generator's num_per_location"
            )
        padded = torch.tensor([images.shape[-2:]], device=images.device).expand(len(images), 2)
        image_sizes = padded if targets is None else targets.image_sizes
        proposals, valid = self.proposals(rpn, anchors, image_sizes)  # [B, R, 4], [B, R]
        matched = None
        if self.training:
            proposals, valid, matched = self.roi_sampler(proposals, valid, targets)  # [B, S, ...]
        elif targets is not None:
            matched = self.roi_sampler.match(proposals, valid, targets)
        cls_logits, box_reg = self.roi_head(levels, proposals, valid, tuple(images.shape[-2:]))
        output = TwoStageOutput(
            rpn=rpn, proposals=proposals, proposal_valid=valid, roi_cls_logits=cls_logits, roi_box_reg=box_reg,
            roi_matched_gt=matched,
        )
        return output, anchors


class RoIPostProcess(nn.Module):
    """Faster R-CNN's inference: for every valid RoI and class, the class probability and the class's box (decoded
    by the RoI box coder, clipped), above ``score_thresh``, class-aware NMS at ``nms_iou`` within each image, the
    ``max_per_image`` best, in original pixels. As torchvision's RoIHeads.postprocess_detections, batched.

    softmax: scores are a softmax over C = K + 1 outputs whose column 0 is background (softmax losses);
             otherwise a sigmoid per class over C = K outputs (the builder sets it from the loss).
    min_size: boxes narrower or shorter than this (input pixels) after clipping are dropped (torchvision: 0.01).
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_per_image: int = 100,
        softmax: bool = True,
        min_size: float = 1e-2,
    ) -> None:
        super().__init__()
        check_positive("model.postprocess", max_per_image=max_per_image)
        check_thresholds("model.postprocess", nms_iou, score_thresh)
        check_non_negative("model.postprocess", min_size=min_size)
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.nms_iou = nms_iou
        self.max_per_image = max_per_image
        self.softmax = softmax
        self.min_size = min_size

    @torch.no_grad()
    def forward(self, outputs: TwoStageOutput, priors: Priors, batch: Batch) -> list[Detections]:
        """One ``Detections`` per image: boxes [N, 4] xyxy in original pixels, scores [N], labels [N] (0..K-1),
        sorted by decreasing score. priors (the RPN's anchors) are not needed: the RoIs carry their boxes."""
        logits = outputs.roi_cls_logits.float()
        scores = class_probabilities(logits, self.softmax)  # [B, R, K]
        num_images, num_rois, num_classes = scores.shape
        if outputs.roi_box_reg.shape != (num_images, num_rois, num_classes, 4):
            raise ValueError(
                "postprocess expects TwoStageOutput.roi_box_reg [B, R, K, 4] = "
                f"{[num_images, num_rois, num_classes, 4]} (K from roi_cls_logits {list(logits.shape)}, "
                f"softmax={self.softmax}); got {list(outputs.roi_box_reg.shape)}"
            )
        boxes = self.box_coder.decode(outputs.roi_box_reg, outputs.proposals[:, :, None])  # [B, R, K, 4]
        boxes = clip_to_images(boxes, batch.image_sizes)
        non_empty = ((boxes[..., 2:] - boxes[..., :2]) >= self.min_size).all(dim=-1)  # [B, R, K]
        candidate = (scores > self.score_thresh) & non_empty & outputs.proposal_valid[..., None]
        labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
        return select_detections(
            boxes.flatten(1, 2), scores.flatten(1), labels.flatten(1), candidate.flatten(1), batch, num_classes,
            self.nms_iou, self.max_per_image,
        )
