"""The dense detector: outputs line up with the priors at any input size, gradients reach every part."""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detlab.models.backbones.resnet import ResNet
from detlab.models.detector import Detector
from detlab.models.heads.retinanet import RetinaNetHead
from detlab.models.necks.fpn import FPN
from detlab.models.priors import AnchorGenerator
from detlab.structures import HeadOutput, Priors

CONF = Path(__file__).resolve().parents[2] / "conf"
STRIDES = (8, 16, 32, 64, 128)


def tiny_retinanet(num_anchors: int = 9) -> Detector:
    torch.manual_seed(0)
    backbone = ResNet(depth=18)
    neck = FPN(backbone.out_channels, backbone.strides, out_channels=32)
    head = RetinaNetHead(in_channels=32, num_anchors=num_anchors, num_classes=3, width=32, depth=1)
    return Detector(backbone, neck, head, AnchorGenerator(sizes=(16, 32, 64, 128, 256)))


def expected_num_priors(h: int, w: int) -> int:
    """9 anchors on every cell of P3..P7, each level ceil(size / stride) cells per side."""
    return 9 * sum(math.ceil(h / s) * math.ceil(w / s) for s in STRIDES)


@pytest.mark.parametrize("h, w", [(64, 96), (65, 97)])
def test_outputs_match_the_priors_at_any_input_size(h, w):
    model = tiny_retinanet()
    outputs, priors = model(torch.randn(2, 3, h, w))
    assert isinstance(outputs, HeadOutput) and isinstance(priors, Priors)
    assert len(priors) == expected_num_priors(h, w)
    assert outputs.cls_logits.shape == (2, len(priors), 3) and outputs.box_reg.shape == (2, len(priors), 4)
    assert priors.level_sizes == tuple(9 * math.ceil(h / s) * math.ceil(w / s) for s in STRIDES)
    assert priors.strides.unique().tolist() == list(map(float, STRIDES))
    model.eval()
    with torch.no_grad():
        eval_outputs, eval_priors = model(torch.randn(1, 3, h, w))
    assert type(eval_outputs) is HeadOutput and eval_priors is priors  # same geometry: the cached priors


def test_gradients_reach_backbone_neck_and_head():
    model = tiny_retinanet()
    outputs, _ = model(torch.randn(2, 3, 64, 96))
    (outputs.cls_logits.sum() + outputs.box_reg.square().sum()).backward()
    for part in (model.backbone.conv1, model.backbone.layer4, model.neck.lateral[0], model.neck.extra[1], model.head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_head_and_prior_count_disagreement_is_a_clear_error():
    with pytest.raises(ValueError, match="model.head.num_anchors"):
        tiny_retinanet(num_anchors=3)(torch.randn(1, 3, 64, 64))


def test_retinanet_built_from_the_real_configs():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model.neck.out_channels=16", "model.head.width=16", "model.head.depth=1"])
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    outputs, priors = parts.model(torch.randn(2, 3, 64, 96))
    assert len(priors) == expected_num_priors(64, 96)
    assert outputs.cls_logits.shape[:2] == outputs.box_reg.shape[:2] == (2, len(priors))


@pytest.mark.parametrize("loss, num_outputs", [("focal", 3), ("bce", 3), ("ce", 4), ("ce_ohem", 4), ("softmax_focal", 4)])
def test_retinanet_learns_a_fixed_batch_with_every_loss(loss, num_outputs, fits_fixed_batch):
    """Sigmoid losses give K logits, softmax ones K + 1; with each, a few steps lower the loss."""
    from tests.conftest import make_batch

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={loss}", "model.neck.out_channels=16", "model.head.width=16",
                                          "model.head.depth=1"])
    torch.manual_seed(0)
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    batch = make_batch(
        torch.tensor([[[6.0, 8.0, 38.0, 42.0], [30.0, 20.0, 60.0, 52.0]], [[10.0, 26.0, 34.0, 62.0], [0.0] * 4]]),
        torch.tensor([[0, 2], [1, 0]]), torch.tensor([[True, True], [True, False]]), seed=0,
    )

    def check(outputs, priors, losses):
        assert outputs.cls_logits.shape[-1] == num_outputs

    fits_fixed_batch(parts, batch, num_classes=3, check=check)
