"""SSD300/SSD512 through the real configs: composition, default boxes (8732, against torchvision), shapes,
matching against torchvision's SSDMatcher, and a training step with every classification loss."""

import pytest
import torch
from hydra.utils import instantiate
from torchvision.models.detection._utils import SSDMatcher
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TVDefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detlab.config import ConfigError, compose_train, validate
from detlab.losses.focal import SigmoidFocalLoss
from detlab.losses.softmax import HardNegativeMiningCE, SoftmaxFocalLoss
from detlab.models.heads.common import prior_bias
from detlab.models.heads.ssd import SSDHead
from detlab.models.necks.ssd import SSDNeck
from detlab.models.priors import DefaultBoxGenerator
from detlab.structures import Batch
from tests.conftest import make_batch

SSD300_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
SSD512_MAPS = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
# SSD300 at 64 px for CPU tests: the same network with every extra layer a padded stride-2 conv (8, 4, 2, 1, 1, 1).
TINY = ["data.image_size=64", "model.neck.extra_strides=[2,2,2,2]", "model.neck.extra_paddings=[1,1,1,1]"]


def build(overrides: list[str], num_classes: int = 3):
    cfg = compose_train(overrides)
    validate(cfg)
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model, cls_loss=cfg.loss, num_classes=num_classes)


def test_model_choice_sets_input_size_and_default_loss():
    cfg = compose_train(["model=ssd300"])
    assert (cfg.data.image_size, cfg.data.size_divisor, cfg.model.priors.image_size) == (300, 1, 300)
    assert cfg.loss._target_ == "detlab.losses.softmax.HardNegativeMiningCE" and cfg.loss.neg_pos_ratio == 3.0
    cfg = compose_train(["model=ssd300", "loss=focal"])  # the command line still chooses the loss
    assert cfg.loss._target_ == "detlab.losses.focal.SigmoidFocalLoss" and cfg.data.image_size == 300
    cfg = compose_train(["model=ssd512"])
    assert (cfg.data.image_size, cfg.model.priors.image_size, cfg.loss._target_.rsplit(".", 1)[1]) == (
        512, 512, "HardNegativeMiningCE"
    )
    assert len(cfg.model.neck.extra_channels) == 5 and len(cfg.model.priors.aspect_ratios) == 7
    cfg = compose_train(["model=retinanet"])  # unaffected by the SSD configs
    assert (cfg.data.image_size, cfg.data.size_divisor, cfg.loss._target_) == (
        160, 32, "detlab.losses.focal.SigmoidFocalLoss"
    )
    for overrides in (["model=ssd300"], ["model=ssd512"], ["model=ssd300", "loss=focal"]):
        validate(compose_train(overrides))


def test_impossible_ssd_settings_name_the_key():
    with pytest.raises(ConfigError, match="data.size_divisor"):
        validate(compose_train(["model=ssd300", "data.size_divisor=32"]))
    with pytest.raises(ConfigError, match="model.priors.image_size"):
        validate(compose_train(["model=ssd300", "model.priors.image_size=512"]))
    # ResNet's three maps + 4 extra levels = 7 source maps for SSD300's 6 ratio lists
    with pytest.raises(ConfigError, match="model.priors.aspect_ratios"):
        validate(compose_train(["model=ssd300", "model/backbone=resnet18"]))


@pytest.mark.parametrize("model", ["ssd300", "tv_ssd300_vgg16"])
def test_inputs_that_are_not_the_square_are_refused(model):
    """keep_ratio makes a 300 x 450 input of a landscape image, whose right third the default boxes (fractions of
    the 300 px side) never reach: torchvision's DefaultBoxGenerator, which scales x by the input's width, puts
    the last centres at 446 px on that input; detlab's stop at 297."""
    with pytest.raises(ConfigError, match="data.resize='keep_ratio'"):
        validate(compose_train([f"model={model}", "data.resize=keep_ratio", "data.size_divisor=1"]))
    for resize in ("letterbox", "stretch"):  # both give exactly data.image_size x data.image_size
        validate(compose_train([f"model={model}", f"data.resize={resize}", "data.size_divisor=1"]))


def test_ssd300_has_the_papers_8732_default_boxes_equal_to_torchvision():
    cfg = compose_train(["model=ssd300"])
    generator = instantiate(cfg.model.priors)
    priors = generator(SSD300_MAPS, [8, 16, 32, 64, 64, 64], "cpu")
    assert len(priors) == 8732 and generator.num_per_location == [4, 6, 6, 6, 4, 4]
    assert priors.level_sizes == (38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 4)
    # torchvision's generator with the same scales, centres (j + 0.5) / f_k (its steps=None) and no clipping
    # (its clip=True clamps w, h to the image side; caffe's SSD300 does not clip): the same float32 arithmetic.
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    tv = TVDefaultBoxGenerator(ratios, scales=list(cfg.model.priors.scales), clip=False)
    maps = [torch.zeros(1, 1, h, w) for h, w in SSD300_MAPS]
    expected = tv(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), maps)[0]
    assert torch.equal(priors.boxes, expected)
    # The paper's SSD300 sizes in pixels (mmdetection's [30, 60, 111, 162, 213, 264, 315]), level 0 and 5:
    sides = priors.boxes[:, 2:] - priors.boxes[:, :2]
    expected_sides = [[30, 30], [(30 * 60) ** 0.5] * 2, [30 * 2**0.5, 30 / 2**0.5], [30 / 2**0.5, 30 * 2**0.5]]
    torch.testing.assert_close(sides[:4], torch.tensor(expected_sides))
    torch.testing.assert_close(sides[-3], torch.tensor([264 * 315]).sqrt().repeat(2))


@pytest.mark.parametrize("steps", [None, [8, 16, 32, 64, 100, 300]])
@pytest.mark.parametrize("clip", [False, True])
def test_steps_and_clip_are_torchvisions_tiling(steps, clip):
    """torchvision's SSD300 boxes (COCO scales, caffe's steps, clipped), each option on its own, bit for bit."""
    ratios, scales = [[2], [2, 3], [2, 3], [2, 3], [2], [2]], [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    generator = DefaultBoxGenerator(300, scales, ratios, steps=steps, clip=clip)
    priors = generator(SSD300_MAPS, [8, 16, 32, 64, 64, 64], "cpu")
    tv = TVDefaultBoxGenerator(ratios, scales=scales, steps=steps, clip=clip)
    maps = [torch.zeros(1, 1, h, w) for h, w in SSD300_MAPS]
    assert torch.equal(priors.boxes, tv(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), maps)[0])
    centres = (priors.boxes[:, :2] + priors.boxes[:, 2:]) / 2
    level_0_last = centres[38 * 38 * 4 - 1].tolist()  # conv4_3's last cell: 37.5 of 38 cells, or 37.5 steps of 8 px
    assert level_0_last == pytest.approx([300 * 37.5 / 38] * 2 if steps is None else [300.0] * 2)
    sides = priors.boxes[-4:, 2:] - priors.boxes[-4:, :2]  # the 1 x 1 map's widest box: 0.87 sqrt(2) = 1.23
    assert sides.max().item() == pytest.approx(300.0 if clip else 300 * 0.87 * 2**0.5)


# VGG16 + SSD300's layers at 400 and 512 px: the maps torchvision's tiling would be given
MAPS_AT = {400: [(50, 50), (25, 25), (13, 13), (7, 7), (5, 5), (3, 3)],
           512: [(64, 64), (32, 32), (16, 16), (8, 8), (6, 6), (4, 4)]}


@pytest.mark.parametrize("size", sorted(MAPS_AT))
def test_fixed_steps_at_another_input_side_are_refused(size):
    """torchvision's SSD300 steps tile a 300 px input; at another side torchvision's own generator centres whole
    cells of default boxes outside the input (at 512 px up to 1050 px), where no object can match them: validate
    refuses model=tv_ssd300_vgg16 there, naming model.priors.steps (before, it trained with them silently)."""
    ratios, scales = [[2], [2, 3], [2, 3], [2, 3], [2], [2]], [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    tv = TVDefaultBoxGenerator(ratios, scales=scales, steps=[8, 16, 32, 64, 100, 300], clip=True)
    maps = [torch.zeros(1, 1, h, w) for h, w in MAPS_AT[size]]
    boxes = tv(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0]
    assert ((boxes[:, :2] + boxes[:, 2:]) / 2).max() > size + 100
    with pytest.raises(ConfigError, match=r"model\.priors\.steps\[\d\]=\d+ spaces level .*steps=null"):
        validate(compose_train(["model=tv_ssd300_vgg16", f"data.image_size={size}"]))
    validate(compose_train(["model=tv_ssd300_vgg16", f"data.image_size={size}", "model.priors.steps=null"]))


def test_ssd512_has_24564_default_boxes():
    generator = instantiate(compose_train(["model=ssd512"]).model.priors)
    priors = generator(SSD512_MAPS, [8, 16, 32, 64, 128, 256, 256], "cpu")
    assert len(priors) == 24564 and generator.num_per_location == [4, 6, 6, 6, 6, 4, 4]
    centres = (priors.boxes[: 64 * 64 * 4 : 4, :2] + priors.boxes[: 64 * 64 * 4 : 4, 2:]) / 2
    assert centres[:2].tolist() == [[4.0, 4.0], [12.0, 4.0]]  # 512 / 64 = 8 px cells, y-major


@pytest.mark.parametrize("model, maps", [("ssd300", SSD300_MAPS), ("ssd512", SSD512_MAPS)])
def test_full_size_forward_shapes(model, maps):
    _, parts = build([f"model={model}"])
    size = 300 if model == "ssd300" else 512
    net = parts.model.to("meta")  # shapes only: no arithmetic at full size on a CPU
    levels = net.neck(net.backbone(torch.zeros(2, 3, size, size, device="meta")))
    assert [tuple(x.shape[-2:]) for x in levels] == maps
    channels = [512, 1024, 512, 256, 256, 256, 256][: len(maps)]
    assert [x.shape[1] for x in levels] == list(net.neck.out_channels) == channels
    outputs, priors = net(torch.zeros(2, 3, size, size, device="meta"))
    assert len(priors) == (8732 if model == "ssd300" else 24564)
    assert tuple(outputs.cls_logits.shape) == (2, len(priors), 4)  # ce_ohem: K + 1 = 4 outputs
    assert tuple(outputs.box_reg.shape) == (2, len(priors), 4)


def test_other_backbones_compose_where_the_shapes_allow():
    # ResNet C3, C4 have SSD300's first two map sizes at 300 px (ceil(300 / 8) = 38, ceil(300 / 16) = 19).
    _, parts = build(["model=ssd300", "model/backbone=resnet18", "model.backbone.out_indices=[2,3]"])
    assert parts.model.neck.out_channels[:2] == (128, 256)
    outputs, priors = parts.model.to("meta")(torch.zeros(1, 3, 300, 300, device="meta"))
    assert len(priors) == 8732 and outputs.box_reg.shape[1] == 8732


def test_matching_is_ssds_best_box_per_object_plus_iou_half():
    generator = instantiate(compose_train(["model=ssd300"]).model.priors)
    priors = generator(SSD300_MAPS, [8, 16, 32, 64, 64, 64], "cpu")
    assigner = instantiate(compose_train(["model=ssd300"]).model.assigner)
    torch.manual_seed(1)
    # Separate objects of 20..150 px, and a 12 px one below every default box's 0.5 IoU, in a 300 px image.
    xy = torch.tensor([[10.0, 10.0], [160.0, 20.0], [20.0, 170.0], [170.0, 170.0], [120.0, 120.0]])
    wh = torch.tensor([[20.0, 35.0], [130.0, 90.0], [60.0, 120.0], [110.0, 115.0], [12.0, 12.0]])
    gt = torch.cat([xy, xy + wh], dim=1) + torch.rand(5, 4)
    batch = make_batch(gt[None], size=300)
    matched = assigner(None, priors, batch)[0]
    iou = box_iou(gt, priors.boxes)
    # torchvision's: -1 below 0.5, plus each gt's best prior (torch's argmax: the first one of a tie). The 12 px
    # object lies wholly inside several 30 px boxes of level 0, all at IoU 144 / 900 (12 of them to the last
    # float32 bit: the boxes' sides differ in the last bit from cell to cell); the first alone is forced.
    tied = iou == iou.max(dim=1, keepdim=True).values  # [5, A]
    assert tied.sum(dim=1).tolist() == [1, 1, 1, 1, 12]
    assert torch.equal(matched, SSDMatcher(0.5)(iou))
    assert (matched[tied[4]] == 4).sum() == 1
    assert matched.min() == -1 and not (matched == -2).any()  # no ignored band below 0.5


def _tiny_batch() -> Batch:
    """Two 64 px images: two objects and one object (the second row padded)."""
    torch.manual_seed(0)
    gt_boxes = torch.tensor([
        [[6.0, 8.0, 38.0, 42.0], [30.0, 20.0, 60.0, 52.0]],
        [[10.0, 26.0, 34.0, 62.0], [0.0, 0.0, 0.0, 0.0]],
    ])
    return make_batch(gt_boxes, torch.tensor([[0, 2], [1, 0]]), torch.tensor([[True, True], [True, False]]), seed=0)


@pytest.mark.parametrize("loss, cls_loss_type, num_outputs", [
    ("ce_ohem", HardNegativeMiningCE, 4), ("ce", None, 4), ("focal", SigmoidFocalLoss, 3), ("bce", None, 3),
    ("softmax_focal", SoftmaxFocalLoss, 4),
])
def test_training_step_with_each_loss_decreases_the_loss(loss, cls_loss_type, num_outputs, fits_fixed_batch):
    _, parts = build(["model=ssd300", f"loss={loss}"] + TINY)
    model, _, criterion, _ = parts
    if cls_loss_type is not None:
        assert type(criterion.cls_loss) is cls_loss_type  # focal replaces the mining, not adds to it
    # The prior-probability init in the loss's layout: sigmoid -log(99) per class, softmax log(K * 99) background.
    head: SSDHead = model.head
    expected_bias = prior_bias(num_outputs, 0.01, background_first=num_outputs == 4)
    torch.testing.assert_close(head.cls_convs[2].bias.view(6, num_outputs), expected_bias.repeat(6, 1))
    batch = _tiny_batch()
    model.backbone.requires_grad_(False)  # VGG's backward dominates on a CPU; the next test covers it

    def check(outputs, priors, losses):
        assert outputs.cls_logits.shape == (2, 390, num_outputs) and len(priors) == 390  # 8*8*4 + 16*6 + 4*6 + 6+4+4

    fits_fixed_batch(parts, batch, num_classes=3, steps=5, check=check)


def test_gradients_reach_vgg_neck_and_head():
    _, (model, assigner, criterion, _) = build(["model=ssd300"] + TINY)
    batch = _tiny_batch()
    outputs, priors = model(batch.images)
    sum(criterion(outputs, priors, assigner(outputs, priors, batch), batch).values()).backward()
    # (Levels where hard negative mining picks no prior and nothing is matched get no gradient at all.)
    for part in (model.backbone.features[0], model.backbone.l2norm, model.backbone.fc7, model.neck.extra,
                 model.head.cls_convs, model.head.box_convs):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part


def test_neck_and_head_errors_name_the_key():
    neck = SSDNeck([512, 1024], [8, 16], [512, 256], [256, 128], [3, 3], [1, 1], [0, 0])
    with pytest.raises(ValueError, match="data.image_size"):
        neck([torch.zeros(1, 512, 8, 8), torch.zeros(1, 1024, 3, 3)])  # 3 -> 1 -> a 3x3 conv on 1x1
    with pytest.raises(ValueError, match="model.neck.extra_channels"):
        SSDNeck([512], [8], [512, 256], [256], [3, 3], [2, 2], [1, 1])
    with pytest.raises(ValueError, match="model.head"):
        SSDHead(in_channels=64, num_anchors=[4, 6], num_classes=3)
    with pytest.raises(ValueError, match="model.priors.scales"):
        DefaultBoxGenerator(300, [0.1, 0.2], [[2], [2]])
    with pytest.raises(ValueError, match="model.priors.aspect_ratios"):
        DefaultBoxGenerator(300, [0.1, 0.2, 0.3], [[2], [2]])([(4, 4)], [8], "cpu")
    with pytest.raises(ValueError, match="model.priors.steps"):
        DefaultBoxGenerator(300, [0.1, 0.2, 0.3], [[2], [2]], steps=[8, 16, 32])
