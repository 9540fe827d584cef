"""Every option of every config group composes, validates and instantiates (every model with every loss runs one
tiny batch); bad configs stop with the key."""

import copy
import inspect
import re
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from detlab.config import CONF_DIR, REQUIRED_GROUPS, ConfigError, compose_train, validate
from tests.conftest import make_batch

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("data", "model", "model/backbone", "model/neck", "model/head", "loss", "optim", "trainer", "logger"):
        assert options(group), f"conf/{group} is empty"


# The pairs a model refuses, and the fix its message names: YOLO's background is its objectness (no softmax
# loss); torchvision's RetinaNet head trains its own sigmoid focal loss.
SOFTMAX_LOSSES = ("ce", "ce_ohem", "softmax_focal")
REFUSED = {
    **{("yolov3", loss): "use loss=focal or loss=bce" for loss in SOFTMAX_LOSSES},
    **{("torchvision_retinanet", loss): "use loss=focal" for loss in ("bce", *SOFTMAX_LOSSES)},
}
# The smallest input each model takes: SSD's extra layers end in unpadded 3 x 3 convs, so SSD keeps its own size.
TINY_INPUT = {"ssd300": 300, "ssd512": 512, "tv_ssd300_vgg16": 300}
# A light backbone where the preset's is heavy (VGG16 at 300 px, ResNet-50, DarkNet-53 take a minute per pair on 2
# shared cores): the same maps and strides, so the neck, head, priors, assigner, loss and post-processing are the
# preset's. The heavy backbones themselves are built in test_every_backbone_builds_into_the_default_detector.
SSD_ON_RESNET18 = ["model/backbone=resnet18", "model.backbone.out_indices=[2,3]"]  # C3, C4: VGG16's strides 8, 16
LIGHT = {
    "ssd300": SSD_ON_RESNET18, "ssd512": SSD_ON_RESNET18, "tv_ssd300_vgg16": SSD_ON_RESNET18,
    "tv_retinanet_r50_fpn": ["model.backbone.depth=18"], "tv_fasterrcnn_r50_fpn": ["model.backbone.depth=18"],
    "yolov3": ["model/backbone=darknet_tiny"],
}


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("loss", options("loss"))
def test_every_model_runs_with_every_loss_or_refuses_it_with_the_reason(model, loss):
    """Each pair builds from the configs and runs forward, assignment, loss and post-processing on one tiny batch:
    every loss term finite with a gradient in the model (with a light backbone: LIGHT), and detections in the label space 0..K-1 (with the
    score threshold at 0, every class output is a candidate, so a softmax background column decoded as a class
    would show as label K)."""
    size = TINY_INPUT.get(model, 64)
    cfg = compose_train([f"model={model}", f"loss={loss}", f"data.image_size={size}"])
    if (model, loss) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[model, loss]):
            validate(cfg)
        return
    validate(cfg)  # the preset itself, with its own backbone
    cfg = compose_train([f"model={model}", f"loss={loss}", f"data.image_size={size}", *LIGHT.get(model, [])])
    torch.manual_seed(0)
    model_, assigner, criterion, postprocess = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    scale = size / 64
    batch = make_batch(torch.tensor([[[8.0, 10.0, 40.0, 44.0]]]) * scale, torch.tensor([[2]]), size=size, seed=0)
    outputs, priors = model_(batch.images, targets=batch)
    losses = criterion(outputs, priors, assigner(outputs, priors, batch), batch)
    assert losses and all(value.dim() == 0 and torch.isfinite(value) for value in losses.values()), losses
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model_.parameters())

    model_.eval()
    lowered = hasattr(postprocess, "score_thresh")  # torchvision_retinanet keeps torchvision's own 0.05
    if lowered:
        postprocess.score_thresh = 0.0
    with torch.no_grad():
        (detections,) = postprocess(*model_(batch.images), batch)
    assert detections.boxes.shape == (len(detections.scores), 4) and detections.labels.shape == detections.scores.shape
    assert (len(detections.scores) > 0 or not lowered) and ((detections.scores >= 0) & (detections.scores <= 1)).all()
    assert ((detections.labels >= 0) & (detections.labels < 3)).all(), detections.labels.unique()


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
    cfg = compose_train(["trainer=gpu"])
    if torch.cuda.is_available():
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
            validate(cfg)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate(logger, tmp_path):
    from detlab.training.run import _logger

    cfg = compose_train([f"logger={logger}"])
    made = _logger(cfg, tmp_path, wandb_id=None)
    assert (made is False) == (logger == "none")


@pytest.mark.parametrize(("override", "key"), [
    ("tracking.name=123", "tracking.name"), ("tracking.group=5", "tracking.group"),
    ("tracking.project=7", "tracking.project"), ("tracking.tags=[a,2]", "tracking.tags"),
    ("tracking.tags=a", "tracking.tags"), ("logger.name=2024", "logger.name"),
])
def test_a_run_name_that_is_not_text_is_refused_before_the_logger_takes_it(override, key):
    """Hydra reads digits as a number; W&B (pydantic) and Lightning's CSVLogger (os.path.join) refused it deep
    in their code once the data was built."""
    overrides = ["logger=csv", override] if override.startswith("logger.") else [override]
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(compose_train(overrides))
    validate(compose_train(["logger=csv", "logger.name='2024'", "tracking.name='123'", "tracking.tags=[a,'2']"]))


@pytest.mark.parametrize(("override", "says"), [
    ("tracking.name=${seed}", "tracking.name='${seed}' is not text; ${seed} is 0: write it inside text"),
    ("tracking.group=${data.image_size}", "tracking.group='${data.image_size}' is not text"),
    ("logger.name=${seed}", "logger.name='${seed}' is not text"),
    ("tracking.tags=[a,${seed}]", "tracking.tags=['a', '${seed}'] (resolved: ['a', 0])"),
])
def test_a_run_name_interpolated_from_a_number_is_refused_as_the_logger_would(override, says, monkeypatch):
    """An interpolation is text as written, but `${seed}` alone resolves to the number 0 (OmegaConf keeps the type of
    the node it names), which W&B refused with pydantic's traceback once the run had started. Text around it, or
    Hydra's ${hydra:...} in a config composed without Hydra's own config, is still taken."""
    import wandb
    from hydra import compose, initialize_config_dir
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="run_name"):  # the reference: what W&B does with the resolved name
        wandb.Settings(run_name=0)
    overrides = ["logger=csv", override] if override.startswith("logger.") else [override]
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(compose_train(overrides))
    validate(compose_train(["tracking.name=run-${seed}", "tracking.tags=[seed${seed}]"]))
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # a config composed without Hydra's: its ${hydra:...} names stay as written
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model/backbone=darknet_tiny", "data.image_size=64"])
    with pytest.raises(InterpolationResolutionError):
        cfg.tracking.name
    validate(cfg)


def test_misspelt_key_is_rejected_with_its_name():
    with pytest.raises(ConfigCompositionException, match="imag_size"):
        compose_train(["data.imag_size=320"])


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="resnet18"):
        compose_train(["model/backbone=resnet5"])


@pytest.mark.parametrize(("overrides", "keys"), [
    (["data=coco"], "data.train.ann_file, data.train.img_dir, data.val.ann_file, data.val.img_dir have no value"),
    (["data=coco", "data.train.ann_file=a.json", "data.train.img_dir=img"], "data.val.ann_file, data.val.img_dir have"),
    (["data=voc"], "data.source.shared.root has no value"),
    (["data=yolo"], "data.source.shared.names, data.source.train.images_dir, data.source.val.images_dir have"),
    (["data=udacity"], "data.source.train.csv_file has no value"),
    (["data=mot"], "data.source.train.seq_dir, data.source.val.seq_dir have no value"),
])
def test_a_mandatory_value_left_out_is_named_by_validate(overrides, keys):
    """Each ??? of a data config: OmegaConf's MissingMandatoryValue traceback when the data module was built."""
    cfg = compose_train(overrides)
    with pytest.raises(ConfigError, match=re.escape(keys)):
        validate(cfg)


@pytest.mark.parametrize("group", REQUIRED_GROUPS)
def test_a_required_group_removed_on_the_command_line_is_named(group):
    """`~logger` (Hydra's removal of a default) stopped in the first check that read the group, with OmegaConf's
    ConfigAttributeError traceback."""
    with pytest.raises(ConfigError, match=rf"~{group} removed the {group} config group, .* \({group}=[a-z0-9_|]+\)"):
        validate(compose_train([f"~{group}"]))


def test_impossible_combinations_name_the_key(monkeypatch):
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
    # A spawned or forked DDP run trained to the end, then stopped without results.json on a CheckpointError about
    # Lightning's temporary weights file (.temp.ckpt)
    for strategy, plain in (("ddp_spawn", "ddp"), ("ddp_fork", "ddp"),
                            ("ddp_notebook_find_unused_parameters_true", "ddp_find_unused_parameters_true")):
        cfg = compose_train(["trainer=ddp", "trainer.accelerator=cpu", f"trainer.strategy={strategy}"])
        with pytest.raises(ConfigError, match=f"trainer.strategy={strategy} .* use trainer.strategy={plain} "):
            validate(cfg)
    validate(compose_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.strategy=ddp_find_unused_parameters_true"]))
    # two nodes on one machine: this machine's ranks waited for the other node's until the 30-minute timeout
    for launch in ({}, {"MASTER_ADDR": "10.0.0.1"}, {"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "train"}):
        with monkeypatch.context() as env:
            for key in ("MASTER_ADDR", "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE"):
                env.delenv(key, raising=False)
            for key, value in launch.items():
                env.setenv(key, value)
            cfg = compose_train(["trainer=ddp", "trainer.accelerator=cpu", "+trainer.num_nodes=2"])
            if launch:
                validate(cfg)
            else:
                with pytest.raises(ConfigError, match=r"trainer.num_nodes=2 but no cluster launch .* trainer.devices"):
                    validate(cfg)
    cfg = compose_train(["trainer.precision=16-mixed", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match="trainer.precision"):
        validate(cfg)
    cfg = compose_train(["optim.decay_norms_and_biases=yes"])
    with pytest.raises(ConfigError, match="optim.decay_norms_and_biases='yes' must be true or false"):
        validate(cfg)
    for no_batches in ("0", "0.0"):
        cfg = compose_train([f"trainer.limit_val_batches={no_batches}"])
        with pytest.raises(ConfigError, match="trainer.limit_val_batches"):
            validate(cfg)
    validate(compose_train(["trainer.limit_val_batches=0.5"]))


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_half_precision_is_refused_it_rounds_the_targets(precision):
    """Lightning's 16-true and bf16-true plugins cast every float tensor of the batch to 16 bits before the training
    step (the targets, the scale to original pixels), so detlab's float32 box coding, IoU and losses worked on rounded
    boxes; validate passed them whenever the speed protocol had a precision of its own (or was off)."""
    from pytorch_lightning.plugins.precision import HalfPrecision

    batch = make_batch(torch.tensor([[[8.3, 8.0, 101.7, 50.0]]]), scales=torch.tensor([[0.8, 0.8]]))
    cast = HalfPrecision(precision).convert_input(batch)
    assert cast.gt_boxes.dtype != torch.float32 and float(cast.gt_boxes[0, 0, 2]) != pytest.approx(101.7, abs=0.01)
    for speed in ("speed.precision=32-true", "speed.enabled=false"):
        with pytest.raises(ConfigError, match=f"trainer.precision='{precision}' is not one detlab trains with"):
            validate(compose_train([f"trainer.precision={precision}", speed]))


# An input too small for SSD's extra layers (unpadded 3 x 3 convs at the end): validate refuses it, before the data
# is read, where the model's own forward on the CPU fails; before, validate passed it and the first forward (the
# FLOPs count, after the logger, the data and the module were set up) stopped the run.
@pytest.mark.parametrize("model", ["ssd300", "ssd512", "tv_ssd300_vgg16"])
@pytest.mark.parametrize("size", [64, 100, 128])
def test_an_input_too_small_for_the_neck_is_refused_by_validate(model, size):
    with pytest.raises(ConfigError, match=r"too small for model\.neck.*raise data\.image_size"):
        validate(compose_train([f"model={model}", f"data.image_size={size}"]))


@pytest.mark.parametrize("size", [128, 267, 268])
def test_validate_refuses_the_ssd_input_sizes_the_network_cannot_take(size):
    """validate's verdict at the border (VGG16 + SSD300's layers need 268 px) is the real network's on the CPU."""
    cfg = compose_train(["model=ssd300", f"data.image_size={size}"])
    try:
        validate(cfg)
        refused = False
    except ConfigError:
        refused = True
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3).model.eval()
    try:
        with torch.no_grad():
            model.neck(model.backbone(torch.zeros(1, 3, size, size)))
        runs = True
    except (ConfigError, RuntimeError):
        runs = False
    assert refused == (not runs) and runs == (size >= 268)


@pytest.mark.parametrize(("overrides", "size"), [
    (["model=yolov3", "model/backbone=darknet_tiny"], 24), (["model=faster_rcnn"], 24), ([], 16), ([], 64),
])
def test_an_input_whose_deepest_map_is_one_pixel_is_refused_with_the_key(overrides, size):
    """torch's BatchNorm message (1 value per channel) used to be validate's whole error; the verdict is the real
    network's, in training mode on one image, on the CPU."""
    cfg = compose_train([*overrides, f"data.image_size={size}"])
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3).model.train()
    side = -(-size // 32) * 32  # the input, padded to the size divisor
    try:
        model.neck(model.backbone(torch.zeros(1, 3, side, side)))
        trains = True
    except ValueError:
        trains = False
    if trains:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^data\.image_size is too small .* 1 x 1.*raise data\.image_size$"):
            validate(cfg)
    assert trains == (size == 64)


# A key the chosen component does not take (a preset's key after its backbone or neck is swapped, a key added with
# +): refused with its dotted key and the fix; before, only Python's "VGG16.__init__() got an unexpected keyword
# argument 'norm'", which names neither the config node nor what to do.
NOT_AN_ARGUMENT = [
    (["model=tv_retinanet_r50_fpn", "model/backbone=vgg16"], "model.backbone.norm"),
    (["model=tv_fasterrcnn_r50_fpn", "model/backbone=darknet_tiny"], "model.backbone.norm"),
    (["model=tv_retinanet_r50_fpn", "model/neck=yolo"], "model.neck.out_channels"),
    (["model=faster_rcnn", "+model.rpn.head.width=8"], "model.rpn.head.width"),
    (["loss=ce", "+loss.gamma=2"], "loss.gamma"),
]


@pytest.mark.parametrize(("overrides", "key"), NOT_AN_ARGUMENT)
def test_a_key_the_component_does_not_take_is_named_with_the_fix(overrides, key):
    cfg = compose_train(overrides)
    node, name = key.rsplit(".", 1)
    assert name not in inspect.signature(get_class(OmegaConf.select(cfg, node)._target_)).parameters
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"{key} is not an argument of {node}") and f"~{key}" in str(err.value)


# Values a component cannot be built from or train with: each stops at validation with its key (before, a zero
# width failed deep inside torch's convolution, and the others were taken silently).
BAD_VALUES = [
    ("retinanet", "model.criterion.box_weight=-1", r"model\.criterion\.box_weight=-1 must be a number >= 0"),
    ("ssd300", "model.criterion.box_weight=-1", r"model\.criterion\.box_weight=-1 must be a number >= 0"),
    ("yolov3", "model.criterion.obj_weight=-1", r"model\.criterion\.obj_weight=-1 must be a number >= 0"),
    ("faster_rcnn", "model.criterion.rpn_cls_weight=-1", r"model\.criterion\.rpn_cls_weight=-1 must be a number >= 0"),
    ("tv_retinanet_r50_fpn", "model.criterion.box_weight=-1", r"model\.criterion\.box_weight=-1 must be a number >= 0"),
    ("retinanet", "model.neck.out_channels=0", r"model\.neck\.out_channels=0 must be a positive integer"),
    ("torchvision_retinanet", "model.width=0", r"model\.width=0 must be a positive integer"),
    ("ssd300", "model.neck.extra_strides=[0,2,1,1]", r"model\.neck\.extra_strides=\[0, 2, 1, 1\] must be a list"),
    ("ssd300", "model.neck.extra_paddings=[-1,1,0,0]", r"model\.neck\.extra_paddings=\[-1, 1, 0, 0\] must be a list of numbers >= 0"),
    ("ssd300", "model.backbone.l2_scale=-1", r"model\.backbone\.l2_scale=-1 must be > 0"),
    ("retinanet", "model.priors.offset=1.5", r"model\.priors\.offset=1\.5 must be in \[0, 1\]"),
    ("faster_rcnn", "model.roi.head.canonical_scale=0", r"model\.roi\.head\.canonical_scale=0 must be a positive"),
    ("faster_rcnn", "model.rpn.proposals.min_size=-1", r"model\.rpn\.proposals\.min_size=-1 must be a number >= 0"),
    ("tv_fasterrcnn_r50_fpn", "model.postprocess.min_size=-1", r"model\.postprocess\.min_size=-1 must be a number >= 0"),
    ("faster_rcnn", "model.rpn.proposals.post_nms_top_n=0", r"model\.rpn\.proposals\.post_nms_top_n=0 must be a posit"),
    # the samplers' own check: -1 is refused by the sweep below before it, 0 and 1.5 were never tried
    ("faster_rcnn", "model.roi.sampler.num_samples=0", r"model\.roi\.sampler: num_samples=0 must be >= 1"),
    # before: "model.assigner: ...", a key no config has (Faster R-CNN's sampled assigner is the RPN's)
    ("faster_rcnn", "model.rpn.assigner.positive_fraction=1.5", r"^model\.rpn\.assigner: .*positive_fraction=1\.5 in"),
    ("retinanet", "data.batch_size=2.5", r"data\.batch_size=2\.5 must be a positive integer"),
    ("retinanet", "seed=-1", r"seed=-1 must be an integer in \[0, 2\^32 - 1\]"),  # before, Lightning's traceback
    # Lightning took a negative clip (and scaled every gradient by a negative number), divided by zero for 0 epochs
    # between validations, and refused the limits with a traceback of its own
    ("retinanet", "trainer.gradient_clip_val=-1", r"trainer\.gradient_clip_val=-1 must be a number >= 0"),
    ("retinanet", "trainer.check_val_every_n_epoch=0", r"trainer\.check_val_every_n_epoch=0 must be a positive"),
    ("retinanet", "trainer.limit_train_batches=-1", r"trainer\.limit_train_batches=-1: use a number of batches"),
    ("retinanet", "trainer.limit_train_batches=1.5", r"trainer\.limit_train_batches=1\.5: use a number of batches"),
    # the speed protocol's settings: each used to stop the run after its last epoch, before results.json
    ("retinanet", "speed.repeats=0", r"speed\.repeats=0 must be an integer >= 1"),
    ("retinanet", "trainer.precision=64-true", r"trainer\.precision='64-true' is not one detlab trains with.*speed protocol"),
    ("retinanet", "speed.precision=16-mixed", r"speed\.precision=16-mixed needs a GPU"),  # before: timed fp16 on CPU
]


@pytest.mark.parametrize(("model", "override", "message"), BAD_VALUES)
def test_a_value_a_component_cannot_take_names_its_key(model, override, message):
    light = [] if "l2_scale" in override else LIGHT.get(model, [])  # SSD's L2 scale is VGG16's own
    with pytest.raises(ConfigError, match=message):
        validate(compose_train([f"model={model}", override, *light]))


# The numeric keys where -1 is a meaning, not a mistake; every other numeric key of every preset refuses it.
MINUS_ONE_MEANS = {
    "model.backbone.frozen_stages": "nothing frozen (mmdetection's convention)",
    "loss.alpha": "no alpha weighting (torchvision's sigmoid_focal_loss)",
    "model.roi.head.sampling_ratio": "RoIAlign's adaptive sampling (any value <= 0)",
}


def numeric_keys(node: dict, prefix: str) -> list[str]:
    """The dotted keys of node's numbers (not of interpolations, which name another key)."""
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += numeric_keys(value, f"{prefix}.{key}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append(f"{prefix}.{key}")
    return keys


@pytest.mark.parametrize("model", options("model"))
def test_every_numeric_key_of_a_preset_refuses_minus_one_unless_it_means_something(model):
    """The sweep that found a negative gradient clip, loss weight, width or anchor offset taken silently, kept:
    a key added to a preset without a check fails here, or joins MINUS_ONE_MEANS with its reason."""
    base = compose_train([f"model={model}", *LIGHT.get(model, [])])
    accepted = []
    for key in [k for group in ("model", "loss") for k in numeric_keys(OmegaConf.to_container(base[group]), group)]:
        cfg = copy.deepcopy(base)
        OmegaConf.update(cfg, key, -1)
        try:
            validate(cfg)
        except ConfigError:
            continue
        accepted.append(key)
    unexplained = sorted(set(accepted) - set(MINUS_ONE_MEANS))
    assert not unexplained, f"model={model} takes -1 for {unexplained}"


def test_issue_example_overrides_compose():
    cfg = compose_train(["model/backbone=resnet50", "loss.gamma=0", "data.image_size=320", "trainer.max_epochs=3"])
    validate(cfg)
    resolved = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "tracking")}
    assert resolved["model"]["backbone"]["depth"] == 50
    assert resolved["loss"]["gamma"] == 0
    assert resolved["tracking"]["name"] == "retinanet-focal"


# detlab's own detectors and the presets that set torchvision's values where they differ (conf/model/tv_*.yaml)
PRESETS = {"retinanet": "tv_retinanet_r50_fpn", "faster_rcnn": "tv_fasterrcnn_r50_fpn", "ssd300": "tv_ssd300_vgg16"}


def _leaves(node, key: str = "") -> dict:
    """{dotted key: value} of every leaf of a plain config container (a list is one value)."""
    if not isinstance(node, dict):
        return {key: node}
    return {k: v for name, child in node.items() for k, v in _leaves(child, f"{key}.{name}" if key else name).items()}


def _value(leaves: dict, key: str):
    """The value of key, or where the config leaves it out, the default of its node's _target_ (else absent)."""
    if key in leaves:
        return leaves[key]
    parent, name = key.rsplit(".", 1)
    target = leaves.get(f"{parent}._target_")
    default = inspect.signature(get_class(target)).parameters.get(name) if target else None
    return default.default if default is not None else "<absent>"


def _differences_table_options() -> set[str]:
    """The names in backticks of the option column of README's differences table (`model.priors.steps`, `clip`)."""
    section = (CONF.parent / "README.md").read_text().split("### Where detlab's defaults differ from torchvision's")[1]
    rows = [line for line in section.split("\n\n")[2].splitlines() if line.startswith("| ")][1:]  # past the header
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[1])}


@pytest.mark.parametrize("own", sorted(PRESETS))
def test_every_difference_from_the_torchvision_preset_is_a_row_of_the_readme_table(own):
    """DESIGN.md: every way in which detlab's defaults differ from the reference is an option, documented in one
    table. The presets set torchvision's values, so every key where one composes differently from detlab's own
    detector must be named in the table's option column: by its name (`min_box_size`), its dotted key, or its
    config group (`model/backbone` for model.backbone.depth). A node whose _target_ differs is one difference."""
    own_leaves, tv_leaves = (_leaves(OmegaConf.to_container(compose_train([f"model={m}"]))) for m in (own, PRESETS[own]))
    replaced = [k[: -len("_target_")] for k, v in own_leaves.items() if k.endswith("._target_") and v != tv_leaves.get(k)]
    options = _differences_table_options()
    undocumented = []
    for key in sorted(set(own_leaves) | set(tv_leaves)):
        inside_replaced = any(key.startswith(node) and not key.endswith("._target_") for node in replaced)
        if key.startswith(("tracking.", "hydra.")) or inside_replaced:
            continue
        if _value(own_leaves, key) == _value(tv_leaves, key):
            continue
        parts = key.split(".")
        name = parts[-2] if parts[-1] == "_target_" else parts[-1]
        named = any(o.split(".")[-1] == name or "/" in o and key.startswith(o.replace("/", ".") + ".") for o in options)
        if not named:
            undocumented.append(key)
    assert not undocumented, f"model={own} differs from model={PRESETS[own]} in {undocumented}, not in README's table"


def test_the_readmes_backbone_swaps_validate():
    """README's examples of a backbone swapped into a detector compose and validate as written (its
    `model=ssd300 model/backbone=resnet50` was refused: ResNet's three maps make SSD300's neck seven levels)."""
    sentence = (CONF.parent / "README.md").read_text().split("Any backbone composes with any detector")[1]
    examples = re.findall(r"`(model=[^`]+)`", sentence.split("an impossible pair")[0].replace("\n", " "))
    assert len(examples) >= 2
    for example in examples:
        validate(compose_train(example.split()))


def test_every_option_of_every_group_is_named_in_the_readmes_config_tree():
    section = (CONF.parent / "README.md").read_text().split("### The config tree")[1].split("\n\n")[1]
    rows = {row.split("|")[1].strip(" `"): row.split("|")[2] for row in section.splitlines()[2:]}
    assert len(rows) >= 10
    for group, options in rows.items():
        files = {path.stem for path in (CONF / group).glob("*.yaml")}
        named = set(re.findall(r"`([^`=\s]+)`", options))
        assert files and files <= named, f"README's config tree, row {group}: {sorted(files - named)} not named"
