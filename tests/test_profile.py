"""Parameter and FLOP counts against torchvision's published model metadata."""

import pytest
import torchvision

from detlab.profile import complexity


def test_resnet50_counts_match_torchvision_metadata():
    meta = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta
    got = complexity(torchvision.models.resnet50(), 224)
    assert got["params"] == meta["num_params"]
    # torchvision's "_ops" are GFLOPs counted as multiply-adds; torch's counter counts 2 per multiply-add.
    assert got["gflops"] == pytest.approx(2 * meta["_ops"], rel=1e-3)


def test_counting_leaves_the_model_in_training_mode_and_its_statistics_alone():
    model = torchvision.models.resnet18().train()
    before = model.bn1.running_mean.clone()
    complexity(model, 64)
    assert model.training and model.bn1.running_mean.equal(before)
