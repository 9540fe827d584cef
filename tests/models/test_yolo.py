"""YOLOv3: anchors, box coding, neck and head layout, best-shape assignment, post-processing with objectness,
and the whole detector composed from the real configs (forward, training steps, rejected combinations).

The references are independent of the batched code: darknet's own formulas written per box
(bx = (sigmoid(tx) + cx) * stride, bw = pw * exp(tw)), per-image loops over gts and levels, torchvision's
box_iou / batched_nms, and the size of darknet's released yolov3.weights.
"""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from detlab.config import ConfigError, validate
from detlab.models.assigners import YoloAssigner
from detlab.models.backbones.darknet import DarkNet
from detlab.models.box_coder import YoloBoxCoder
from detlab.models.heads.yolo import YoloHead
from detlab.models.necks.yolo import YoloNeck
from detlab.models.postprocess import DensePostProcess
from detlab.models.priors import YoloAnchorGenerator
from detlab.profile import count_flops
from detlab.structures import Batch, HeadOutput

CONF = Path(__file__).resolve().parents[2] / "conf"

# A 64 px input with anchors given for it: levels of 8x8, 4x4 and 2x2 cells at strides 8, 16, 32.
ANCHORS = [[[4, 4], [8, 4], [4, 8]], [[12, 12], [20, 10], [10, 20]], [[32, 32], [48, 24], [24, 48]]]
STRIDES = (8, 16, 32)
GRIDS = ((8, 8), (4, 4), (2, 2))
LEVEL_STARTS = (0, 192, 240)  # 8 * 8 * 3, then + 4 * 4 * 3
NUM_PRIORS = 252


def tiny_priors():
    return YoloAnchorGenerator(ANCHORS, image_size=64, anchor_image_size=64)(GRIDS, STRIDES, "cpu")


def make_batch(gt_boxes: torch.Tensor, gt_valid: torch.Tensor, size: int = 64, labels=None) -> Batch:
    b, m = gt_valid.shape
    return Batch(
        images=torch.zeros(b, 3, size, size),
        gt_boxes=torch.where(gt_valid[..., None], gt_boxes, 0.0),
        gt_labels=torch.zeros(b, m, dtype=torch.int64) if labels is None else labels,
        gt_valid=gt_valid,
        image_sizes=torch.full((b, 2), size),
        image_ids=torch.arange(b),
        orig_sizes=torch.full((b, 2), size),
        scales=torch.ones(b, 2),
        offsets=torch.zeros(b, 2),
    )


def cxcywh(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def darknet_decode(box_reg: torch.Tensor, level: int, y: int, x: int, k: int) -> torch.Tensor:
    """darknet's get_yolo_box for one prediction: (sigmoid(t) + cell) * stride, anchor * exp(t)."""
    stride, (pw, ph) = STRIDES[level], ANCHORS[level][k]
    bx = (torch.sigmoid(box_reg[0]) + x) * stride
    by = (torch.sigmoid(box_reg[1]) + y) * stride
    bw, bh = pw * torch.exp(box_reg[2]), ph * torch.exp(box_reg[3])
    return torch.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2])


def prior_cells():
    """(level, y, x, k) of every prior, in the order the heads flatten their outputs."""
    return [
        (level, y, x, k)
        for level, (h, w) in enumerate(GRIDS)
        for y in range(h)
        for x in range(w)
        for k in range(len(ANCHORS[level]))
    ]


# ---------------------------------------------------------------------------------------------- anchors, coder


def test_anchor_boxes_by_hand():
    gen = YoloAnchorGenerator([[[8, 16]], [[32, 32], [64, 16]]], image_size=64, anchor_image_size=128)
    priors = gen([(2, 3), (1, 2)], (8, 16), "cpu")  # anchors halved: (4, 8); (16, 16), (32, 8)
    expected = [cxcywh(cx, cy, 4, 8) for cy in (4, 12) for cx in (4, 12, 20)]
    expected += [cxcywh(cx, 8, w, h) for cx in (8, 24) for w, h in ((16, 16), (32, 8))]
    torch.testing.assert_close(priors.boxes, torch.tensor(expected))
    assert priors.strides.tolist() == [8.0] * 6 + [16.0] * 4
    assert priors.level_sizes == (6, 4) and gen.num_per_location == [1, 2]
    assert gen([(2, 3), (1, 2)], (8, 16), "cpu") is priors  # cached per geometry


def test_default_anchors_are_the_papers_at_416_px():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=yolov3", "data.image_size=416"])
    gen = instantiate(cfg.model.priors)
    paper = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
    assert [wh for level in gen.anchors for wh in level] == [(float(w), float(h)) for w, h in paper]
    priors = gen([(52, 52), (26, 26), (13, 13)], STRIDES, "cpu")
    assert len(priors) == 3 * (52 * 52 + 26 * 26 + 13 * 13) == 10647  # the paper's number of predictions


def test_bad_anchors_name_the_key():
    with pytest.raises(ValueError, match="model.priors.anchors"):
        YoloAnchorGenerator([[[10, 13], [16]]], image_size=64)
    with pytest.raises(ValueError, match="model.priors.image_size"):
        YoloAnchorGenerator(ANCHORS, image_size=0)
    with pytest.raises(ValueError, match="model.priors.anchors has 3 levels"):
        YoloAnchorGenerator(ANCHORS, image_size=64)(GRIDS[:2], STRIDES[:2], "cpu")


def test_decode_is_darknets_formula_and_encode_inverts_it():
    priors = tiny_priors()
    box_reg = torch.randn(2, NUM_PRIORS, 4, generator=torch.Generator().manual_seed(0))
    coder = YoloBoxCoder()
    decoded = coder.decode(box_reg, priors.boxes, priors.strides)
    for a, cell in enumerate(prior_cells()):
        torch.testing.assert_close(decoded[1, a], darknet_decode(box_reg[1, a], *cell))
    torch.testing.assert_close(coder.encode(decoded, priors.boxes, priors.strides), box_reg, rtol=1e-4, atol=1e-4)
    bound = coder.at(priors.strides)
    torch.testing.assert_close(bound.decode(box_reg, priors.boxes), decoded)


def test_encode_a_centre_on_the_cell_edge_is_finite():
    priors = tiny_priors()
    gt = priors.boxes[:1] - torch.tensor([4.0, 0.0, 4.0, 0.0])  # centre on the cell's left edge
    target = YoloBoxCoder(eps=1e-3).encode(gt, priors.boxes[:1], priors.strides[:1])
    torch.testing.assert_close(target[0, 0], torch.logit(torch.tensor(1e-3)))


# ------------------------------------------------------------------------------------------------- neck, head


def test_yolov3_is_darknets_yolov3():
    """darknet's released yolov3.weights (80 classes) is 248,007,048 bytes: a 20-byte header, then float32
    conv weights, conv biases of the three predictors, BatchNorm scales, shifts, running means and variances.
    darknet (and the YOLOv3 page) gives 65.86 BFLOPs at 416 px, counting a multiply-add as 2 as torch does."""
    cfg = compose_yolo(["data.image_size=416"])
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=80).model
    stored = sum(p.numel() for p in model.parameters())
    stored += sum(b.numel() for name, b in model.named_buffers() if "running" in name)
    assert stored == (248_007_048 - 20) // 4
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 75  # yolov3.cfg's 75 convolutional layers
    assert model.neck.out_channels == (256, 512, 1024) and model.neck.strides == (8, 16, 32)
    assert round(count_flops(model, 416) / 1e9, 2) == 65.86


@pytest.mark.parametrize("h, w", [(64, 96), (65, 97)])
def test_neck_levels_follow_the_backbone(h, w):
    backbone = DarkNet(depths=(1, 1, 1, 1, 1), widths=(8, 8, 16, 32, 64, 128))
    neck = YoloNeck(backbone.out_channels, backbone.strides, widths=(8, 16, 24))
    levels = neck(backbone(torch.randn(2, 3, h, w)))
    assert [tuple(x.shape) for x in levels] == [
        (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip((16, 32, 48), STRIDES)
    ]


def test_head_layout_and_objectness_prior():
    head = YoloHead(in_channels=(4, 6, 8), num_anchors=[3, 3, 3], num_classes=2, prior_prob=0.01)
    for conv in head.predictors:
        nn.init.zeros_(conv.weight)
    bias = head.predictors[1].bias.detach()
    torch.testing.assert_close(torch.sigmoid(bias.view(3, 7)[:, 4]), torch.full((3,), 0.01))
    assert bias.view(3, 7)[:, [0, 1, 2, 3, 5, 6]].abs().sum() == 0
    with torch.no_grad():
        for conv in head.predictors:
            conv.bias.copy_(torch.arange(21.0))  # channel c of anchor k is k * 7 + c
    levels = [torch.randn(2, c, h, w) for c, (h, w) in zip((4, 6, 8), GRIDS)]
    out = head(levels)
    assert out.box_reg.shape == (2, NUM_PRIORS, 4) and out.objectness.shape == (2, NUM_PRIORS)
    assert out.cls_logits.shape == (2, NUM_PRIORS, 2)
    a = LEVEL_STARTS[1] + (2 * 4 + 3) * 3 + 2  # level 1, y 2, x 3, anchor 2
    assert out.box_reg[1, a].tolist() == [14.0, 15.0, 16.0, 17.0]
    assert out.objectness[1, a] == 18.0 and out.cls_logits[1, a].tolist() == [19.0, 20.0]


def test_head_refuses_softmax_outputs():
    with pytest.raises(ValueError, match="loss=focal or loss=bce"):
        YoloHead(in_channels=(4, 6, 8), num_anchors=3, num_classes=4, background_first=True)


# ------------------------------------------------------------------------------------------------- assignment


def assign(assigner, batch, box_reg=None):
    priors = tiny_priors()
    b = len(batch)
    box_reg = torch.zeros(b, NUM_PRIORS, 4) if box_reg is None else box_reg
    outputs = HeadOutput(torch.zeros(b, NUM_PRIORS, 1), box_reg, torch.zeros(b, NUM_PRIORS))
    return assigner(outputs, priors, batch)


def prior_index(level, y, x, k):
    return LEVEL_STARTS[level] + (y * GRIDS[level][1] + x) * 3 + k


def test_assignment_on_hand_made_boxes():
    gt = torch.tensor(
        [
            [
                cxcywh(13, 21, 8, 4),  # anchor (8, 4) of level 0, cell x 1, y 2
                cxcywh(32, 24, 22, 10),  # anchor (20, 10) of level 1; x = 32 is a cell edge: cell 2, not 1
                cxcywh(50, 14, 30, 30),  # anchor (32, 32) of level 2, cell x 1, y 0
                cxcywh(4, 4, 4, 4),  # padding, exactly on prior 0
            ]
        ]
    )
    matched = assign(YoloAssigner(ignore_iou=None), make_batch(gt, torch.tensor([[True, True, True, False]])))
    expected = torch.full((1, NUM_PRIORS), -1)
    expected[0, prior_index(0, 2, 1, 1)] = 0
    expected[0, prior_index(1, 1, 2, 1)] = 1
    expected[0, prior_index(2, 0, 1, 0)] = 2
    assert matched.dtype == torch.int64 and torch.equal(matched, expected)


def test_two_gts_on_one_prior_the_better_shape_wins():
    gt = torch.tensor(
        [
            [cxcywh(12, 20, 7, 4), cxcywh(13, 21, 8, 4)],  # both: anchor (8, 4), cell (1, 2); IoU 0.875 and 1
            [cxcywh(13, 21, 8, 4), cxcywh(13, 21, 8, 4)],  # a tie: the lower index
        ]
    )
    matched = assign(YoloAssigner(ignore_iou=None), make_batch(gt, torch.ones(2, 2, dtype=torch.bool)))
    a = prior_index(0, 2, 1, 1)
    assert matched[0, a] == 1 and matched[1, a] == 0
    assert (matched >= 0).sum() == 2  # the losing gt is learnt by no other prior


def reference_assignment(gt, valid, box_reg, ignore_iou):
    """The paper's rule one gt at a time: the best of the 9 anchor shapes, then its level's centre cell;
    then darknet's ignore rule against the predictions decoded one box at a time."""
    cells = prior_cells()
    matched = torch.full((len(gt), NUM_PRIORS), -1)
    for i in range(len(gt)):
        index = valid[i].nonzero()[:, 0].tolist()
        if ignore_iou is not None and index:
            predicted = torch.stack([darknet_decode(box_reg[i, a], *cell) for a, cell in enumerate(cells)])
            overlaps = box_iou(gt[i, index], predicted).max(dim=0).values > ignore_iou
            matched[i, overlaps] = -2
        best = {}
        for m in index:
            x1, y1, x2, y2 = gt[i, m].tolist()
            w, h = x2 - x1, y2 - y1
            shapes = [(level, k, wh) for level in range(3) for k, wh in enumerate(ANCHORS[level])]
            ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for _, _, (aw, ah) in shapes]
            level, k, _ = shapes[max(range(9), key=lambda j: ious[j])]
            cx, cy = int((x1 + x2) / 2 // STRIDES[level]), int((y1 + y2) / 2 // STRIDES[level])
            a = prior_index(level, cy, cx, k)
            if a not in best or max(ious) > best[a][1]:
                best[a] = (m, max(ious))
        for a, (m, _) in best.items():
            matched[i, a] = m
    return matched


@pytest.mark.parametrize("ignore_iou", [None, 0.3])
def test_batched_assignment_equals_per_gt_reference(ignore_iou):
    g = torch.Generator().manual_seed(1)
    num_images, max_gt = 4, 6
    centres = torch.rand(num_images, max_gt, 2, generator=g) * 63
    sizes = torch.rand(num_images, max_gt, 2, generator=g) * 44 + 3
    gt = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
    valid = torch.rand(num_images, max_gt, generator=g) < 0.7
    valid[0] = False  # an image without objects
    box_reg = torch.randn(num_images, NUM_PRIORS, 4, generator=g) * 0.5
    batch = make_batch(gt, valid)
    matched = assign(YoloAssigner(ignore_iou=ignore_iou, box_coder=YoloBoxCoder()), batch, box_reg)
    expected = reference_assignment(batch.gt_boxes, valid, box_reg, ignore_iou)
    assert torch.equal(matched, expected)
    assert ((matched >= 0).sum(dim=1) <= valid.sum(dim=1)).all()  # at most one prior per gt
    assert (matched >= 0).sum() >= 8 and (ignore_iou is None or (matched == -2).sum() >= 8)
    assert (matched[0] == -1).all()


def test_bad_assigner_settings_name_the_key():
    with pytest.raises(ValueError, match="assigner.ignore_iou"):
        YoloAssigner(ignore_iou=1.5, box_coder=YoloBoxCoder())
    with pytest.raises(ValueError, match="assigner.box_coder"):
        YoloAssigner(ignore_iou=0.5)


# ------------------------------------------------------------------------------------------- post-processing


def reference_postprocess(outputs, priors, batch, thresh, topk, nms_iou, max_det):
    """One image at a time: score = sigmoid(objectness) x sigmoid(class), per level threshold and top-k,
    darknet's decoding, clipping, torchvision's batched_nms, the best max_det, back to original pixels."""
    cells = prior_cells()
    results = []
    for i in range(len(batch)):
        scores_all = outputs.objectness[i].sigmoid()[:, None] * outputs.cls_logits[i].sigmoid()
        num_classes = scores_all.shape[1]
        boxes, scores, labels, start = [], [], [], 0
        for size in priors.level_sizes:
            level_scores = scores_all[start : start + size].flatten()
            keep = torch.where(level_scores > thresh)[0]
            values, order = level_scores[keep].topk(min(topk, len(keep)))
            index = keep[order]
            prior = (index // num_classes + start).tolist()
            decoded = torch.stack([darknet_decode(outputs.box_reg[i, a], *cells[a]) for a in prior]).reshape(-1, 4)
            boxes.append(clip_boxes_to_image(decoded, tuple(batch.image_sizes[i].tolist())))
            scores.append(values)
            labels.append(index % num_classes)
            start += size
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_det]
        offset, scale = batch.offsets[i].repeat(2), batch.scales[i].repeat(2)
        results.append(((boxes[keep] - offset) / scale, scores[keep], labels[keep]))
    return results


def test_postprocess_with_objectness_equals_per_image_reference():
    g = torch.Generator().manual_seed(2)
    priors, num_images = tiny_priors(), 3
    outputs = HeadOutput(
        cls_logits=torch.randn(num_images, NUM_PRIORS, 3, generator=g),
        box_reg=torch.randn(num_images, NUM_PRIORS, 4, generator=g) * 0.5,
        objectness=torch.randn(num_images, NUM_PRIORS, generator=g) * 2 - 1,
    )
    batch = make_batch(torch.zeros(num_images, 1, 4), torch.zeros(num_images, 1, dtype=torch.bool))
    batch.image_sizes = torch.tensor([[64, 64], [48, 60], [40, 64]])
    batch.scales = torch.rand(num_images, 2, generator=g) + 0.5
    batch.offsets = torch.rand(num_images, 2, generator=g) * 4
    settings = dict(thresh=0.2, topk=40, nms_iou=0.45, max_det=15)
    post = DensePostProcess(
        YoloBoxCoder(),
        score_thresh=settings["thresh"],
        topk_per_level=settings["topk"],
        nms_iou=settings["nms_iou"],
        max_per_image=settings["max_det"],
    )
    detections = post(outputs, priors, batch)
    expected = reference_postprocess(outputs, priors, batch, **settings)
    for i, (det, (boxes, scores, labels)) in enumerate(zip(detections, expected)):
        torch.testing.assert_close(det.boxes, boxes, msg=f"image {i}")
        torch.testing.assert_close(det.scores, scores, msg=f"image {i}")
        assert torch.equal(det.labels, labels), f"image {i}"
    counts = [len(d.scores) for d in detections]
    assert max(counts) == settings["max_det"] and min(counts) > 0
    # Objectness matters: without it the same logits give other detections.
    plain = post(HeadOutput(outputs.cls_logits, outputs.box_reg), priors, batch)
    assert [len(d.scores) for d in plain] != counts or not torch.equal(plain[0].scores, detections[0].scores)


def test_postprocess_objectness_of_the_wrong_shape_names_the_field():
    priors = tiny_priors()
    outputs = HeadOutput(torch.zeros(1, NUM_PRIORS, 3), torch.zeros(1, NUM_PRIORS, 4), torch.zeros(1, NUM_PRIORS - 1))
    batch = make_batch(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="objectness"):
        DensePostProcess(YoloBoxCoder())(outputs, priors, batch)


# ------------------------------------------------------------------------------- the detector from the configs


def compose_yolo(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["model=yolov3", *overrides])


def fixed_batch(size: int = 64) -> Batch:
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor(
        [
            [cxcywh(20, 20, 16, 12), cxcywh(44, 40, 24, 30), [0.0, 0.0, 0.0, 0.0]],
            [cxcywh(30, 34, 40, 36), cxcywh(10, 52, 8, 8), cxcywh(52, 12, 12, 20)],
        ]
    )
    valid = torch.tensor([[True, True, False], [True, True, True]])
    batch = make_batch(gt, valid, size=size, labels=torch.tensor([[0, 2, 0], [1, 0, 2]]))
    batch.images = torch.randn(2, 3, size, size, generator=g)
    return batch


@pytest.mark.parametrize("loss", ["focal", "bce"])
def test_training_steps_decrease_the_loss(loss, fits_fixed_batch):
    cfg = compose_yolo(["model/backbone=darknet_tiny", f"loss={loss}", "data.image_size=64"])
    validate(cfg)
    torch.manual_seed(0)
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)

    def check(outputs, priors, losses):
        assert set(losses) == {"obj", "cls", "box"} and all(torch.isfinite(v) for v in losses.values())

    fits_fixed_batch(parts, fixed_batch(), num_classes=3, steps=8, check=check)


def test_any_backbone_with_three_maps_composes():
    cfg = compose_yolo(["model/backbone=resnet18", "data.image_size=64"])
    validate(cfg)
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3).model
    outputs, priors = model(torch.randn(1, 3, 64, 64))
    assert len(priors) == 3 * (8 * 8 + 4 * 4 + 2 * 2) and outputs.cls_logits.shape == (1, len(priors), 3)
    assert model.neck.out_channels == (128, 256, 512)  # 2 x half of ResNet-18's C3..C5


@pytest.mark.parametrize("loss", ["ce", "ce_ohem", "softmax_focal"])
def test_softmax_losses_are_rejected_with_the_reason(loss):
    cfg = compose_yolo([f"loss={loss}"])
    with pytest.raises(ConfigError, match="objectness"):
        validate(cfg)


def test_impossible_yolo_combinations_name_the_key():
    with pytest.raises(ConfigError, match="model.head"):
        validate(compose_yolo(["model/head=retinanet"]))
    with pytest.raises(ConfigError, match="model.priors.anchors"):
        validate(compose_yolo(["model.backbone.out_indices=[4,5]"]))
    cfg = compose_yolo(["loss=ce"])
    with pytest.raises(InstantiationException, match="loss=focal or loss=bce"):  # if validate was skipped
        instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
