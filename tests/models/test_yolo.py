"""YOLOv3: anchors, neck and head layout, post-processing with objectness, and the whole detector composed from
the real configs (forward, training steps, rejected combinations). Its box coder is tested in test_box_coder.py,
its assigner in test_assigners.py, on the tiny grid of tests.models.conftest.

The references are independent of the batched code: per-image loops over gts and levels, torchvision's
batched_nms, and the size of darknet's released yolov3.weights.
"""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from detlab.config import ConfigError, validate
from detlab.losses.bce import BinaryCrossEntropy
from detlab.losses.focal import SigmoidFocalLoss
from detlab.models.backbones.darknet import DarkNet
from detlab.models.box_coder import YoloBoxCoder
from detlab.models.heads.yolo import YoloHead
from detlab.models.necks.yolo import YoloNeck
from detlab.models.postprocess import DensePostProcess
from detlab.models.priors import YoloAnchorGenerator
from detlab.profile.cost import count_flops
from detlab.structures import Batch, HeadOutput
from tests.conftest import make_batch
from tests.models.conftest import (
    ANCHORS, GRIDS, LEVEL_STARTS, NUM_PRIORS, STRIDES, cxcywh, darknet_decode, prior_cells, tiny_priors,
)

CONF = Path(__file__).resolve().parents[2] / "conf"

# ---------------------------------------------------------------------------------------------------- anchors


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
    # Pairs without their level, or bare numbers: the same message, not Python's "'int' object is not iterable"
    for anchors in ([[10, 13], [16, 30], [33, 23]], [10, 13], [["w", "h"]]):
        with pytest.raises(ConfigError, match=r"model.priors.anchors=.* must be, per level, a non-empty list"):
            YoloAnchorGenerator(anchors, image_size=64)
    with pytest.raises(ConfigError, match=r"^model.priors.anchors=\[\[10, 13\], \[16, 30\]\] must be"):
        validate(compose_yolo(["model.priors.anchors=[[10,13],[16,30]]"]))  # what detlab-train prints
    with pytest.raises(ValueError, match="model.priors.image_size"):
        YoloAnchorGenerator(ANCHORS, image_size=0)
    with pytest.raises(ValueError, match="model.priors.anchors has 3 levels"):
        YoloAnchorGenerator(ANCHORS, image_size=64)(GRIDS[:2], STRIDES[:2], "cpu")


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
    batch = make_batch(num_images=num_images)
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
    batch = make_batch(num_images=1)
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
    batch = make_batch(gt, torch.tensor([[0, 2, 0], [1, 0, 2]]), valid, size=size)
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


def test_default_loss_is_the_papers_binary_ce_and_the_command_line_replaces_it():
    """YOLOv3 (section 2.2): logistic objectness and independent logistic classes with binary CE; the paper found
    the focal loss cost it about 2 mAP (section 5). detector_comparison trains every model with its own loss."""
    for overrides, expected in (([], BinaryCrossEntropy), (["loss=focal"], SigmoidFocalLoss)):
        cfg = compose_yolo(["model/backbone=darknet_tiny", *overrides])
        validate(cfg)
        assert type(instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3).criterion.cls_loss) is expected
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=detector_comparison", "model=yolov3"])
    assert cfg.loss._target_ == "detlab.losses.bce.BinaryCrossEntropy"


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
