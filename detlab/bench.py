"""make bench: detlab's parts against torchvision's own implementations of the same algorithm, timed in one run.

    python -m detlab.bench [--device cuda] [--batch-size 2] [--image-size 512] [--repeats 10]

Every row times both sides on identical inputs under detlab's speed protocol (detlab.profile: warm-up
iterations, device synchronisation around every clock read, the median of the repeats) and prints the
ratio reference / detlab: above 1 detlab is faster. Both models are RetinaNet R50-FPN (256 channels, 4-conv
towers, 9 anchors, 80 classes) with random weights: speed does not depend on the values.

- forward:     backbone + FPN + head (detlab's Detector, torchvision's RetinaNet backbone and head);
- loss:        assignment + focal loss + box loss (detlab's batched MaxIoUAssigner and DenseDetectionLoss,
               torchvision's RetinaNet.compute_loss, which loops over images in Python);
- postprocess: decode, top-k per level, NMS (DensePostProcess, torchvision's postprocess_detections, also a
               per-image loop);
- COCO eval:   each engine (hotcoco, detlab's default, and faster-coco-eval) against pycocotools, the
               reference, on one synthetic results file, from reading the files to the 12 numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from torchvision.models.detection import retinanet_resnet50_fpn

from detlab.config import compose_train
from detlab.evaluation.backends import BACKENDS
from detlab.evaluation.results_file import evaluate_results_file
from detlab.profile import summarize_ms, synchronizer, time_stages
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


def compare(name: str, ours: Callable[[], object], reference: Callable[[], object], warmup: int, repeats: int,
            device: torch.device) -> tuple[str, float, float]:
    """(name, detlab's median ms, the reference's median ms), the two calls alternating in every repeat so
    that anything else on the machine slows both alike."""
    stages = [("detlab", lambda _: ours()), ("reference", lambda _: reference())]
    times = time_stages(stages, None, warmup, repeats, synchronizer(device))
    return name, summarize_ms(times["detlab"])["median"], summarize_ms(times["reference"])["median"]


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


def model_rows(device: torch.device, batch_size: int, image_size: int, warmup: int, repeats: int) -> list[tuple]:
    ours = detlab_retinanet(image_size)
    model, assigner, criterion, postprocess = (part.to(device) for part in ours)
    theirs = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).to(device)
    model.eval()
    theirs.eval()
    batch = random_batch(batch_size, image_size, objects=10, device=device)
    rows = []
    with torch.inference_mode():
        rows.append(compare("forward", lambda: model(batch.images),
                            lambda: theirs.head(list(theirs.backbone(batch.images).values())), warmup, repeats, device))

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
                            lambda: theirs.compute_loss(targets, head_outputs, anchors), warmup, repeats, device))

        split = list(priors.level_sizes)
        split_outputs = {k: list(v.split(split, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(split)) for a in anchors]
        shapes = [(image_size, image_size)] * batch_size
        rows.append(compare("postprocess", lambda: postprocess(outputs, priors, batch),
                            lambda: theirs.postprocess_detections(split_outputs, split_anchors, shapes),
                            warmup, repeats, device))
    return rows


def coco_eval_rows(num_images: int, repeats: int) -> list[tuple]:
    """Each engine (hotcoco, faster-coco-eval) against pycocotools on num_images synthetic images with 20 objects
    and 100 detections each (boxes near the objects, so that matching does real work), reading the files as
    `detlab-eval results` does."""
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
        rows = [(f"COCO eval, {b} ({num_images} images, {len(dets)} dets)", ms[b], ms["pycocotools"])
                for b in BACKENDS if b != "pycocotools"]
        return rows


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(prog="python -m detlab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--eval-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = model_rows(device, args.batch_size, args.image_size, args.warmup, args.repeats)
    rows += coco_eval_rows(args.eval_images, args.eval_repeats)
    print(f"RetinaNet R50-FPN, {NUM_CLASSES} classes, batch {args.batch_size} at {args.image_size} px on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} after "
          f"{args.warmup} warm-up (COCO eval: median of {args.eval_repeats})")
    print(f"| {'what':<56} | {'detlab ms':>10} | {'reference ms':>12} | {'ratio':>6} |")
    print(f"|{'-' * 58}|{'-' * 12}:|{'-' * 14}:|{'-' * 7}:|")
    for name, ours, reference in rows:
        print(f"| {name:<56} | {ours:>10.1f} | {reference:>12.1f} | {reference / ours:>6.2f} |")
    print("reference: torchvision's RetinaNet (forward, loss, postprocess) and pycocotools (COCO eval); "
          "ratio > 1: detlab is faster")
    return rows


if __name__ == "__main__":
    main()
