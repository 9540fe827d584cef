"""The whole dense detector built from the real configs: shapes, priors and gradients."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_retinanet_forward_matches_priors_and_backpropagates():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model.neck.out_channels=16", "model.head.width=16", "model.head.depth=1"])
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    outputs, priors = parts.model(torch.randn(2, 3, 64, 96))
    assert outputs.cls_logits.shape == (2, len(priors), 3) and outputs.box_reg.shape == (2, len(priors), 4)
    assert sum(priors.level_sizes) == len(priors) == 9 * (8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 + 1 * 1)
    (outputs.cls_logits.sum() + outputs.box_reg.sum()).backward()
    assert parts.model.backbone.stem[0].weight.grad is not None
