"""Every option of every config group composes, validates and instantiates; bad configs stop with the key."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detlab.config import ConfigError, compose_train, validate

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("data", "model", "model/backbone", "model/neck", "model/head", "loss", "optim", "trainer", "logger"):
        assert options(group), f"conf/{group} is empty"


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("loss", options("loss"))
def test_every_model_builds_with_every_loss_or_refuses_it_with_the_reason(model, loss):
    cfg = compose_train([f"model={model}", f"loss={loss}"])
    if model == "yolov3" and instantiate(cfg.loss).num_outputs(1) != 1:  # a softmax loss: YOLO's background is objectness
        with pytest.raises(ConfigError, match="use loss=focal or loss=bce"):
            validate(cfg)
        return
    validate(cfg)
    if model == "torchvision_retinanet" and loss != "focal":  # torchvision's head trains a sigmoid focal loss only
        with pytest.raises(InstantiationException, match="use loss=focal"):
            instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
        return
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    assert callable(parts.model) and callable(parts.assigner) and callable(parts.criterion) and callable(parts.postprocess)


# VGG16 gives two maps (conv4_3, fc7): RetinaNet's five levels need three extra ones on top of them.
BACKBONE_NEEDS = {"vgg16": ["model.neck.num_extra_levels=3"]}


@pytest.mark.parametrize("backbone", options("model/backbone"))
def test_every_backbone_builds_into_the_default_detector(backbone):
    cfg = compose_train([f"model/backbone={backbone}", *BACKBONE_NEEDS.get(backbone, [])])
    validate(cfg)
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    assert list(parts.model.neck.strides) == [8, 16, 32, 64, 128]


@pytest.mark.parametrize("optim", options("optim"))
def test_optim_options_instantiate(optim):
    import torch

    cfg = compose_train([f"optim={optim}"])
    optimizer = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["lr"] == cfg.optim.optimizer.lr


@pytest.mark.parametrize("trainer", [t for t in options("trainer") if t != "gpu"])
def test_trainer_options_instantiate(trainer, tmp_path):
    cfg = compose_train([f"trainer={trainer}", "trainer.accelerator=cpu"])
    validate(cfg)
    trainer_obj = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    assert trainer_obj.max_epochs == cfg.trainer.max_epochs


def test_gpu_trainer_without_cuda_names_the_key():
    import torch

    cfg = compose_train(["trainer=gpu"])
    if torch.cuda.is_available():
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
            validate(cfg)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate(logger, tmp_path):
    from detlab.train import _logger

    cfg = compose_train([f"logger={logger}"])
    made = _logger(cfg, tmp_path, wandb_id=None)
    assert (made is False) == (logger == "none")


def test_misspelt_key_is_rejected_with_its_name():
    with pytest.raises(ConfigCompositionException, match="imag_size"):
        compose_train(["data.imag_size=320"])


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="resnet18"):
        compose_train(["model/backbone=resnet5"])


def test_impossible_combinations_name_the_key():
    cfg = compose_train(["model.neck.num_extra_levels=1"])
    with pytest.raises(ConfigError, match="model.priors.sizes"):
        validate(cfg)
    cfg = compose_train(["data.image_size=0"])
    with pytest.raises(ConfigError, match="data.image_size"):
        validate(cfg)
    cfg = compose_train(["eval.backend=cocoapi"])
    with pytest.raises(ConfigError, match="eval.backend"):
        validate(cfg)
    cfg = compose_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="trainer.sync_batchnorm"):
        validate(cfg)
    cfg = compose_train(["trainer.precision=16-mixed", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match="trainer.precision"):
        validate(cfg)
    for no_batches in ("0", "0.0"):
        cfg = compose_train([f"trainer.limit_val_batches={no_batches}"])
        with pytest.raises(ConfigError, match="trainer.limit_val_batches"):
            validate(cfg)
    validate(compose_train(["trainer.limit_val_batches=0.5"]))


def test_issue_example_overrides_compose():
    cfg = compose_train(["model/backbone=resnet50", "loss.gamma=0", "data.image_size=320", "trainer.max_epochs=3"])
    validate(cfg)
    resolved = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "tracking")}
    assert resolved["model"]["backbone"]["depth"] == 50
    assert resolved["loss"]["gamma"] == 0
    assert resolved["tracking"]["name"] == "retinanet-focal"
