"""make bench's rows: detlab against torchvision's own implementations of the same algorithm, timed in one run
(the command is detlab.cli.bench).

Every row times both sides on identical inputs under detlab's speed protocol (detlab.profile.speed: warm-up
iterations, device synchronisation around every clock read, the median of the repeats, the two sides
alternating in every repeat so that anything else on the machine slows both alike) and gives the ratio
reference / detlab: above 1 detlab is faster.

Parts, RetinaNet R50-FPN (256 channels, 4-conv towers, 9 anchors, 80 classes) with random weights:
- forward:     backbone + FPN + head (detlab's Detector, torchvision's RetinaNet backbone and head);
- loss:        assignment + focal loss + box loss (detlab's batched MaxIoUAssigner and DenseDetectionLoss,
               torchvision's RetinaNet.compute_loss, which loops over images in Python);
- postprocess: decode, top-k per level, NMS (DensePostProcess, torchvision's postprocess_detections, also a
               per-image loop);
- COCO eval:   each engine (hotcoco, detlab's default, and faster-coco-eval) against pycocotools, the
               reference, on one synthetic results file, from reading the files to the 12 numbers.

Whole steps, for each torchvision preset (`model=tv_*`) at each of --step-batch-sizes: torchvision's detector
with seeded random weights, converted into the preset by `model.weights` (the same weights on both sides), on
the same random photographs (landscape and portrait, so that a batch pads), the preset resized as torchvision
resizes (shorter side --step-image-size, longer at most --step-max-size; SSD300 to its fixed 300 x 300):
- train step:  detlab's forward + assignment + loss + backward + SGD step, from the Batch its data loader
               delivers; torchvision's train-mode `model(images, targets)` + backward + the same SGD step, from
               the float images its data loader delivers (its resize and normalisation run inside the model);
- inference:   end to end from uint8 RGB arrays to detections in original pixels: detlab's Predictor (eval
               transform, collate, model, post-processing) against torchvision's `model.eval()(images)`.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities import move_data_to_device
from torch import nn
from torchvision.models import detection
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from detlab.config import compose_train
from detlab.data.collate import collate
from detlab.data.datamodule import eval_transform
from detlab.errors import ConfigError
from detlab.evaluation.backends import BACKENDS
from detlab.evaluation.results_file import evaluate_results_file
from detlab.files import write_text_atomically
from detlab.inference import Predictor
from detlab.profile.speed import PRECISIONS, describe_allocator, environment, summarize_ms, synchronizer, time_stages
from detlab.structures import Batch, HeadOutput

NUM_CLASSES = 80
# detlab's config of torchvision's retinanet_resnet50_fpn (P6 from P5 as its v1 does; the paper's anchor sizes)
RETINANET_R50 = [
    "model/backbone=resnet50",
    "model.neck.out_channels=256",
    "model.neck.extra_source=p5",
    "model.head.width=256",
    "model.head.depth=4",
    "model.priors.sizes=[32,64,128,256,512]",
]
# The whole-step rows: detlab's preset -> torchvision's builder of the same detector (its weights convert through
# model.weights).
PRESETS = {"tv_retinanet_r50_fpn": "retinanet_resnet50_fpn", "tv_fasterrcnn_r50_fpn": "fasterrcnn_resnet50_fpn",
           "tv_ssd300_vgg16": "ssd300_vgg16"}
TRAINABLE = ("layer2", "layer3", "layer4")  # torchvision's trainable_backbone_layers=3, as its published models
OBJECTS = 10  # ground-truth boxes per training image
PHOTO_SHAPE = (480, 640)  # (h, w) of the random photographs; every other one is portrait


def compare(what: str, ours: Callable[[], object], reference: Callable[[], object], warmup: int, repeats: int,
            device: torch.device, **conditions: Any) -> dict[str, Any]:
    """One row: detlab's and the reference's median ms (and their ratio) with the conditions they hold under,
    the two calls alternating in every repeat so that anything else on the machine slows both alike."""
    stages = [("detlab", lambda _: ours()), ("reference", lambda _: reference())]
    times = time_stages(stages, None, warmup, repeats, synchronizer(device))
    ours_ms, reference_ms = summarize_ms(times["detlab"])["median"], summarize_ms(times["reference"])["median"]
    return {"what": what, **conditions, "detlab_ms": ours_ms, "reference_ms": reference_ms,
            "ratio": reference_ms / ours_ms, "warmup": warmup, "repeats": repeats, **environment(device)}


def detlab_retinanet(image_size: int):
    cfg = compose_train([*RETINANET_R50, f"data.image_size={image_size}"])
    return instantiate(cfg.model, cls_loss=cfg.loss, num_classes=NUM_CLASSES)


def random_batch(batch_size: int, image_size: int, objects: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch_size, objects, 2, generator=g) * image_size * 0.7
    wh = torch.rand(batch_size, objects, 2, generator=g) * image_size * 0.3 + 8
    sizes = torch.full((batch_size, 2), image_size)
    return Batch(
        images=torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
        gt_boxes=torch.cat([xy, xy + wh], dim=-1).to(device),
        gt_labels=torch.randint(0, NUM_CLASSES, (batch_size, objects), generator=g).to(device),
        gt_valid=torch.ones(batch_size, objects, dtype=torch.bool, device=device),
        image_sizes=sizes.to(device),
        image_ids=torch.arange(batch_size, device=device),
        orig_sizes=sizes.to(device),
        scales=torch.ones(batch_size, 2, device=device),
        offsets=torch.zeros(batch_size, 2, device=device),
    )


def part_rows(device: torch.device, batch_size: int, image_size: int, warmup: int, repeats: int,
              forward: bool = True) -> list[dict]:
    """The forward (if `forward`), loss and postprocess rows of RetinaNet R50-FPN at batch_size x image_size x
    image_size."""
    ours = detlab_retinanet(image_size)
    model, assigner, criterion, postprocess = (part.to(device) for part in ours)
    theirs = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).to(device)
    model.eval()
    theirs.eval()
    batch = random_batch(batch_size, image_size, objects=10, device=device)
    conditions = {"model": "RetinaNet R50-FPN, 80 classes", "batch": batch_size, "input": f"{image_size}x{image_size}"}
    rows = []
    with torch.inference_mode():
        if forward:
            rows.append(compare("forward", lambda: model(batch.images),
                                lambda: theirs.head(list(theirs.backbone(batch.images).values())), warmup, repeats,
                                device, **conditions))

        outputs, priors = model(batch.images)
        # Logits with a realistic share of candidates above the 0.05 threshold (an untrained head has none).
        g = torch.Generator(device="cpu").manual_seed(1)
        logits = (torch.randn(outputs.cls_logits.shape, generator=g) * 2 - 5).to(device)
        outputs = HeadOutput(cls_logits=logits, box_reg=outputs.box_reg)
        anchors = [priors.boxes] * batch_size
        head_outputs = {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.box_reg}
        targets = [
            {"boxes": batch.gt_boxes[i], "labels": batch.gt_labels[i]} for i in range(batch_size)
        ]
        rows.append(compare("loss", lambda: criterion(outputs, priors, assigner(outputs, priors, batch), batch),
                            lambda: theirs.compute_loss(targets, head_outputs, anchors), warmup, repeats, device, **conditions))

        split = list(priors.level_sizes)
        split_outputs = {k: list(v.split(split, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(split)) for a in anchors]
        shapes = [(image_size, image_size)] * batch_size
        rows.append(compare("postprocess", lambda: postprocess(outputs, priors, batch),
                            lambda: theirs.postprocess_detections(split_outputs, split_anchors, shapes),
                            warmup, repeats, device, **conditions))
    return rows


def coco_eval_rows(num_images: int, repeats: int) -> list[dict]:
    """Each engine (hotcoco, detlab's default, and faster-coco-eval) against pycocotools on num_images synthetic
    images with 20 objects and 100 detections each (boxes near the objects, so that matching does real work),
    reading the files as `detlab-eval results` does: one row per engine, pycocotools the reference."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, num_images + 1)]
    anns, dets = [], []
    for img in images:
        xy = rng.uniform(0, 400, (20, 2))
        wh = rng.uniform(4, 200, (20, 2))
        cats = rng.integers(1, NUM_CLASSES + 1, 20)
        for j in range(20):
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(cats[j]), "iscrowd": 0,
                         "bbox": [*xy[j], *wh[j]], "area": float(wh[j].prod())})
        near = rng.integers(0, 20, 100)
        jitter = rng.normal(0, 8, (100, 4))
        for k in range(100):
            box = np.concatenate([xy[near[k]], wh[near[k]]]) + jitter[k]
            dets.append({"image_id": img["id"], "category_id": int(cats[near[k]]) if k % 3 else int(rng.integers(1, 81)),
                         "bbox": [float(v) for v in np.maximum(box, 1)], "score": float(rng.uniform())})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, NUM_CLASSES + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        ann_file, results_file = Path(tmp) / "gt.json", Path(tmp) / "dets.json"
        ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
        results_file.write_text(json.dumps(dets))
        # The three alternate in every repeat, so that anything else on the machine slows them alike.
        stages = [(b, lambda _, b=b: evaluate_results_file(str(ann_file), str(results_file), b)) for b in BACKENDS]
        ms = {b: summarize_ms(t)["median"] for b, t in time_stages(stages, None, 0, repeats, lambda: None).items()}
        cpu = torch.device("cpu")
        return [{"what": f"COCO eval, {b} ({num_images} images, {len(dets)} detections)", "model": "-",
                 "batch": num_images, "input": "640x480", "detlab_ms": ms[b], "reference_ms": ms["pycocotools"],
                 "ratio": ms["pycocotools"] / ms[b], "warmup": 0, "repeats": repeats, **environment(cpu)}
                for b in BACKENDS if b != "pycocotools"]


def random_photos(batch_size: int, shape: tuple[int, int] = PHOTO_SHAPE, seed: int = 0) -> list[np.ndarray]:
    """batch_size seeded RGB uint8 arrays [h, w, 3], every other one transposed (h, w) -> (w, h)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*(shape if i % 2 == 0 else shape[::-1]), 3), dtype=np.uint8)
            for i in range(batch_size)]


def random_targets(photos: Sequence[np.ndarray], category_ids: Sequence[int], seed: int = 0) -> list[dict]:
    """OBJECTS boxes per photo, torchvision's target format: {"boxes": [N, 4] xyxy original pixels, "labels": [N]
    category ids} (torchvision's label = COCO id in its 91-way label space; id 0, background, never drawn)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([c for c in category_ids if c > 0])
    targets = []
    for photo in photos:  # per photo: each has its own size
        h, w = photo.shape[:2]
        xy = torch.rand(OBJECTS, 2, generator=g) * torch.tensor([w, h]) * 0.7
        wh = (torch.rand(OBJECTS, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": ids[torch.randint(len(ids), (OBJECTS,), generator=g)]})
    return targets


def torchvision_detector(name: str, image_size: int | None, max_size: int | None,
                         photos: Sequence[np.ndarray]) -> nn.Module:
    """torchvision's detector `name` built as its published COCO model is, with seeded random weights, 91 classes
    and its outputs spread so that the score threshold, top-k and NMS all work (spread_outputs).

    A ResNet detector (image_size / max_size: its resize) has FrozenBatchNorm2d holding the statistics of
    `photos` (an unnormalised random ResNet-50 overflows), conv1 and layer1 frozen. SSD300 (image_size and
    max_size None: its input is a fixed 300 x 300) trains its whole VGG, as torchvision's does from a random
    backbone (and the preset's frozen_stages: -1).
    """
    torch.manual_seed(0)
    sizes = {} if image_size is None else {"min_size": image_size, "max_size": max_size}
    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=91, **sizes)
    body = getattr(model.backbone, "body", None)  # the ResNet of an FPN backbone; SSD's VGG has no BatchNorm
    with torch.no_grad():
        if body is not None:
            images, _ = model.transform([to_float(p) for p in photos])
            for bn in (m for m in body.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average: after one batch, exactly its statistics
            body.train()(images.tensors)
            freeze_batchnorm(body)
            for key, parameter in body.named_parameters():
                parameter.requires_grad_(key.startswith(TRAINABLE))
        spread_outputs(model)
    return model.eval()


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm2d below module replaced by a FrozenBatchNorm2d holding its statistics (weights=None builds
    BatchNorm2d; the published models and detlab's presets have frozen ones)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features)
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


def spread_outputs(model: nn.Module) -> None:
    """Class scores spread across the 0.05 threshold and small box deltas (torchvision's initial heads score every
    box below it: post-processing would have nothing to do)."""
    if isinstance(model, detection.RetinaNet):
        model.head.classification_head.cls_logits.weight.mul_(0.3)
        model.head.classification_head.cls_logits.bias.normal_(-4.0, 1.0)
        model.head.regression_head.bbox_reg.weight.mul_(0.02)
    elif isinstance(model, detection.FasterRCNN):
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.normal_(0.0, 0.01)
        predictor.cls_score.bias.normal_(0.0, 1.0)
        predictor.bbox_pred.weight.normal_(0.0, 0.01)
    elif isinstance(model, detection.ssd.SSD):
        # A softmax over 91: the background's bias 0 and the classes' near -2.3 (e^-2.3 / (1 + 90 e^-2.3) = 0.01,
        # the score threshold), spread so that the threshold, the per-class top-400, NMS and the 200 per image
        # all act; boxes near their default boxes.
        generator = torch.Generator().manual_seed(0)
        for conv in model.head.classification_head.module_list:
            bias = torch.randn(91, generator=generator) * 0.5 - 2.3
            bias[0] = 0.0
            conv.weight.mul_(0.1)
            conv.bias.copy_(bias.repeat(conv.out_channels // 91))
        for conv in model.head.regression_head.module_list:
            conv.weight.mul_(0.1)
    else:
        raise NotImplementedError(f"no output spread for {type(model).__name__}: add its heads here")


def to_float(photo: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 [h, w, 3] -> float [3, h, w] in [0, 1]: torchvision's detector input."""
    return torch.from_numpy(photo).to(device).permute(2, 0, 1).float().div(255)


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer both sides step: SGD over the trainable parameters (a small lr: random weights must not
    diverge within the timed steps)."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9, weight_decay=1e-4)


def preset_pair(preset: str, image_size: int, max_size: int, device: torch.device):
    """(the composed config, detlab's parts of `preset`, torchvision's same detector), with the same weights
    (torchvision's state dict loaded through model.weights), both on device. A preset of a fixed input size
    (data.resize=stretch: SSD300's 300 x 300) keeps its own; the others are resized to image_size / max_size."""
    fixed = compose_train([f"model={preset}"]).data.resize == "stretch"
    sizes = [] if fixed else [f"data.image_size={image_size}", f"data.max_size={max_size}"]
    theirs = torchvision_detector(PRESETS[preset], None if fixed else image_size, None if fixed else max_size,
                                  random_photos(2, seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{PRESETS[preset]}.pth"
        torch.save(theirs.state_dict(), weights)
        cfg = compose_train([f"model={preset}", *sizes, f"model.weights={weights}"])
        parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=len(cfg.data.category_ids))
    for part in parts:
        part.to(device)
    return cfg, parts, theirs.to(device)


def training_steps(cfg, parts, theirs: nn.Module, batch_size: int, device: torch.device, precision: str = "32-true",
                   photo_shape: tuple[int, int] = PHOTO_SHAPE):
    """(detlab's training step, torchvision's, the padded input [H, W]) of preset_pair's models on the same
    batch_size photos and targets; each call is one SGD step under autocast at `precision` (Lightning's names)."""
    photos = random_photos(batch_size, photo_shape)
    targets = random_targets(photos, cfg.data.category_ids)
    transform, label_of = eval_transform(cfg.data), {c: i for i, c in enumerate(cfg.data.category_ids)}
    samples = [transform(p, t["boxes"].numpy(), np.array([label_of[int(c)] for c in t["labels"]]), image_id=i)
               for i, (p, t) in enumerate(zip(photos, targets))]
    batch = move_data_to_device(collate(samples, size_divisor=cfg.data.size_divisor), device)
    images = [to_float(p, device) for p in photos]
    targets = move_data_to_device(targets, device)
    model, dtype = parts.model, PRECISIONS[precision]
    ours_opt, theirs_opt = sgd(model), sgd(theirs)
    ours_losses = functools.partial(detlab_losses, parts, batch)
    return (lambda: train_step(model, ours_opt, ours_losses, device, dtype),
            lambda: train_step(theirs, theirs_opt, lambda: theirs(images, targets), device, dtype),
            tuple(batch.images.shape[-2:]))


def detlab_losses(parts, batch: Batch) -> dict[str, torch.Tensor]:
    """DetectionModule.training_step's forward, assignment and loss terms of batch."""
    model, assigner, criterion, _ = parts
    outputs, priors = model(batch.images, targets=batch)
    return criterion(outputs, priors, assigner(outputs, priors, batch), batch)


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, losses: Callable[[], dict[str, torch.Tensor]],
               device: torch.device, dtype: torch.dtype | None = None) -> None:
    """One optimizer step of module on the sum of losses() under autocast to dtype (None: float32)."""
    module.train()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = sum(losses().values())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loader_row(overrides: Sequence[str], batches: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """The train DataLoader of the run that `overrides` compose (none: the default run, data=shapes with its
    workers) against what the run's model consumes: ms per batch of the loader alone (the mean over `batches`
    batches after the first 2 x workers, which the workers start with), and the median ms of the run's training
    step (forward, assignment, loss, backward, its optimizer's step) on batches the loader gave. The ratio
    step / loader is how many times the loader is ahead; img_per_s gives each in images per second.

    The two are timed one after the other, not alternating: a loader's workers run beside the main process.
    """
    cfg = compose_train(list(overrides))
    datamodule = instantiate(cfg.data)
    loader = datamodule.train_dataloader()
    batches = min(batches, len(loader) - 2 * cfg.data.num_workers)
    if batches < 1:
        raise ConfigError(f"--loader-overrides: the train loader has {len(loader)} batches; the loader row needs more "
                         f"than the {2 * cfg.data.num_workers} its workers start with (more data.source images)")
    iterator, seen = iter(loader), []
    for _ in range(2 * cfg.data.num_workers):  # the workers' start-up and first batches
        seen.append(next(iterator))
    start = time.perf_counter()
    for _ in range(batches):
        seen.append(next(iterator))
    loader_ms = (time.perf_counter() - start) / batches * 1e3
    del iterator
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=datamodule.num_classes)
    for part in parts:
        part.to(device)
    optimizer = instantiate(cfg.optim.optimizer)([p for p in parts.model.parameters() if p.requires_grad])
    feed = iter(move_data_to_device(b, device) for b in seen * (repeats + 1))
    stages = [("step", lambda _: train_step(parts.model, optimizer, functools.partial(detlab_losses, parts, next(feed)),
                                            device))]
    step_ms = summarize_ms(time_stages(stages, None, 1, repeats, synchronizer(device))["step"])["median"]
    images = cfg.data.batch_size
    return {"what": "data loading / train step", "model": f"default run ({', '.join(overrides) or 'data=shapes'}, "
            f"{cfg.data.num_workers} workers)", "batch": images, "input": f"{cfg.data.image_size} {cfg.data.resize}",
            "detlab_ms": loader_ms, "reference_ms": step_ms, "ratio": step_ms / loader_ms,
            "loader_img_per_s": images / loader_ms * 1e3, "step_img_per_s": images / step_ms * 1e3,
            "warmup": 1, "repeats": repeats, **environment(device)}


def inference_pair(cfg, parts, theirs: nn.Module, batch_size: int, device: torch.device):
    """(detlab's Predictor call, torchvision's model.eval()(images)) of preset_pair's models on the same
    batch_size uint8 photos; each returns its detections."""
    photos = random_photos(batch_size)
    category_ids = list(cfg.data.category_ids)
    predictor = Predictor(eval_transform(cfg.data), parts.model, parts.postprocess, cfg.data.size_divisor,
                          category_ids, [str(c) for c in category_ids])

    @torch.inference_mode()
    def reference():
        return theirs.eval()([to_float(p, device) for p in photos])

    return lambda: predictor(photos), reference


def step_rows(device: torch.device, presets: Sequence[str], batch_sizes: Sequence[int], image_size: int,
              max_size: int, warmup: int, repeats: int) -> Iterator[dict]:
    """An inference row and a train-step row for each preset at each batch size, each as soon as it is measured
    (inference first: training moves the weights of both sides alike, but it need not have happened)."""
    for preset in presets:
        cfg, parts, theirs = preset_pair(preset, image_size, max_size, device)
        for batch_size in batch_sizes:
            ours, reference = inference_pair(cfg, parts, theirs, batch_size, device)
            row = compare("inference", ours, reference, warmup, repeats, device, model=preset, batch=batch_size)
            ours, reference, (h, w) = training_steps(cfg, parts, theirs, batch_size, device)
            train = compare("train step", ours, reference, warmup, repeats, device, model=preset, batch=batch_size)
            resize = f"{cfg.data.image_size}/{cfg.data.max_size} keep-ratio" if cfg.data.resize == "keep_ratio" \
                else cfg.data.resize
            for r in (row, train):
                r["input"] = f"{resize}, {h}x{w}"
                yield r


def table(rows: Sequence[dict]) -> str:
    """The markdown table of bench rows (what main prints, and the README's, from a --json file)."""
    lines = ["| what | model | batch | input | detlab ms | reference ms | reference / detlab |",
             "|---|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['what']} | {r['model']} | {r['batch']} | {r['input']} | {r['detlab_ms']:.1f} | "
              f"{r['reference_ms']:.1f} | {r['ratio']:.2f} |" for r in rows]
    first = rows[0]
    allocator = describe_allocator(first.get("allocator", {}))  # rows of --json files before it was recorded lack it
    # --device cuda times the COCO engines on the CPU: each device with the rows it measured
    devices: dict[str, list[str]] = {}
    for r in rows:
        devices.setdefault(r["device"], []).append(r["what"])
    device = first["device"] if len(devices) == 1 else "; ".join(
        f"{d} ({', '.join(dict.fromkeys(whats))})" for d, whats in devices.items())
    return "\n".join([*lines, f"\n{device}, torch {first['torch']}, {first['threads']} threads{allocator}; "
                                f"medians of {sorted({r['repeats'] for r in rows})} repeats after "
                                f"{sorted({r['warmup'] for r in rows})} warm-up. ratio > 1: detlab is faster"])


# --quick: a look in a few minutes on a 2-core CPU (explicit arguments still win)
QUICK = {"batch_sizes": [2], "repeats": 3, "warmup": 1, "eval_images": 100, "eval_repeats": 1, "step_batch_sizes": [2],
         "step_repeats": 2, "loader_batches": 20, "loader_repeats": 3}


def save(rows: list[dict], path: Path | None) -> None:
    """rows as JSON at path (nothing when None), written atomically: a kill leaves the previous file."""
    if path is not None:
        write_text_atomically(path, json.dumps(rows, indent=1))
