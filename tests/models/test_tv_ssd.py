"""model=tv_ssd300_vgg16 is torchvision 0.29.1's ssd300_vgg16: its settings, its state dict file loaded strictly
(detlab.models.torchvision_weights.load_weights, which recognises it and renames its keys), its default boxes bit
for bit, its detections in the 300 x 300 frame on the input that torchvision's own transform makes (a synthetic
pair), and detlab's whole inference (Predictor: stretch, normalisation, model, post-processing) against
torchvision's model.eval()(images) on three coco128 photos; the training loss (assignment, hard negative mining,
smooth L1) and its gradients against torchvision's compute_loss."""

import json
from contextlib import contextmanager

import pytest
import torch
from hydra.utils import instantiate
from torchvision.models.detection import retinanet_resnet50_fpn, ssd300_vgg16
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detlab.config import compose_train, validate
from detlab.data.coco.reader import read_rgb
from detlab.inference import Predictor
from detlab.models.torchvision_weights import load_state, load_weights
from detlab.structures import HeadOutput
from tests.conftest import make_batch

NUM_CLASSES = 90  # torchvision's 91 outputs = background + 90 (COCO's category ids 1..90, some unused)
PHOTOS = ("000000000009.jpg", "000000000036.jpg")  # 640 x 480 and 481 x 640


@pytest.fixture(scope="module")
def tv_ssd(tmp_path_factory):
    """torchvision's SSD300 (seeded random weights, class biases spread) in eval mode, and its state dict saved
    as torchvision's weights enum saves it."""
    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # Random heads put every class near 1 / 91, all on the 0.01 threshold, and their boxes rarely overlap.
        # Here the biases decide: the background at 4, torchvision's label 1 at 1 (above the threshold on
        # most of the 8732 boxes: the per-class top-400 acts), the others about -6 (a few boxes each), and
        # boxes twice their default box's size (NMS keeps about 100), so that the threshold matters too.
        for conv in tv.head.classification_head.module_list:
            bias = torch.randn(NUM_CLASSES + 1, generator=generator) - 6
            bias[:2] = torch.tensor([4.0, 1.0])
            conv.weight.mul_(0.2)
            conv.bias.copy_(bias.repeat(conv.out_channels // (NUM_CLASSES + 1)))
        for conv in tv.head.regression_head.module_list:
            conv.weight.mul_(0.3)
            conv.bias.view(-1, 4)[:, 2:] = 3.5  # exp(3.5 / 5) = 2 x the default box's width and height
    path = tmp_path_factory.mktemp("torchvision") / "ssd300_vgg16_coco.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.fixture(scope="module")
def models(tv_ssd):
    """torchvision's SSD300 and detlab's preset holding its weights, loaded from its file."""
    tv, path = tv_ssd
    cfg = compose_train(["model=tv_ssd300_vgg16"])
    validate(cfg)
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=NUM_CLASSES)
    load_weights(parts.model, path).eval()
    return tv, parts


def test_preset_has_torchvisions_settings(models):
    tv, (model, assigner, criterion, post) = models
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tv.parameters()) == 35_641_826
    generator, tv_boxes = model.priors, tv.anchor_generator
    assert [generator.scales, generator.steps, generator.clip] == [tuple(tv_boxes.scales), tuple(tv_boxes.steps), True]
    assert generator.aspect_ratios == tuple(tuple(r) for r in tv_boxes.aspect_ratios)
    assert generator.image_size == tv.transform.fixed_size[0] == tv.transform.fixed_size[1] == 300
    assert (post.score_thresh, post.topk_per_class, post.nms_iou, post.max_per_image, post.softmax) == (
        tv.score_thresh, tv.topk_candidates, tv.nms_thresh, tv.detections_per_img, True
    )
    assert post.topk_per_level is None and post.box_coder is criterion.box_coder
    assert post.box_coder.weights == tv.box_coder.weights and post.box_coder.clamp == tv.box_coder.bbox_xform_clip
    assert criterion.cls_loss.neg_pos_ratio == tv.neg_to_pos_ratio == 3
    assert assigner.pos_iou == assigner.neg_iou == tv.proposal_matcher.high_threshold == 0.5
    assert type(assigner).__name__ == "SSDAssigner" and not assigner.all_ties


@pytest.mark.realdata
def test_predictor_equals_torchvisions_model_on_coco_photos(tv_ssd, real_data, canonical):
    """detlab's whole inference (stretch to 300 x 300, torchvision's normalisation, model, post-processing, back to
    original pixels, labels 1..90) against torchvision's own model.eval()(images), on photos of three shapes."""
    tv, path = tv_ssd
    cfg = compose_train(["model=tv_ssd300_vgg16", f"model.weights={path}"])
    validate(cfg)
    predictor = Predictor.from_config(cfg, list(cfg.data.category_ids)).to("cpu")
    photos = [read_rgb(real_data / "coco128" / "train2017" / name) for name in (*PHOTOS, "000000000049.jpg")]
    images = [torch.from_numpy(p.copy()).permute(2, 0, 1).float().div(255) for p in photos]
    with torch.inference_mode():
        predictor.model.eval()
        batch, outputs, priors = predictor.forward(predictor.preprocess(photos))
        detections = predictor.detect((batch, outputs, priors))
        expected = tv(images)
        assert torch.equal(batch.images, tv.transform(images)[0].tensors)
    for i, (ours, theirs) in enumerate(zip(detections, expected)):
        labels = torch.tensor(predictor.category_ids)[ours.labels]
        boxes, scores, labels = canonical(ours.boxes, ours.scores, labels)
        tv_boxes, tv_scores, tv_labels = canonical(theirs["boxes"], theirs["scores"], theirs["labels"])
        assert len(scores) == len(tv_scores) > 0, f"image {i}"
        torch.testing.assert_close(boxes, tv_boxes, rtol=0, atol=1e-3, msg=f"image {i}")
        torch.testing.assert_close(scores, tv_scores, rtol=0, atol=1e-5, msg=f"image {i}")
        assert torch.equal(labels, tv_labels), f"image {i}"


def test_detections_equal_torchvision_on_synthetic_images(models, canonical):
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 240, 320, generator=generator), torch.rand(3, 330, 200, generator=generator)]
    assert_same_detections(*models, images, canonical)


def test_training_loss_and_gradients_equal_torchvisions_compute_loss(models):
    """Random head outputs over the 8732 default boxes and padded targets (3 objects, then 1): detlab's assigner
    and criterion against torchvision's SSDMatcher (IoU 0.5 plus each object's best box) and compute_loss (3:1
    mining per image, normalised by the batch's positives)."""
    tv, parts = models
    generator = torch.Generator().manual_seed(2)
    corner = torch.rand(2, 3, 2, generator=generator) * 200
    gt_boxes = torch.cat([corner, corner + 20 + torch.rand(2, 3, 2, generator=generator) * 80], dim=-1)
    gt_boxes[0, 2] = torch.tensor([10.0, 200.0, 16.0, 290.0])  # thin: no box reaches IoU 0.5, its best is forced
    gt_labels = torch.randint(0, NUM_CLASSES, (2, 3), generator=generator)
    gt_valid = torch.tensor([[True, True, True], [True, False, False]])
    batch = make_batch(gt_boxes, gt_labels, gt_valid, size=300)
    with torch.no_grad():
        _, priors = parts.model(batch.images[:1])
    num_priors = len(priors)
    cls_logits = (torch.randn(2, num_priors, NUM_CLASSES + 1, generator=generator) * 2).requires_grad_()
    box_reg = torch.randn(2, num_priors, 4, generator=generator).requires_grad_()

    outputs = HeadOutput(cls_logits=cls_logits, box_reg=box_reg)
    terms = parts.criterion(outputs, priors, parts.assigner(outputs, priors, batch), batch)
    ours = torch.autograd.grad(terms["cls"] + terms["box"], (cls_logits, box_reg))

    feature_maps = [torch.zeros(1, 1, n, n) for n in (38, 19, 10, 5, 3, 1)]
    anchors = tv.anchor_generator(ImageList(batch.images, [(300, 300)] * 2), feature_maps)
    targets = [{"boxes": boxes[valid], "labels": labels[valid] + 1}  # torchvision's label 0 is the background
               for boxes, labels, valid in zip(gt_boxes, gt_labels, gt_valid)]
    matched = [tv.proposal_matcher(box_iou(t["boxes"], a)) for t, a in zip(targets, anchors)]
    expected = tv.compute_loss(targets, {"cls_logits": cls_logits, "bbox_regression": box_reg}, anchors, matched)
    theirs = torch.autograd.grad(expected["classification"] + expected["bbox_regression"], (cls_logits, box_reg))

    assert float(terms["cls"].detach()) == pytest.approx(float(expected["classification"].detach()), rel=1e-6)
    assert float(terms["box"].detach()) == pytest.approx(float(expected["bbox_regression"].detach()), rel=1e-6)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    assert int((theirs[0].abs().sum(-1) > 0).sum()) == 4 * int(sum(m.ge(0).sum() for m in matched))  # 3:1 mined


@pytest.mark.realdata
def test_matching_of_coco128s_objects_equals_torchvisions_ssd_matcher(models, real_data):
    """The preset's assigner on the objects of coco128's photos, stretched to 300 x 300 as torchvision's
    transform stretches them, against torchvision's SSDMatcher image by image. Crowded photos have small objects
    whose best default box overlaps a neighbour more: that box is the small object's (torchvision, the paper),
    not the neighbour's."""
    tv, parts = models
    coco = json.loads((real_data / "coco128" / "annotations" / "instances_train2017.json").read_text())
    images = {image["id"]: image for image in coco["images"]}
    boxes = {i: [] for i in images}
    for ann in coco["annotations"]:
        if not ann["iscrowd"]:
            image, (x, y, w, h) = images[ann["image_id"]], ann["bbox"]
            sx, sy = 300 / image["width"], 300 / image["height"]
            boxes[ann["image_id"]].append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
    boxes = [torch.tensor(b) for b in boxes.values() if b][:32]  # 10 of them crowded enough to tell
    gt = torch.nn.utils.rnn.pad_sequence(boxes, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones(len(b), dtype=torch.bool) for b in boxes], batch_first=True)
    maps = [(n, n) for n in (38, 19, 10, 5, 3, 1)]
    priors = parts.model.priors(maps, parts.model.neck.strides, "cpu", (300, 300))
    matched = parts.assigner(None, priors, make_batch(gt, gt_valid=valid, size=300))
    for i, image_boxes in enumerate(boxes):
        assert torch.equal(matched[i], tv.proposal_matcher(box_iou(image_boxes, priors.boxes))), f"image {i}"
    assert int((matched >= 0).sum()) > 500


def assert_same_detections(tv, parts, images: list[torch.Tensor], canonical) -> None:
    """torchvision's backbone, head, default boxes and postprocess_detections against detlab's model and
    post-processing, on the [B, 3, 300, 300] tensor torchvision's transform makes of images [3, H, W] in 0..1."""
    with torch.no_grad():
        image_list, _ = tv.transform(images)
        x = image_list.tensors
        features = list(tv.backbone(x).values())
        head = tv.head(features)
        default_boxes = tv.anchor_generator(image_list, features)
        outputs, priors = parts.model(x)
        sizes = torch.tensor(image_list.image_sizes)
        batch = make_batch(images=x, image_sizes=sizes, orig_sizes=sizes)
    assert x.shape[-2:] == (300, 300)
    assert all(torch.equal(priors.boxes, boxes) for boxes in default_boxes)  # bit for bit
    torch.testing.assert_close(outputs.cls_logits, head["cls_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs.box_reg, head["bbox_regression"], rtol=0, atol=1e-4)
    counts = assert_same_postprocess(tv, parts, head, outputs, priors, batch, default_boxes, canonical)
    assert max(counts) < tv.detections_per_img
    # Each step of torchvision's post-processing changes its detections here, so the comparison covers it.
    for setting, off in (("score_thresh", 0.0), ("topk_candidates", 10**6), ("nms_thresh", 1.0)):
        with changed(tv, setting, off), torch.no_grad():
            without = tv.postprocess_detections(head, default_boxes, image_list.image_sizes)
        assert all(len(a["scores"]) != n for a, n in zip(without, counts)), setting
    # With the background 4 lower, thousands of boxes of many classes pass: the 200 per image bind.
    head["cls_logits"][..., 0] -= 4
    outputs.cls_logits[..., 0] -= 4
    assert assert_same_postprocess(tv, parts, head, outputs, priors, batch, default_boxes, canonical) == [200] * len(x)


def assert_same_postprocess(tv, parts, head, outputs, priors, batch, default_boxes, canonical) -> list[int]:
    """torchvision's postprocess_detections of its head outputs against detlab's of its own; the counts."""
    with torch.no_grad():
        expected = tv.postprocess_detections(head, default_boxes, batch.image_sizes.tolist())
        detections = parts.postprocess(outputs, priors, batch)
    for i, (ours, theirs) in enumerate(zip(detections, expected)):
        boxes, scores, labels = canonical(ours.boxes, ours.scores, ours.labels + 1)
        tv_boxes, tv_scores, tv_labels = canonical(theirs["boxes"], theirs["scores"], theirs["labels"])
        assert len(scores) == len(tv_scores) > 0, f"image {i}"
        torch.testing.assert_close(boxes, tv_boxes, rtol=0, atol=1e-3, msg=f"image {i}")
        torch.testing.assert_close(scores, tv_scores, rtol=0, atol=1e-5, msg=f"image {i}")
        assert torch.equal(labels, tv_labels), f"image {i}"
    return [len(d["scores"]) for d in expected]


@contextmanager
def changed(module, name: str, value):
    """module.name set to value inside the block."""
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


def test_a_wrong_state_dict_names_the_missing_and_unexpected_keys(models):
    tv, parts = models
    retinanet = retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    with pytest.raises(ValueError, match=r"torchvision's retinanet_resnet50_fpn, for model=tv_retinanet_r50_fpn\) does "
                                         r"not fit the configured model: 71 missing keys \['backbone.fc6.bias'.*, "
                                         r"\d+ unexpected keys \['backbone.bn1.bias'"):
        load_state(parts.model, retinanet, "a RetinaNet file")
    state = dict(tv.state_dict())
    state["head.extra.weight"] = state.pop("head.regression_head.module_list.5.bias")
    with pytest.raises(ValueError, match=r"\(torchvision's ssd300_vgg16, for model=tv_ssd300_vgg16\) does not fit the "
                                         r"configured model: 1 missing keys \['head.box_convs.5.bias'\], 1 unexpected "
                                         r"keys \['head.extra.weight'\]"):
        load_state(parts.model, state, "an SSD file")
