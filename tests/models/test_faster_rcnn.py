"""Faster R-CNN (model=faster_rcnn) through the real configs: shapes in training and evaluation, the RPN's and the
RoI stage's batched sampling against torchvision's sampler counts, proposals against a per-image torchvision
loop, the losses against torchvision's formulas, the post-processing against torchvision's per-image
postprocess_detections, and a few training steps with every classification loss of conf/loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from detlab.config import ConfigError, compose_train, validate
from detlab.inference import Predictor
from detlab.models.assigners import MaxIoUAssigner, RoISampler, SampledMaxIoUAssigner, balanced_sample
from detlab.models.box_coder import DeltaXYWHBoxCoder
from detlab.models.detector import Detector
from detlab.models.heads.roi import RoIBoxHead
from detlab.models.priors import AnchorGenerator
from detlab.models.two_stage import ProposalGenerator, RoIPostProcess
from detlab.structures import Batch, HeadOutput, Priors, TwoStageOutput
from tests.conftest import detection_module, make_batch

TINY = ["model.neck.out_channels=16", "model.roi.head.representation_size=32"]
STRIDES = (4, 8, 16, 32, 64)


def build(overrides: list[str] = (), num_classes: int = 3):
    cfg = compose_train(["model=faster_rcnn", *TINY, *overrides])
    validate(cfg)
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model, cls_loss=cfg.loss, num_classes=num_classes)


def tiny_batch() -> Batch:
    """Two 64 x 96 images: two objects and one object (the second row padded); the second image's content is
    60 x 80 px."""
    gt_boxes = torch.tensor([
        [[6.0, 8.0, 38.0, 42.0], [50.0, 20.0, 90.0, 52.0]],
        [[10.0, 26.0, 34.0, 58.0], [0.0, 0.0, 0.0, 0.0]],
    ])
    return make_batch(
        gt_boxes, torch.tensor([[0, 2], [1, 0]]), torch.tensor([[True, True], [True, False]]), size=(64, 96), seed=0,
        image_sizes=torch.tensor([[64, 96], [60, 80]]),
    )


def num_anchors(h: int, w: int) -> int:
    return 3 * sum(math.ceil(h / s) * math.ceil(w / s) for s in STRIDES)


# ---------------------------------------------------------------------------------------------------- shapes


def test_model_choice_sets_the_default_losses_and_the_levels():
    cfg = compose_train(["model=faster_rcnn"])
    assert cfg.loss._target_ == "detlab.losses.softmax.SoftmaxCrossEntropy"
    assert cfg.model.rpn.loss._target_ == "detlab.losses.bce.BinaryCrossEntropy"
    cfg = compose_train(["model=faster_rcnn", "loss=focal", "loss@model.rpn.loss=focal"])
    assert cfg.loss._target_ == cfg.model.rpn.loss._target_ == "detlab.losses.focal.SigmoidFocalLoss"
    _, (model, assigner, criterion, _) = build()
    assert list(model.neck.strides) == list(STRIDES)
    assert model.roi_head.level_names == ["p2", "p3", "p4", "p5", "p6"]
    assert type(assigner) is SampledMaxIoUAssigner and (assigner.pos_iou, assigner.neg_iou) == (0.7, 0.3)
    assert type(criterion.rpn_cls_loss).__name__ == "BinaryCrossEntropy"


def test_forward_shapes_in_training_and_evaluation():
    _, (model, *_) = build()
    batch = tiny_batch()
    outputs, anchors = model(batch.images, targets=batch)
    assert isinstance(outputs, TwoStageOutput) and isinstance(anchors, Priors)
    a = num_anchors(64, 96)
    assert len(anchors) == a
    assert anchors.level_sizes == tuple(3 * math.ceil(64 / s) * math.ceil(96 / s) for s in STRIDES)
    assert outputs.rpn.cls_logits.shape == (2, a, 1) and outputs.rpn.box_reg.shape == (2, a, 4)
    # Training: 512 RoIs sampled per image out of 1000 proposals + 2 gt rows; ce: K + 1 = 4 logits, 3 x 4 deltas
    assert outputs.proposals.shape == (2, 512, 4) and outputs.proposal_valid.shape == (2, 512)
    assert outputs.roi_cls_logits.shape == (2, 512, 4) and outputs.roi_box_reg.shape == (2, 512, 3, 4)
    assert outputs.roi_matched_gt.shape == (2, 512) and outputs.proposal_valid.all()
    assert not outputs.proposals.requires_grad and outputs.roi_cls_logits.requires_grad
    assert ((outputs.roi_matched_gt >= 0).sum(1) <= 128).all()
    for i, m in [(0, 0), (0, 1), (1, 0)]:  # the gts were appended, and (few positives) all drawn, as themselves
        rows = (outputs.proposals[i] == batch.gt_boxes[i, m]).all(-1)
        assert rows.sum() == 1 and outputs.roi_matched_gt[i][rows].item() == m

    model.eval()
    with torch.no_grad():
        outputs, eval_anchors = model(batch.images)
        assert eval_anchors is anchors  # same geometry: the cached anchors
        assert outputs.proposals.shape == (2, 1000, 4) and outputs.roi_cls_logits.shape == (2, 1000, 4)
        assert outputs.roi_box_reg.shape == (2, 1000, 3, 4) and outputs.roi_matched_gt is None
        # Invalid rows are zeros; without targets, proposals are clipped to the padded input (96 x 64)
        assert (outputs.roi_cls_logits[~outputs.proposal_valid] == 0).all()
        assert outputs.proposals[..., 2].max() <= 96 and outputs.proposals[..., 3].max() <= 64

        with_targets, _ = model(batch.images, targets=batch)
        matched, valid = with_targets.roi_matched_gt, with_targets.proposal_valid
        # The RPN's proposals as they are: no gt appended, nothing sampled
        proposals, proposal_valid = model.proposals(with_targets.rpn, anchors, batch.image_sizes)
        assert torch.equal(with_targets.proposals, proposals) and torch.equal(valid, proposal_valid)
        assert not ((proposals[:, :, None] == batch.gt_boxes[:, None]).all(-1) & batch.gt_valid[:, None]).any()
        assert ((matched == -2) == ~valid).all() and matched.max() >= 0  # all valid proposals matched, none sampled
        # Clipped to each image's content (60 x 80 px for the second image)
        assert with_targets.proposals[1, :, 2].max() <= 80 and with_targets.proposals[1, :, 3].max() <= 60


def test_paper_sized_model_has_torchvisions_parameters():
    """ResNet-50, 256-channel FPN, 1024-wide box head, 80 classes: torchvision's fasterrcnn_resnet50_fpn with 81
    classes (background included), less its background box deltas (4 x 1024 weights + 4 biases)."""
    cfg = compose_train(["model=faster_rcnn", "model/backbone=resnet50", "model.neck.out_channels=256",
                         "model.roi.head.representation_size=1024"])
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=80).model
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) - 4 * 1025 == 41_753_056


def test_training_mode_needs_targets():
    _, (model, *_) = build()
    with pytest.raises(ValueError, match="targets=batch"):
        model(torch.zeros(1, 3, 64, 64))


def test_one_stage_detector_ignores_targets():
    cfg = compose_train(["model.neck.out_channels=16", "model.head.width=16", "model.head.depth=1"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3).model
    batch = tiny_batch()
    assert isinstance(model, Detector)
    model.eval()
    with torch.no_grad():
        plain, _ = model(batch.images)
        with_targets, _ = model(batch.images, targets=batch)
    torch.testing.assert_close(plain.cls_logits, with_targets.cls_logits, rtol=0, atol=0)


def test_module_predicts_what_it_evaluates(tmp_path):
    """The Predictor of the module (what the logged images and the end-of-run speed use) gives the detections
    that validation scores:
    the proposals clipped to each image's content (60 x 80 px of 64 x 96 for the second image), not to the
    padded input, which moves the RoIs and so the scores."""
    module = detection_module(tmp_path, ["model=faster_rcnn", *TINY])
    batch = tiny_batch()
    predicted = Predictor.from_module(module).predict_batch(batch)
    with torch.no_grad():
        outputs, priors = module.model(batch.images, targets=batch)
        evaluated = module.postprocess(outputs, priors, batch)
        padded, _ = module.model(batch.images)
    assert not torch.equal(padded.proposals[1], outputs.proposals[1])  # the clipping matters for this batch
    for ours, expected in zip(predicted, evaluated):
        assert len(expected.boxes) > 0
        torch.testing.assert_close(ours.boxes, expected.boxes, rtol=0, atol=0)
        torch.testing.assert_close(ours.scores, expected.scores, rtol=0, atol=0)


def test_training_step_reaches_every_parameter():
    _, (model, assigner, criterion, _) = build()
    batch = tiny_batch()
    outputs, anchors = model(batch.images, targets=batch)
    losses = criterion(outputs, anchors, assigner(outputs, anchors, batch), batch)
    assert set(losses) == {"rpn_cls", "rpn_box", "cls", "box"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# -------------------------------------------------------------------------------------------------- sampling


def hand_made_anchors() -> Priors:
    """200 jittered copies of box P, 40 of box Q (IoU > 0.8 with their box), 100 half-overlapping P (ignored band
    0.3..0.7) and 1000 boxes far from both (background)."""
    g = torch.Generator().manual_seed(0)
    box_p, box_q = torch.tensor([10.0, 10.0, 50.0, 50.0]), torch.tensor([100.0, 100.0, 140.0, 140.0])
    near_p = box_p + torch.rand(200, 4, generator=g) * 2 - 1
    near_q = box_q + torch.rand(40, 4, generator=g) * 2 - 1
    half_p = box_p + torch.tensor([12.0, 0.0, 12.0, 0.0]) + torch.rand(100, 4, generator=g)  # IoU ~0.5
    xy = 160 + torch.rand(1000, 2, generator=g) * 100
    far = torch.cat([xy, xy + 10 + torch.rand(1000, 2, generator=g) * 30], dim=1)
    boxes = torch.cat([near_p, near_q, half_p, far])
    return Priors(boxes, torch.full((len(boxes),), 4.0), (len(boxes),))


def test_rpn_sampling_counts_match_torchvisions_sampler():
    anchors = hand_made_anchors()
    # Image 0: 200 positive anchors (more than 128); image 1: 40; image 2: no object, all background.
    gt_boxes = torch.tensor([[[10.0, 10.0, 50.0, 50.0]], [[100.0, 100.0, 140.0, 140.0]], [[0.0] * 4]])
    valid = torch.tensor([[True], [True], [False]])
    batch = make_batch(gt_boxes, gt_valid=valid, size=300, seed=0)

    unsampled = MaxIoUAssigner(0.7, 0.3, True)(None, anchors, batch)  # [3, A]
    assert (unsampled >= 0).sum(1).tolist() == [200, 40, 0] and (unsampled[0] == -2).sum() == 100
    torch.manual_seed(0)
    matched = SampledMaxIoUAssigner(0.7, 0.3, True, num_samples=256, positive_fraction=0.5)(None, anchors, batch)
    # torchvision's sampler per image, on torchvision's label convention (1 object, 0 background, -1 ignored)
    labels = [torch.where(m >= 0, 1, torch.where(m == -1, 0, -1)) for m in unsampled]
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)(labels)
    assert (matched >= 0).sum(1).tolist() == [p.sum().item() for p in pos] == [128, 40, 0]
    assert (matched == -1).sum(1).tolist() == [n.sum().item() for n in neg] == [128, 216, 256]  # filled up
    sampled = matched != -2
    assert torch.equal(matched[sampled], unsampled[sampled])  # a subset, matches unchanged
    assert not sampled[0, 240:340].any()  # never the ignored band
    # Batched equals per image: each image alone gives the same counts
    for i in range(3):
        single = Batch(**{k: v[i : i + 1] for k, v in vars(batch).items()})
        alone = SampledMaxIoUAssigner(0.7, 0.3, True, 256, 0.5)(None, anchors, single)[0]
        assert ((alone >= 0).sum(), (alone == -1).sum()) == ((matched[i] >= 0).sum(), (matched[i] == -1).sum())


def test_sampling_is_uniform_within_positives_and_background():
    # One row of 300 positives, 500 background and 200 ignored entries in a shuffled order.
    g = torch.Generator().manual_seed(0)
    row = torch.cat([torch.zeros(300, dtype=torch.long), torch.full((500,), -1), torch.full((200,), -2)])
    row = row[torch.randperm(1000, generator=g)]
    torch.manual_seed(0)
    draws = torch.stack([balanced_sample(row[None].repeat(2, 1), 256, 0.5) for _ in range(200)]).flatten(0, 1)
    assert (draws.sum(1) == 256).all() and ((draws & (row >= 0)).sum(1) == 128).all()
    assert not (draws & (row == -2)).any()
    frequency = draws.float().mean(0)  # 400 draws: binomial standard error ~0.025
    assert (frequency[row >= 0] - 128 / 300).abs().max() < 0.12
    assert (frequency[row == -1] - 128 / 500).abs().max() < 0.12


def test_sampling_with_fewer_candidates_takes_them_all():
    row = torch.tensor([[0, 1, -1, -2, -1, -2, 2, -1], [-2, -2, -2, -2, -2, -2, -2, -1]])
    sampled = balanced_sample(row, num_samples=256, positive_fraction=0.5)
    assert torch.equal(sampled, row != -2)
    capped = balanced_sample(row, num_samples=4, positive_fraction=0.25)  # 1 positive at most, 3 background
    assert ((capped & (row >= 0)).sum(1).tolist(), capped.sum(1).tolist()) == ([1, 0], [4, 1])


def test_roi_sampler_appends_the_gts_and_draws_512_with_a_quarter_positive():
    torch.manual_seed(0)
    gt_boxes = torch.tensor([
        [[10.0, 10.0, 60.0, 60.0], [80.0, 20.0, 150.0, 100.0]],
        [[30.0, 40.0, 90.0, 70.0], [0.0] * 4],
    ])
    batch = make_batch(gt_boxes, torch.tensor([[1, 2], [0, 0]]), torch.tensor([[True, True], [True, False]]), size=160,
                       seed=0)
    # 1000 proposals per image: jittered copies of the gts (many positives) and random boxes (background)
    g = torch.Generator().manual_seed(1)
    near = gt_boxes[:, :1].repeat(1, 400, 1) + torch.randn(2, 400, 4, generator=g) * 3
    xy = torch.rand(2, 600, 2, generator=g) * 120
    far = torch.cat([xy, xy + 5 + torch.rand(2, 600, 2, generator=g) * 35], dim=-1)
    proposals = torch.cat([near, far], dim=1)
    valid = torch.ones(2, 1000, dtype=torch.bool)
    valid[1, 900:] = False  # padded rows: never drawn
    rois, roi_valid, matched = RoISampler(0.5, 0.5, 512, 0.25)(proposals, valid, batch)
    assert rois.shape == (2, 512, 4) and roi_valid.all()
    with_gts = torch.cat([proposals, gt_boxes], 1), torch.cat([valid, batch.gt_valid], 1)
    expected = RoISampler(0.5, 0.5).match(*with_gts, batch)
    assert ((expected >= 0).sum(1) > 128).all()  # enough positives: the quarter is the cap
    assert (matched >= 0).sum(1).tolist() == [128, 128] and (matched == -1).sum(1).tolist() == [384, 384]
    # each sampled RoI keeps its own match, recomputed from scratch on the sampled boxes
    iou = box_iou(rois.reshape(-1, 4), gt_boxes.reshape(-1, 4)).view(2, 512, 2, 2)[[0, 1], :, [0, 1]]
    iou = torch.where(batch.gt_valid[:, None], iou, -1.0)
    best_iou, best_gt = iou.max(dim=2)
    assert torch.equal(matched, torch.where(best_iou >= 0.5, best_gt, -1))
    assert not any(((rois[1, :, None] == proposals[1, 900:][None]).all(-1)).any(1))  # no padded proposal

    # With few positives, the gt boxes are among them: appended, matched to themselves
    few = far.repeat(1, 2, 1)[:, :1000]  # random boxes only
    rois, roi_valid, matched = RoISampler(0.5, 0.5, 512, 0.25)(few, torch.ones(2, 1000, dtype=torch.bool), batch)
    for i, count in enumerate([2, 1]):
        for m in range(count):
            rows = (rois[i] == gt_boxes[i, m]).all(-1)
            assert rows.any() and (matched[i][rows] == m).all()
    assert ((matched >= 0).sum(1) < 128).all() and (roi_valid.sum(1) == 512).all()  # filled with background


# ------------------------------------------------------------------------------------------------- proposals


def reference_proposals(
    rpn: HeadOutput, anchors: Priors, image_sizes, pre_n, post_n, nms_iou, min_size, per_level=False
):
    """torchvision's RPN filter_proposals, one image at a time: NMS per image and level (per_level, as
    torchvision) or per image over all levels (detlab's default)."""
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    starts = torch.tensor((0,) + anchors.level_sizes).cumsum(0).tolist()
    results = []
    for i in range(len(rpn.box_reg)):
        logits, deltas = rpn.cls_logits[i, :, 0], rpn.box_reg[i]
        index = torch.cat([
            start + logits[start : start + size].topk(min(pre_n, size)).indices
            for start, size in zip(starts, anchors.level_sizes)
        ])
        boxes = coder.decode_single(deltas[index], anchors.boxes[index])
        boxes = clip_boxes_to_image(boxes, tuple(image_sizes[i].tolist()))
        scores = logits[index]
        levels = torch.bucketize(index, torch.tensor(starts[1:]), right=True) if per_level else torch.zeros_like(index)
        keep = remove_small_boxes(boxes, min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, nms_iou)[:post_n]
        results.append(boxes[keep])
    return results


@pytest.mark.parametrize("per_level", [False, True])
@pytest.mark.parametrize("pre_n, post_n", [(60, 50), (300, 2000)])
def test_batched_proposals_equal_a_per_image_loop(pre_n, post_n, per_level):
    g = torch.Generator().manual_seed(0)
    generator = AnchorGenerator(sizes=(16, 32, 64), scales=(1.0,), aspect_ratios=(0.5, 1.0, 2.0))
    anchors = generator([(24, 24), (12, 12), (6, 6)], [4, 8, 16], "cpu")
    num_images = 3
    rpn = HeadOutput(
        cls_logits=torch.randn(num_images, len(anchors), 1, generator=g) * 3,
        box_reg=torch.randn(num_images, len(anchors), 4, generator=g) * 0.3,
    )
    rpn.box_reg[2, :500, 2:] = -8.0  # tiny boxes on part of the third image: min_size drops them
    image_sizes = torch.tensor([[96, 96], [80, 64], [96, 50]])
    proposals = ProposalGenerator(
        DeltaXYWHBoxCoder(), pre_nms_top_n=pre_n, post_nms_top_n=post_n, min_size=0.5, nms_per_level=per_level
    )
    boxes, valid = proposals(rpn, anchors, image_sizes)
    assert boxes.shape == (num_images, post_n, 4) and valid.shape == (num_images, post_n)
    expected = reference_proposals(rpn, anchors, image_sizes, pre_n, post_n, 0.7, 0.5, per_level)
    other = reference_proposals(rpn, anchors, image_sizes, pre_n, post_n, 0.7, 0.5, not per_level)
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(expected, other))  # the option acts
    for i in range(num_images):
        assert valid[i].sum() == len(expected[i]) and valid[i, : len(expected[i])].all()  # valid rows first
        torch.testing.assert_close(boxes[i, valid[i]], expected[i], msg=f"image {i}")
        assert (boxes[i, ~valid[i]] == 0).all()
    counts = valid.sum(1)
    assert (counts == post_n).any() if post_n == 50 else (counts < post_n).all()  # the cap, or padding


def test_proposals_take_the_train_or_eval_top_n():
    generator = AnchorGenerator(sizes=(16, 32), scales=(1.0,), aspect_ratios=(1.0,))
    anchors = generator([(16, 16), (8, 8)], [4, 8], "cpu")
    g = torch.Generator().manual_seed(0)
    rpn = HeadOutput(torch.randn(1, len(anchors), 1, generator=g), torch.zeros(1, len(anchors), 4))
    proposals = ProposalGenerator(DeltaXYWHBoxCoder(), 100, 7, 50, 5, nms_iou=1.0)
    assert proposals(rpn, anchors, torch.tensor([[64, 64]]))[0].shape == (1, 7, 4)
    proposals.eval()
    boxes, valid = proposals(rpn, anchors, torch.tensor([[64, 64]]))
    assert boxes.shape == (1, 5, 4) and valid.all()


# ----------------------------------------------------------------------------------------------------- losses


def test_losses_follow_torchvisions_formulas():
    """RPN: BCE mean and smooth L1 (beta 1/9) sum over the sampled anchors / their number; RoI head: torchvision's
    fastrcnn_loss (CE mean, smooth L1 beta 1/9 of the gt class's deltas / sampled RoIs) with its beta set here."""
    _, (model, assigner, criterion, _) = build(["model.roi.box_loss.beta=0.1111111111111111"])
    batch = tiny_batch()
    outputs, anchors = model(batch.images, targets=batch)
    matched = assigner(outputs, anchors, batch)
    losses = criterion(outputs, anchors, matched, batch)

    sampled, positive = matched != -2, matched >= 0
    image, gt = positive.nonzero()[:, 0], matched[positive]
    rpn_cls = F.binary_cross_entropy_with_logits(outputs.rpn.cls_logits[..., 0][sampled], positive[sampled].float())
    positive_anchors = anchors.boxes.expand(2, -1, -1)[positive]
    targets = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(batch.gt_boxes[image, gt], positive_anchors)
    rpn_box = F.smooth_l1_loss(outputs.rpn.box_reg[positive], targets, beta=1 / 9, reduction="sum") / sampled.sum()
    torch.testing.assert_close(losses["rpn_cls"], rpn_cls)
    torch.testing.assert_close(losses["rpn_box"], rpn_box)

    roi_matched = outputs.roi_matched_gt
    rois = roi_matched != -2
    labels = torch.where(roi_matched >= 0, batch.gt_labels.gather(1, roi_matched.clamp(min=0)) + 1, 0)[rois]
    gt_boxes = batch.gt_boxes.gather(1, roi_matched.clamp(min=0)[..., None].expand(-1, -1, 4))[rois]
    regression_targets = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt_boxes, outputs.proposals[rois])
    box_regression = F.pad(outputs.roi_box_reg[rois], (0, 0, 1, 0)).flatten(1)  # a zero background class first
    cls, box = fastrcnn_loss(outputs.roi_cls_logits[rois], box_regression, [labels], [regression_targets])
    torch.testing.assert_close(losses["cls"], cls)
    torch.testing.assert_close(losses["box"], box)
    assert (labels > 0).sum() > 2  # the RoI box term had something to compare


@pytest.mark.parametrize(
    "loss, num_outputs", [("focal", 3), ("bce", 3), ("ce", 4), ("ce_ohem", 4), ("softmax_focal", 4)]
)
def test_every_loss_trains_a_fixed_batch(loss, num_outputs, fits_fixed_batch):
    _, parts = build([f"loss={loss}"])

    def check(outputs, anchors, losses):
        assert outputs.roi_cls_logits.shape[-1] == num_outputs

    fits_fixed_batch(parts, tiny_batch(), num_classes=3, check=check)


def test_rpn_takes_a_focal_objectness_loss():
    _, (model, assigner, criterion, _) = build(["loss@model.rpn.loss=focal"])
    assert type(criterion.rpn_cls_loss).__name__ == "SigmoidFocalLoss"
    batch = tiny_batch()
    outputs, anchors = model(batch.images, targets=batch)
    matched = assigner(outputs, anchors, batch)
    losses = criterion(outputs, anchors, matched, batch)
    sampled, positive = matched != -2, (matched >= 0).float()
    logits = outputs.rpn.cls_logits[..., 0]
    p = torch.sigmoid(logits)
    p_t = torch.where(positive > 0, p, 1 - p)
    alpha_t = torch.where(positive > 0, 0.25, 0.75)
    focal = -(alpha_t * (1 - p_t) ** 2 * torch.log(p_t))[sampled].sum() / sampled.sum()
    torch.testing.assert_close(losses["rpn_cls"], focal)


# ---------------------------------------------------------------------------------------------- postprocess


def reference_detections(outputs: TwoStageOutput, batch: Batch, thresh: float, nms_iou: float, max_det: int):
    """torchvision's RoIHeads.postprocess_detections, one image at a time (softmax, background column 0)."""
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    results = []
    for i in range(len(batch)):
        valid = outputs.proposal_valid[i]
        proposals, logits = outputs.proposals[i][valid], outputs.roi_cls_logits[i][valid]
        deltas = outputs.roi_box_reg[i][valid]  # [N, K, 4]
        num_rois, num_classes = deltas.shape[:2]
        boxes = coder.decode_single(deltas.reshape(-1, 4), proposals.repeat_interleave(num_classes, 0))
        boxes = clip_boxes_to_image(boxes, tuple(batch.image_sizes[i].tolist()))
        scores = logits.softmax(-1)[:, 1:].reshape(-1)
        labels = torch.arange(num_classes).repeat(num_rois)
        keep = torch.where(scores > thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_det]
        offset, scale = batch.offsets[i].repeat(2), batch.scales[i].repeat(2)
        results.append(((boxes[keep] - offset) / scale, scores[keep], labels[keep]))
    return results


def test_postprocess_matches_torchvisions_per_image_reference():
    g = torch.Generator().manual_seed(0)
    num_images, num_rois, num_classes = 3, 200, 4
    xy = torch.rand(num_images, num_rois, 2, generator=g) * 60
    proposals = torch.cat([xy, xy + 4 + torch.rand(num_images, num_rois, 2, generator=g) * 30], dim=-1)
    valid = torch.rand(num_images, num_rois, generator=g) < 0.8
    proposals = torch.where(valid[..., None], proposals, 0.0)
    outputs = TwoStageOutput(
        rpn=HeadOutput(torch.zeros(num_images, 1, 1), torch.zeros(num_images, 1, 4)),
        proposals=proposals, proposal_valid=valid,
        roi_cls_logits=torch.randn(num_images, num_rois, num_classes + 1, generator=g) * 2,
        roi_box_reg=torch.randn(num_images, num_rois, num_classes, 4, generator=g),
    )
    batch = make_batch(
        num_images=num_images, size=80, seed=0, image_sizes=torch.tensor([[80, 80], [60, 70], [50, 80]]),
        scales=torch.rand(num_images, 2, generator=g) + 0.5,
        offsets=torch.rand(num_images, 2, generator=g) * 4,
    )
    postprocess = RoIPostProcess(DeltaXYWHBoxCoder((10.0, 10.0, 5.0, 5.0)), 0.2, 0.5, 30, softmax=True)
    detections = postprocess(outputs, None, batch)
    expected = reference_detections(outputs, batch, 0.2, 0.5, 30)
    for i, (det, (boxes, scores, labels)) in enumerate(zip(detections, expected)):
        torch.testing.assert_close(det.boxes, boxes, msg=f"image {i}")
        torch.testing.assert_close(det.scores, scores, msg=f"image {i}")
        assert torch.equal(det.labels, labels), f"image {i}"
    assert max(len(d.scores) for d in detections) == 30 and min(len(d.scores) for d in detections) > 0


# ----------------------------------------------------------------------------------------------------- config


def test_impossible_two_stage_settings_name_the_key():
    with pytest.raises(ConfigError, match="loss@model.rpn.loss=bce"):
        validate(compose_train(["model=faster_rcnn", "loss@model.rpn.loss=ce_ohem"]))
    with pytest.raises(ConfigError, match="model.roi.head.featmap_names"):
        validate(compose_train(["model=faster_rcnn", "model.roi.head.featmap_names=[p2,p7]"]))
    with pytest.raises(ConfigError, match="consecutive"):
        validate(compose_train(["model=faster_rcnn", "model.roi.head.featmap_names=[p2,p4]"]))
    # A neck with one width per level: the RPN's conv and the box head serve every level, so they need one width
    with pytest.raises(ConfigError, match=r"^model.rpn.head.in_channels=\[64, 128, 256, 512\] from model.neck.*"
                                          r"model/neck=fpn or fpn_p2p6"):
        validate(compose_train(["model=faster_rcnn", "model/neck=yolo", "model.priors.sizes=[16,32,64,128]"]))
    with pytest.raises(ConfigError, match=r"model.roi.head.in_channels=\[16, 16, 16, 16\] from model.neck"):
        RoIBoxHead(in_channels=[16] * 4, level_strides=[4, 8, 16, 32], num_outputs=4, num_classes=3)
    with pytest.raises(ConfigError, match="model.backbone.out_indices"):  # VGG16 has no C2..C5
        validate(compose_train(["model=faster_rcnn", "model/backbone=vgg16"]))
    validate(compose_train(["model=faster_rcnn", "model.roi.head.featmap_names=[p3,p4,p5,p6]"]))
