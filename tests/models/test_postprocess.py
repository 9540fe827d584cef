"""DensePostProcess against a straightforward per-image reference built from torchvision ops, and its per-class
top-k against torchvision's SSD post-processing itself."""

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms, clip_boxes_to_image

from detlab.errors import ConfigError
from detlab.models.box_coder import DeltaXYWHBoxCoder
from detlab.models.postprocess import DensePostProcess
from detlab.models.two_stage import ProposalGenerator, RoIPostProcess
from detlab.structures import HeadOutput, Priors
from tests.conftest import make_batch

LEVEL_SIZES = (96, 24, 6)


def make_case(num_classes: int, seed: int = 0, num_images: int = 3):
    g = torch.Generator().manual_seed(seed)
    num_priors = sum(LEVEL_SIZES)
    xy = torch.rand(num_priors, 2, generator=g) * 60
    prior_boxes = torch.cat([xy, xy + torch.rand(num_priors, 2, generator=g) * 30 + 4], dim=1)
    priors = Priors(prior_boxes, torch.full((num_priors,), 8), LEVEL_SIZES)
    outputs = HeadOutput(
        cls_logits=torch.randn(num_images, num_priors, num_classes, generator=g) * 2 - 1,
        box_reg=torch.randn(num_images, num_priors, 4, generator=g) * 0.2,
    )
    batch = make_batch(
        num_images=num_images, size=80,
        image_sizes=torch.tensor([[80, 80], [60, 70], [50, 80]])[:num_images],  # (h, w): clipping matters
        orig_sizes=torch.full((num_images, 2), 160),
        scales=torch.rand(num_images, 2, generator=g) + 0.5,
        offsets=torch.rand(num_images, 2, generator=g) * 4,
    )
    return outputs, priors, batch


def reference(outputs, priors, batch, thresh, topk, nms_iou, max_det, softmax):
    """torchvision RetinaNet's postprocess_detections, one image at a time."""
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    results = []
    for i in range(len(batch)):
        logits = outputs.cls_logits[i]
        scores_all = logits.softmax(-1)[:, 1:] if softmax else logits.sigmoid()
        num_classes = scores_all.shape[1]
        boxes, scores, labels, start = [], [], [], 0
        for size in priors.level_sizes:
            level_scores = scores_all[start : start + size].flatten()
            keep = torch.where(level_scores > thresh)[0]
            values, order = level_scores[keep].topk(min(topk, len(keep)))
            index = keep[order]
            prior_index = index // num_classes + start
            decoded = coder.decode_single(outputs.box_reg[i, prior_index], priors.boxes[prior_index])
            boxes.append(clip_boxes_to_image(decoded, tuple(batch.image_sizes[i].tolist())))
            scores.append(values)
            labels.append(index % num_classes)
            start += size
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_det]
        offset, scale = batch.offsets[i].repeat(2), batch.scales[i].repeat(2)
        results.append(((boxes[keep] - offset) / scale, scores[keep], labels[keep]))
    return results


@pytest.mark.parametrize("softmax", [False, True])
def test_matches_per_image_reference(softmax):
    outputs, priors, batch = make_case(num_classes=4 if softmax else 3, seed=int(softmax))
    settings = dict(thresh=0.3 if softmax else 0.4, topk=30, nms_iou=0.5, max_det=12, softmax=softmax)
    post = DensePostProcess(
        DeltaXYWHBoxCoder(),
        score_thresh=settings["thresh"],
        topk_per_level=settings["topk"],
        nms_iou=settings["nms_iou"],
        max_per_image=settings["max_det"],
        softmax=softmax,
    )
    detections = post(outputs, priors, batch)
    expected = reference(outputs, priors, batch, **settings)
    assert len(detections) == len(batch)
    for i, (det, (boxes, scores, labels)) in enumerate(zip(detections, expected)):
        torch.testing.assert_close(det.boxes, boxes, msg=f"image {i}")
        torch.testing.assert_close(det.scores, scores, msg=f"image {i}")
        assert torch.equal(det.labels, labels), f"image {i}"
    counts = [len(d.scores) for d in detections]
    assert max(counts) == settings["max_det"] and min(counts) > 0  # the cap and the NMS both did something


def test_images_never_suppress_each_other():
    outputs, priors, batch = make_case(num_classes=3, seed=2, num_images=2)
    outputs.cls_logits[1] = outputs.cls_logits[0]
    outputs.box_reg[1] = outputs.box_reg[0]
    batch.image_sizes[1], batch.scales[1], batch.offsets[1] = batch.image_sizes[0], batch.scales[0], batch.offsets[0]
    first, second = DensePostProcess(DeltaXYWHBoxCoder(), max_per_image=1000)(outputs, priors, batch)
    assert len(first.scores) > 5
    torch.testing.assert_close(first.boxes, second.boxes)
    torch.testing.assert_close(first.scores, second.scores)


def test_image_with_nothing_above_threshold():
    outputs, priors, batch = make_case(num_classes=3, seed=3)
    outputs.cls_logits[1] = -10.0  # sigmoid(-10) = 4.5e-5 < 0.05
    detections = DensePostProcess(DeltaXYWHBoxCoder())(outputs, priors, batch)
    empty = detections[1]
    assert empty.boxes.shape == (0, 4) and empty.boxes.dtype == torch.float32
    assert empty.scores.shape == (0,) and empty.scores.dtype == torch.float32
    assert empty.labels.shape == (0,) and empty.labels.dtype == torch.int64
    assert len(detections[0].scores) > 0 and len(detections[2].scores) > 0
    outputs.cls_logits[:] = -10.0  # and a whole batch with nothing
    detections = DensePostProcess(DeltaXYWHBoxCoder())(outputs, priors, batch)
    assert all(len(d.scores) == 0 and d.boxes.shape == (0, 4) for d in detections)


def test_mismatched_priors_name_the_field():
    outputs, priors, batch = make_case(num_classes=3)
    short = Priors(priors.boxes[:-1], priors.strides[:-1], (95, 24, 6))
    with pytest.raises(ValueError, match="len\\(priors\\)"):
        DensePostProcess(DeltaXYWHBoxCoder())(outputs, short, batch)
    wrong_levels = Priors(priors.boxes, priors.strides, (96, 24))
    with pytest.raises(ValueError, match="level_sizes"):
        DensePostProcess(DeltaXYWHBoxCoder())(outputs, wrong_levels, batch)


def test_top_k_per_class_is_torchvisions_ssd_postprocess():
    outputs, priors, batch = make_case(num_classes=5, seed=4)
    thresh, topk, nms_iou, max_det = 0.5, 20, 0.45, 64
    post = DensePostProcess(
        DeltaXYWHBoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=thresh, topk_per_level=None, topk_per_class=topk,
        nms_iou=nms_iou, max_per_image=max_det, softmax=True,
    )
    detections = post(outputs, priors, batch)
    # torchvision's SSD.postprocess_detections, one image and one class at a time, on a stand-in for its model
    ssd = SimpleNamespace(box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=thresh, topk_candidates=topk,
                          nms_thresh=nms_iou, detections_per_img=max_det)
    head = {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.box_reg}
    expected = SSD.postprocess_detections(ssd, head, [priors.boxes] * len(batch), batch.image_sizes.tolist())
    above = (outputs.cls_logits.softmax(-1)[..., 1:] > thresh).sum(dim=1)  # [B, K] boxes above it per class
    assert (above > topk).any() and (above < topk).any()  # the top-k limits some classes, the threshold others
    for i, (det, tv) in enumerate(zip(detections, expected)):
        offset, scale = batch.offsets[i].repeat(2), batch.scales[i].repeat(2)
        torch.testing.assert_close(det.boxes, (tv["boxes"] - offset) / scale, msg=f"image {i}")
        torch.testing.assert_close(det.scores, tv["scores"], msg=f"image {i}")
        assert torch.equal(det.labels + 1, tv["labels"]), f"image {i}"  # torchvision's labels count the background
    # 68, 65 and 70 candidates: the cap binds on images 0 and 2, NMS leaves 61 on image 1
    assert above.clamp(max=topk).sum(dim=1).tolist() == [68, 65, 70]
    assert [len(d.scores) for d in detections] == [64, 61, 64]


@pytest.mark.parametrize("per_level, per_class", [(None, None), (100, 400)])
def test_exactly_one_top_k_is_set(per_level, per_class):
    with pytest.raises(ValueError, match="postprocess.topk_per_level=.* and postprocess.topk_per_class=.*exactly one"):
        DensePostProcess(DeltaXYWHBoxCoder(), topk_per_level=per_level, topk_per_class=per_class)
    with pytest.raises(ValueError, match=r"model\.postprocess\.topk_per_class=0 must be a positive integer"):
        DensePostProcess(DeltaXYWHBoxCoder(), topk_per_level=None, topk_per_class=0)


@pytest.mark.parametrize("build", [
    lambda **kw: DensePostProcess(DeltaXYWHBoxCoder(), **kw),
    lambda **kw: RoIPostProcess(DeltaXYWHBoxCoder(), **kw),
    lambda **kw: ProposalGenerator(DeltaXYWHBoxCoder(), **kw),
])
def test_thresholds_that_change_nothing_are_refused(build):
    """An NMS IoU above 1 suppressed no box and a negative score threshold kept every score, both without a word."""
    with pytest.raises(ConfigError, match=r"\.nms_iou=2 must be in \(0, 1\]"):
        build(nms_iou=2)
    with pytest.raises(ConfigError, match=r"\.nms_iou=0 must be in \(0, 1\]"):
        build(nms_iou=0)
    build(nms_iou=1.0)  # 1: no box suppressed, a valid choice


@pytest.mark.parametrize("cls", [DensePostProcess, RoIPostProcess])
def test_a_score_threshold_outside_0_1_is_refused(cls):
    for value in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=rf"model.postprocess.score_thresh={value} must be in \[0, 1\)"):
            cls(DeltaXYWHBoxCoder(), score_thresh=value)
