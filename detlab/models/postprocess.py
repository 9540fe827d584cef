"""From dense head outputs to detections in original image pixels, for the whole batch at once.

Score, threshold and top-k (per level or per class), decode, clip to the image content, class-aware NMS over the
batch in one call, the best ``max_per_image`` per image, back to original pixels; only then split per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from detlab.errors import ConfigError, check_positive
from detlab.structures import Batch, BoxCoder, Detections, HeadOutput, Priors, boxes_to_original


def check_thresholds(key: str, nms_iou: float, score_thresh: float | None = None) -> None:
    """NMS at an IoU in (0, 1] (1: none suppressed) and a score threshold in [0, 1): outside, a value changes
    nothing without a word (an IoU above 1 suppresses no box, a negative threshold keeps every score)."""
    if not 0 < nms_iou <= 1:
        raise ConfigError(f"{key}.nms_iou={nms_iou} must be in (0, 1]: boxes overlapping more are suppressed (1: none)")
    if score_thresh is not None and not 0 <= score_thresh < 1:
        raise ConfigError(f"{key}.score_thresh={score_thresh} must be in [0, 1): a probability below which "
                          "detections are dropped")


class DensePostProcess(nn.Module):
    """Dense detectors' inference (RetinaNet, SSD, YOLO): the top-k best (prior, class) pairs above
    ``score_thresh``, class-aware NMS at ``nms_iou``, then the ``max_per_image`` best.

    box_coder: the coder shared with the loss (any detlab.structures.BoxCoder: it gets each prior's stride).
    topk_per_level: per pyramid level, the k best (prior, class) pairs of all classes together (RetinaNet's and
             YOLO's, as torchvision's and detectron2's RetinaNet).
    topk_per_class: per class, the k best priors over all levels (SSD's: the paper's caffe DetectionOutput with
             top_k 400, and torchvision's SSD postprocess_detections with topk_candidates 400). Exactly one of
             the two is set; the other is null.
    softmax: scores are a softmax over C = K + 1 outputs whose column 0 is background (softmax losses);
             otherwise a sigmoid per class over C = K outputs.
    With an objectness output (YOLO), a score is sigmoid(objectness) x the class probability.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        topk_per_level: int | None = 1000,
        topk_per_class: int | None = None,
        nms_iou: float = 0.5,
        max_per_image: int = 100,
        softmax: bool = False,
    ):
        super().__init__()
        if (topk_per_level is None) == (topk_per_class is None):
            raise ConfigError(
                f"postprocess.topk_per_level={topk_per_level} and postprocess.topk_per_class={topk_per_class}: set "
                "exactly one of them (per level: RetinaNet's, YOLO's; per class: SSD's) and the other to null"
            )
        key, topk = ("topk_per_level", topk_per_level) if topk_per_class is None else ("topk_per_class", topk_per_class)
        check_positive("model.postprocess", **{key: topk}, max_per_image=max_per_image)
        check_thresholds("model.postprocess", nms_iou, score_thresh)
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.topk_per_level = topk_per_level
        self.topk_per_class = topk_per_class
        self.nms_iou = nms_iou
        self.max_per_image = max_per_image
        self.softmax = softmax

    @torch.no_grad()
    def forward(self, outputs: HeadOutput, priors: Priors, batch: Batch) -> list[Detections]:
        """One ``Detections`` per image: boxes [N, 4] xyxy in original pixels, scores [N], labels [N] (0..K-1),
        sorted by decreasing score."""
        _check_inputs(outputs, priors)
        # The sigmoid is increasing: the top-k logits are the top-k scores, and only those k need the sigmoid
        # (a sigmoid of all B x A x K logits was a third of RetinaNet's post-processing on the CPU). A softmax
        # or an objectness factor needs every output first.
        ranked = outputs.cls_logits if not self.softmax and outputs.objectness is None else self._scores(outputs)
        if self.topk_per_class is None:
            scores, prior_index, labels = top_k_per_level(ranked, priors.level_sizes, self.topk_per_level)
        else:
            scores, prior_index, labels = top_k_per_class(ranked, self.topk_per_class)
        if ranked is outputs.cls_logits:
            scores = scores.float().sigmoid()
        boxes = decode_at(self.box_coder, outputs.box_reg, priors, prior_index, batch.image_sizes)  # [B, T, 4]
        # Thresholding after the top-k keeps what thresholding first would: the best k of those above it.
        candidate = scores > self.score_thresh  # [B, T]
        num_classes = ranked.shape[-1]
        return select_detections(boxes, scores, labels, candidate, batch, num_classes, self.nms_iou, self.max_per_image)

    def _scores(self, outputs: HeadOutput) -> Tensor:
        """Class probabilities [B, A, K]."""
        scores = class_probabilities(outputs.cls_logits, self.softmax)  # [B, A, K]
        if outputs.objectness is not None:  # YOLO: class probabilities are conditional on an object
            scores = scores * outputs.objectness.float().sigmoid()[..., None]
        return scores


def class_probabilities(cls_logits: Tensor, softmax: bool) -> Tensor:
    """Per-class probabilities [..., K] in float32 of logits [..., C]: a softmax over C = K + 1 outputs without its
    background column 0 (softmax losses), else a sigmoid per class (C = K). The loss decides which."""
    logits = cls_logits.float()
    return logits.softmax(dim=-1)[..., 1:] if softmax else logits.sigmoid()


def top_k_per_level(scores: Tensor, level_sizes: Sequence[int], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, prior indices and labels [B, T] of each level's k best (prior, class) pairs of scores [B, A, K],
    T = the sum over levels of min(k, A_l * K); level by level in the priors' order."""
    num_images, _, num_classes = scores.shape
    top_scores, top_index, start = [], [], 0
    # A loop over the (few) pyramid levels, not over images: each level's top-k is one batched call.
    for size in level_sizes:
        level = scores[:, start : start + size].reshape(num_images, size * num_classes)
        values, index = level.topk(min(k, level.shape[1]), dim=1)
        top_scores.append(values)
        top_index.append(index + start * num_classes)
        start += size
    flat_index = torch.cat(top_index, dim=1)
    return torch.cat(top_scores, dim=1), flat_index // num_classes, flat_index % num_classes


def top_k_per_class(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, prior indices and labels [B, K * k'] of each class's k' = min(k, A) best priors of scores [B, A, K],
    class by class."""
    _, num_priors, num_classes = scores.shape
    top_scores, prior_index = scores.transpose(1, 2).topk(min(k, num_priors), dim=2)  # [B, K, k']
    labels = torch.arange(num_classes, device=scores.device)[None, :, None].expand_as(prior_index)
    return top_scores.flatten(1), prior_index.flatten(1), labels.flatten(1)


def decode_at(
    box_coder: BoxCoder, box_reg: Tensor, priors: Priors, prior_index: Tensor,
    image_sizes: Tensor,
) -> Tensor:
    """Boxes [B, T, 4] decoded from box_reg [B, A, 4] at prior_index [B, T], clipped to each image's content."""
    deltas = box_reg.gather(1, prior_index[..., None].expand(-1, -1, 4))
    boxes = box_coder.decode(deltas, priors.boxes[prior_index], priors.strides[prior_index])
    return clip_to_images(boxes, image_sizes)


def clip_to_images(boxes_xyxy: Tensor, image_sizes: Tensor) -> Tensor:
    """Boxes [B, ..., 4] clipped to each image's content (h, w) [B, 2] (in input pixels)."""
    height, width = image_sizes.to(boxes_xyxy).unbind(-1)  # [B] each
    upper = torch.stack((width, height, width, height), dim=-1)  # [B, 4]
    upper = upper.view(len(boxes_xyxy), *[1] * (boxes_xyxy.dim() - 2), 4)
    return torch.minimum(boxes_xyxy.clamp(min=0), upper)


def select_detections(
    boxes: Tensor, scores: Tensor, labels: Tensor, candidate: Tensor, batch: Batch, num_classes: int,
    nms_iou: float, max_per_image: int,
) -> list[Detections]:
    """Class-aware NMS over the candidates of the whole batch in one call, the ``max_per_image`` best per image,
    back to original pixels, then split per image.

    boxes [B, T, 4] xyxy input pixels, scores, labels (0..K-1) and candidate (bool) [B, T]; num_classes K.
    """
    image_index = torch.arange(len(scores), device=scores.device)[:, None].expand_as(scores)[candidate]
    boxes, scores, labels = boxes[candidate], scores[candidate], labels[candidate]
    keep, counts = nms_top_k_per_image(
        boxes, scores, image_index * num_classes + labels, image_index, len(batch), nms_iou, max_per_image
    )
    image_index = image_index[keep]
    boxes = boxes_to_original(boxes[keep][:, None], batch.scales[image_index], batch.offsets[image_index])[:, 0]
    counts = counts.tolist()
    return [
        Detections(boxes=image_boxes, scores=image_scores, labels=image_labels)
        for image_boxes, image_scores, image_labels in zip(
            boxes.split(counts), scores[keep].split(counts), labels[keep].split(counts)
        )
    ]


def nms_top_k_per_image(
    boxes: Tensor, scores: Tensor, groups: Tensor, image_index: Tensor, num_images: int, iou_threshold: float,
    k: int,
) -> tuple[Tensor, Tensor]:
    """NMS within each group, then the k best per image: indices [N'] into boxes [N, 4] / scores [N], grouped
    by image (0 first) and by decreasing score inside each, and the count kept per image [num_images].

    groups [N]: NMS compares boxes of one group only (image, or image * K + label); image_index [N].
    """
    keep = _class_aware_nms(boxes, scores, groups, iou_threshold)
    # nms returns decreasing scores; a stable sort by image groups them and keeps that order inside.
    keep = keep[torch.sort(image_index[keep], stable=True).indices]
    counts = torch.bincount(image_index[keep], minlength=num_images)  # [B]
    rank = torch.arange(len(keep), device=keep.device) - (counts.cumsum(0) - counts)[image_index[keep]]
    return keep[rank < k], counts.clamp(max=k)


def _class_aware_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by NMS within each group [N] (image * C + label), by decreasing score.

    On a GPU, torchvision's batched_nms: one NMS call with every group shifted to its own region while the
    boxes are few, one call per group beyond (float64 boxes, so that the shift keeps sub-pixel precision over
    many groups). On the CPU, one call per group on contiguous slices of the boxes sorted by group: NMS compares
    every pair it is given, so many small calls beat one large one, and batched_nms's own per-group loop scans
    all N boxes for each group (RetinaNet at 512 px, batch 8: 640 groups of 40,000 candidates, whose scans
    took 280 ms of the post-processing's 1,670 ms in one profile). Sorted slices need no float64 either.
    """
    if boxes.device.type != "cpu":
        return batched_nms(boxes.double(), scores.double(), groups, iou_threshold)
    order = groups.argsort(stable=True)
    sizes = torch.bincount(groups).tolist()
    kept, start = [], 0
    for size in sizes:  # one NMS per (image, class) group: see above
        if size:
            group = order[start : start + size]
            kept.append(group[nms(boxes[group], scores[group], iou_threshold)])
            start += size
    if not kept:
        return order
    keep = torch.cat(kept).sort().values  # by index, then by decreasing score: batched_nms's order
    return keep[scores[keep].argsort(descending=True, stable=True)]


def _check_inputs(outputs: HeadOutput, priors: Priors) -> None:
    """Shapes the post-processing relies on, checked up front so that a mismatch names the field."""
    num_priors = outputs.cls_logits.shape[1] if outputs.cls_logits.dim() == 3 else -1
    if num_priors != len(priors) or tuple(outputs.box_reg.shape) != (outputs.cls_logits.shape[0], num_priors, 4):
        raise ValueError(
            f"postprocess expects HeadOutput.cls_logits [B, A, C] and box_reg [B, A, 4] with A = len(priors) = "
            f"{len(priors)}; got {list(outputs.cls_logits.shape)} and {list(outputs.box_reg.shape)}"
        )
    if outputs.objectness is not None and tuple(outputs.objectness.shape) != tuple(outputs.cls_logits.shape[:2]):
        raise ValueError(
            f"postprocess expects HeadOutput.objectness [B, A] = {list(outputs.cls_logits.shape[:2])}, "
            f"got {list(outputs.objectness.shape)}"
        )
    if sum(priors.level_sizes) != len(priors):
        raise ValueError(f"Priors.level_sizes {priors.level_sizes} must sum to the number of priors {len(priors)}")
