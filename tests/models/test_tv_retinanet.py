"""model=tv_retinanet_r50_fpn is torchvision's retinanet_resnet50_fpn: the same detections, to the last box.

torchvision's model (seeded random weights, built as for its published COCO weights: tests/conftest.py) is
saved as a state dict, loaded through `model.weights`, and both run on real photographs of different aspect
ratios from coco128, batched together: torchvision's own `model.eval()(images)` against detlab's eval transform,
collate, model and post-processing. Every detection must agree: the count per image, the boxes (original
pixels) within 1e-3 px, the scores within 1e-5, the labels (torchvision's label = COCO category id = detlab's
category_ids[label]).
"""

import inspect
import math

import pytest
import torch
from torchvision.models.detection.retinanet import RetinaNet

from detlab.config import compose_train, validate
from detlab.inference import Predictor
from detlab.errors import user_message
from detlab.models.torchvision_weights import retinanet_resnet50_fpn

PRESET = ["model=tv_retinanet_r50_fpn", "data.image_size=304", "data.max_size=512"]


def detlab_predictor(weights) -> Predictor:
    cfg = compose_train([*PRESET, f"model.weights={weights}"])
    validate(cfg)
    return Predictor.from_config(cfg, list(cfg.data.category_ids))


@pytest.mark.realdata
def test_detections_equal_torchvisions(tv_retinanet, tv_retinanet_on_coco128, canonical):
    tv_model, weights = tv_retinanet
    photos, expected = tv_retinanet_on_coco128
    photos = list(photos.values())
    predictor = detlab_predictor(weights).to("cpu")
    # 405 x 304, 304 x 404 and 304 x 398 pad to one batch of 416 x 416, not a multiple of the 64 and 128 strides
    # of P6 and P7: their anchors follow torchvision's input // feature rule (59 and 104 px apart, not 64 and 128).
    # The random model's best 300 come from the lower levels, so the anchors are compared on their own.
    with torch.inference_mode():
        predictor.model.eval()
        batch, outputs, priors = predictor.forward(predictor.preprocess(photos))
        got = predictor.detect((batch, outputs, priors))
        image_list, _ = tv_model.transform([torch.from_numpy(p.copy()).permute(2, 0, 1).float().div(255) for p in photos])
        shapes = [torch.zeros(1, 1, h, w) for h, w in ((52, 52), (26, 26), (13, 13), (7, 7), (4, 4))]
        tv_anchors = tv_model.anchor_generator(image_list, shapes)[0]
    assert tuple(batch.images.shape[-2:]) == (416, 416)
    torch.testing.assert_close(batch.images, image_list.tensors, atol=1e-5, rtol=0)
    assert torch.equal(priors.boxes, tv_anchors)
    for image, (ours, theirs) in enumerate(zip(got, expected)):
        labels = torch.tensor(predictor.category_ids)[ours.labels]
        ours, theirs = canonical(ours.boxes, ours.scores, labels), canonical(**theirs)
        assert len(ours[1]) == len(theirs[1]), f"image {image}"
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(ours[1], theirs[1], atol=1e-5, rtol=0)
        assert torch.equal(ours[2], theirs[2]), f"image {image}"
    # the reference is not trivial: the 300-per-image cap binds and several classes are found
    assert max(len(d["scores"]) for d in expected) == 300
    assert len(torch.unique(torch.cat([d["labels"] for d in expected]))) > 10


def test_preset_composes_torchvisions_settings():
    cfg = compose_train(["model=tv_retinanet_r50_fpn"])
    validate(cfg)
    assert (cfg.data.image_size, cfg.data.max_size, cfg.data.resize, cfg.data.size_divisor) == (800, 1333, "keep_ratio", 32)
    assert list(cfg.data.category_ids) == list(range(91)) and cfg.loss.alpha == 0.25 and cfg.loss.gamma == 2.0
    defaults = {k: v.default for k, v in inspect.signature(RetinaNet.__init__).parameters.items()}
    post = cfg.model.postprocess
    assert (post.score_thresh, post.topk_per_level, post.nms_iou, post.max_per_image) == (
        defaults["score_thresh"], defaults["topk_candidates"], defaults["nms_thresh"], defaults["detections_per_img"]
    )
    assert (cfg.model.assigner.pos_iou, cfg.model.assigner.neg_iou) == (defaults["fg_iou_thresh"], defaults["bg_iou_thresh"])


def message_of(build) -> str:
    """The one-line message detlab's CLIs print for what build() raises (through Hydra's wrapping)."""
    with pytest.raises(Exception) as raised:
        build()
    problem = user_message(raised.value)
    assert problem is not None, f"not a user error: {raised.value!r}"
    return str(problem)


def test_wrong_weights_name_the_keys(tmp_path, tv_retinanet):
    _, weights = tv_retinanet
    state = torch.load(weights, weights_only=True)
    cut = tmp_path / "cut.pth"
    torch.save({k: v for k, v in state.items() if "bbox_reg" not in k}, cut)
    message = message_of(lambda: detlab_predictor(cut))
    assert "cut.pth (torchvision's retinanet_resnet50_fpn, for model=tv_retinanet_r50_fpn)" in message
    assert "2 missing keys ['head.box_out.bias', 'head.box_out.weight'], 0 unexpected keys" in message
    cfg = compose_train([*PRESET, f"model.weights={weights}"])  # 80 contiguous COCO labels: no 91-way head
    assert "head.cls_out.weight (shape [819, 256, 3, 3] for [720, 256, 3, 3])" in message_of(
        lambda: Predictor.from_config(cfg, list(range(1, 81)))
    )
    assert "nothing.pth: no such file" in message_of(lambda: detlab_predictor(tmp_path / "nothing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    assert "garbage.pth: not a readable torch weights file" in message_of(lambda: detlab_predictor(garbage))


THREE_CLASSES = [1, 2, 3]  # a new dataset's label space: the 91-way COCO outputs do not fit it


def test_weights_of_other_classes_are_refused_by_default(tv_retinanet):
    """model.weights_strict=true is the default: torchvision's 91-class file into 3 classes stops, naming the
    class outputs' shapes and the key that fine-tunes."""
    _, weights = tv_retinanet
    cfg = compose_train([*PRESET, f"model.weights={weights}"])
    assert cfg.model.weights_strict is True
    message = message_of(lambda: Predictor.from_config(cfg, THREE_CLASSES))
    assert "head.cls_out.weight (shape [819, 256, 3, 3] for [27, 256, 3, 3])" in message
    assert "model.weights_strict=false" in message
    cfg = compose_train([*PRESET, f"model.weights={weights}", "model.weights_strict=no"])
    assert "model.weights_strict='no': give true" in message_of(lambda: validate(cfg))


def test_weights_of_other_classes_fine_tune(tv_retinanet):
    """model.weights_strict=false: every tensor of torchvision's file whose shape fits is loaded (backbone, FPN, both
    towers, the box output), and the 3-class output keeps the fresh initialisation it has without the file: the
    same draw from the same seed, and the focal loss paper's prior bias -log((1 - 0.01) / 0.01)."""
    tv_model, weights = tv_retinanet
    fine_tune = compose_train([*PRESET, f"model.weights={weights}", "model.weights_strict=false"])
    torch.manual_seed(0)
    model = Predictor.from_config(fine_tune, THREE_CLASSES).model
    torch.manual_seed(0)
    fresh = Predictor.from_config(compose_train(PRESET), THREE_CLASSES).model
    assert model.weights_not_loaded == [
        "head.cls_out.bias (shape [819] for [27])", "head.cls_out.weight (shape [819, 256, 3, 3] for [27, 256, 3, 3])"
    ]
    ours, theirs = model.state_dict(), tv_model.state_dict()
    converted = retinanet_resnet50_fpn(theirs)
    for key, value in ours.items():
        if not key.startswith("head.cls_out."):
            assert torch.equal(value, converted[key]), key
    # a few by torchvision's own names, so that the renaming is not the only witness
    assert torch.equal(ours["backbone.conv1.weight"], theirs["backbone.body.conv1.weight"])
    assert torch.equal(ours["neck.extra.1.weight"], theirs["backbone.fpn.extra_blocks.p7.weight"])
    assert torch.equal(ours["head.cls_tower.6.weight"], theirs["head.classification_head.conv.3.0.weight"])
    assert torch.equal(ours["head.box_out.weight"], theirs["head.regression_head.bbox_reg.weight"])
    assert torch.equal(ours["head.cls_out.weight"], fresh.state_dict()["head.cls_out.weight"])
    assert not torch.equal(ours["head.cls_out.weight"], theirs["head.classification_head.cls_logits.weight"][:27])
    torch.testing.assert_close(ours["head.cls_out.bias"], torch.full((27,), -math.log(0.99 / 0.01)))


def test_fine_tuning_still_refuses_another_architecture(tmp_path, tv_retinanet):
    """model.weights_strict=false forgives shapes only: a key the file lacks is still an error, naming it (and not
    the class outputs, which would be left at their initialisation)."""
    _, weights = tv_retinanet
    state = torch.load(weights, weights_only=True)
    cut = tmp_path / "cut.pth"
    torch.save({k: v for k, v in state.items() if "bbox_reg" not in k}, cut)
    cfg = compose_train([*PRESET, f"model.weights={cut}", "model.weights_strict=false"])
    message = message_of(lambda: Predictor.from_config(cfg, THREE_CLASSES))
    assert "2 missing keys ['head.box_out.bias', 'head.box_out.weight'], 0 unexpected keys" in message
    extra = tmp_path / "extra.pth"
    torch.save({**state, "head.classification_head.extra.weight": torch.zeros(1)}, extra)
    cfg = compose_train([*PRESET, f"model.weights={extra}", "model.weights_strict=false"])
    assert "1 unexpected keys ['head.classification_head.extra.weight']" in message_of(
        lambda: Predictor.from_config(cfg, THREE_CLASSES)
    )
