"""model=tv_fasterrcnn_r50_fpn is torchvision's fasterrcnn_resnet50_fpn: its state dict, converted by
detlab.models.torchvision_weights, loads strictly, and on the same input detlab's proposals and detections are
torchvision's.

The torchvision model is seeded and built as its published COCO model is (frozen BatchNorm, here holding the
statistics of the test batch and a spread affine part, so that a wrongly mapped buffer shows), with head weights
and biases spread so that the RPN's top-n and NMS, the score threshold, the class-aware NMS and the 100
detections cap all act. Two coco128 photographs of different aspect go through torchvision's own transform at
352 / 512 px (one batch of two sizes, padded to 480 x 480: not a multiple of 64, so that torchvision's P6 anchor
stride, 480 // 8 = 60 px, is not the nominal 64), then through both models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.transforms.functional import to_tensor
from torchvision.ops import FrozenBatchNorm2d

from detlab.config import compose_train, validate
from detlab.models import torchvision_weights
from tests.conftest import make_batch

PHOTOS = ("000000000009.jpg", "000000000036.jpg")  # 640 x 480 and 481 x 640


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm2d below module replaced by a FrozenBatchNorm2d with its statistics and a spread affine part
    (torchvision builds its published model with FrozenBatchNorm2d; weights=None gives BatchNorm2d)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features)
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            frozen.weight.uniform_(0.5, 1.5)
            frozen.bias.normal_(0.0, 0.1)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


@pytest.fixture(scope="module")
def torchvision_run(real_data: Path):
    """torchvision's model and what it makes of the two photos, stage by stage (as its GeneralizedRCNN.forward)."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=352, max_size=512
    ).eval()
    photos = [to_tensor(Image.open(real_data / "coco128" / "train2017" / name).convert("RGB")) for name in PHOTOS]
    with torch.no_grad():
        images, _ = model.transform(photos)
        body = model.backbone.body
        for bn in (m for m in body.modules() if isinstance(m, nn.BatchNorm2d)):  # this batch's statistics
            bn.reset_running_stats()
            bn.momentum = None
        body.train()(images.tensors)
        freeze_batchnorm(body.eval())
        # Spread outputs: objectness logits of std ~2.5 (no float32 ties of the sigmoid at 1), box deltas of
        # ~0.3 (RPN) and ~2 (RoI, divided by its 10, 10, 5, 5), class logits of std ~2.3 over 91 classes.
        rpn, predictor = model.rpn.head, model.roi_heads.box_predictor
        rpn.cls_logits.weight.normal_(0.0, 0.02)
        rpn.cls_logits.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        rpn.bbox_pred.weight.normal_(0.0, 0.003)
        predictor.cls_score.weight.normal_(0.0, 0.01)
        predictor.cls_score.bias.normal_(0.0, 1.0)
        predictor.bbox_pred.weight.normal_(0.0, 0.01)
        predictor.bbox_pred.bias.normal_(0.0, 0.5)
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return model, images, features, proposals, detections


@pytest.fixture(scope="module")
def detlab_run(torchvision_run):
    """detlab's preset with torchvision's converted weights (strict), on torchvision's normalised, padded batch."""
    model, images, *_ = torchvision_run
    cfg = compose_train(["model=tv_fasterrcnn_r50_fpn"])
    validate(cfg)
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=90)
    parts.model.load_state_dict(torchvision_weights.fasterrcnn_resnet50_fpn(model.state_dict()), strict=True)
    parts.model.eval()
    sizes = torch.tensor(images.image_sizes)
    batch = make_batch(images=images.tensors, image_sizes=sizes, orig_sizes=sizes)
    with torch.no_grad():
        # With the batch, the proposals are clipped to each image's content (torchvision's image_sizes).
        outputs, anchors = parts.model(batch.images, targets=batch)
        detections = parts.postprocess(outputs, anchors, batch)
    return parts, outputs, anchors, detections


@pytest.mark.realdata
def test_proposals_and_detections_equal_torchvisions(torchvision_run, detlab_run):
    _, images, _, tv_proposals, tv_detections = torchvision_run
    _, outputs, _, detections = detlab_run
    assert images.tensors.shape[-2:] == (480, 480) and images.image_sizes == [(352, 469), (468, 352)]
    for i, expected in enumerate(tv_proposals):
        ours = outputs.proposals[i][outputs.proposal_valid[i]]
        assert len(ours) == len(expected) == 1000
        # The same boxes; the order may differ among equal scores: torchvision sorts by sigmoid probabilities,
        # which tie in float32 where the logits that detlab sorts by differ. So each box is matched to its
        # nearest, one to one.
        distance = torch.cdist(expected.double(), ours.double())
        nearest = distance.min(dim=1)
        assert nearest.values.max() <= 1e-3 and len(nearest.indices.unique()) == len(expected)
    for ours, expected in zip(detections, tv_detections):
        assert len(ours.boxes) == len(expected["boxes"]) == 100
        torch.testing.assert_close(ours.boxes, expected["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(ours.scores, expected["scores"], rtol=0, atol=1e-5)
        assert torch.equal(ours.labels + 1, expected["labels"])  # detlab's 0..89 = torchvision's 1..90


@pytest.mark.realdata
def test_top_n_thresholds_and_nms_act(torchvision_run, detlab_run):
    """Without its caps, torchvision keeps more than 1000 proposals and 100 detections per image; its score
    threshold and NMS remove candidates; across-level RPN NMS (detlab's default) would give other proposals."""
    model, images, features, proposals, _ = torchvision_run
    parts, outputs, anchors, _ = detlab_run
    with torch.no_grad():
        rpn, roi = model.rpn, model.roi_heads
        rpn._post_nms_top_n["testing"], roi.detections_per_img = 10**6, 10**6
        try:
            uncapped_proposals, _ = rpn(images, features)
            uncapped, _ = roi(features, proposals, images.image_sizes)
        finally:
            rpn._post_nms_top_n["testing"], roi.detections_per_img = 1000, 100
        pre_nms = sum(min(1000, n) for n in anchors.level_sizes)
        assert all(1000 < len(p) < pre_nms for p in uncapped_proposals)  # NMS removed some, the cap more
        scores = roi.box_predictor(roi.box_head(roi.box_roi_pool(features, proposals, images.image_sizes)))[0]
        above = (scores.softmax(-1)[:, 1:] > roi.score_thresh).view(len(proposals), -1, 90).sum((1, 2))
        assert all(100 < len(d["boxes"]) < n < 1000 * 90 for d, n in zip(uncapped, above.tolist()))

        generator = parts.model.proposals
        generator.nms_per_level = False
        try:
            across, valid = generator(outputs.rpn, anchors, torch.tensor(images.image_sizes))
        finally:
            generator.nms_per_level = True
        assert valid.all() and not torch.equal(across, outputs.proposals)


def test_preset_loads_torchvisions_keys_strictly():
    """Every key of torchvision's model maps to one of detlab's preset and back (meta tensors: no memory),
    with the background's 4 box-delta rows dropped."""
    with torch.device("meta"):
        state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
        cfg = compose_train(["model=tv_fasterrcnn_r50_fpn"])
        model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=90).model
    converted = torchvision_weights.fasterrcnn_resnet50_fpn(state)
    model.load_state_dict(converted, strict=True, assign=True)
    assert converted["roi_head.bbox_pred.weight"].shape == (90 * 4, 1024)
    assert converted["roi_head.cls_score.weight"].shape == (91, 1024)
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d) and not model.backbone.layer1[0].conv1.weight.requires_grad
    assert model.backbone.layer2[0].conv1.weight.requires_grad  # trainable_backbone_layers=3: layer2..layer4


def test_wrong_state_dict_names_missing_and_unexpected_keys():
    with torch.device("meta"):
        state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
        cfg = compose_train(["model=tv_fasterrcnn_r50_fpn"])
        model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=90).model
    del state["rpn.head.cls_logits.bias"]
    state["roi_heads.mask_head.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"\(torchvision's fasterrcnn_resnet50_fpn, for model=tv_fasterrcnn_r50_fpn\) "
                                         r"does not fit the configured model: 1 missing keys \['rpn_head.objectness.bias'\], "
                                         r"1 unexpected keys \['roi_heads.mask_head.0.weight'\]"):
        torchvision_weights.load_state(model, state, "retinanet.pth")
    with pytest.raises(ValueError, match=r"retinanet.pth: not a state dict"):
        torchvision_weights.load_state(model, {"model": state}, "retinanet.pth")
