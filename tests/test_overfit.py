"""Each detector, tiny, memorises a handful of built-in images through the real entry point: the whole loop
(data, priors, assignment, loss, optimiser, post-processing, evaluator) can learn. `data=coco` on files that
the shapes generator writes, validating on the training images themselves, every augmentation off. About a
minute at most each on 2 cores.
"""

import json
import subprocess
import sys
from pathlib import Path

from detlab.data.shapes import ShapesSource


def overfit(tmp_path: Path, *model_overrides: str, image_size: int = 128, epochs: int) -> dict:
    """Train on 8 images (no augmentation) and score on the same 8; the run's results.json."""
    files = ShapesSource(
        seed=3, num_train_images=8, num_val_images=1, image_size=128, num_classes=3, cache_dir=str(tmp_path)
    ).splits()["train"]
    overrides = [
        *model_overrides,
        "data=coco",
        f"data.train.ann_file={files.ann_file}",
        f"data.train.img_dir={files.img_dir}",
        f"data.val.ann_file={files.ann_file}",
        f"data.val.img_dir={files.img_dir}",
        f"data.image_size={image_size}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.augment.hflip=0",
        "data.augment.scale_range=[1,1]",
        "data.augment.color_jitter=0",
        "data.augment.photometric=false",
        "data.augment.expand_ratio=1",
        "data.augment.min_iou_crop=false",
        "optim.scheduler.warmup_steps=10",
        f"trainer.max_epochs={epochs}",
        f"trainer.check_val_every_n_epoch={epochs}",
        "trainer.enable_progress_bar=false",
        "speed.enabled=false",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    command = [sys.executable, "-m", "detlab.cli.train", *overrides]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_tiny_retinanet_overfits(tmp_path):
    results = overfit(
        tmp_path, "model.neck.out_channels=32", "model.head.width=32", "model.head.depth=1", image_size=96, epochs=150
    )
    assert results["metrics"]["AP50"] > 0.9, results["metrics"]


def test_tiny_ssd_overfits_with_hard_negative_mining(tmp_path):
    """SSD's neck, default boxes, matching, mining loss and inference. A 96 px input and ResNet-18's C3/C4 in
    place of VGG16 (whose backward at any size is several times slower from scratch), padded stride-2 extras."""
    results = overfit(
        tmp_path,
        "model=ssd300",
        "model/backbone=resnet18",
        "model.backbone.out_indices=[2,3]",
        "model.neck.extra_strides=[2,2,2,2]",
        "model.neck.extra_paddings=[1,1,1,1]",
        image_size=96,
        epochs=30,
    )
    assert results["config"]["loss"]["_target_"] == "detlab.losses.softmax.HardNegativeMiningCE"
    assert results["metrics"]["AP50"] > 0.9, results["metrics"]


def test_tiny_yolov3_overfits_with_focal_loss(tmp_path):
    """Anchors, best-shape assignment, objectness + focal loss, GIoU, decoding with objectness."""
    results = overfit(
        tmp_path, "model=yolov3", "model/backbone=darknet_tiny", "loss=focal", "optim.optimizer.lr=0.003", epochs=50
    )
    assert results["metrics"]["AP50"] > 0.9, results["metrics"]


def test_tiny_faster_rcnn_overfits(tmp_path):
    """Both stages: anchors, RPN sampling, proposals, RoI sampling with the gts appended, RoIAlign, the four loss
    terms, the RoI post-processing. ResNet-18 with a 32-channel FPN and a 64-wide box head; softmax CE for the RoI
    head, the model's default (90 steps at lr 0.001 reach only AP50 ~0.5). 128 sampled RoIs per image, not 512:
    the RoI head's time halves the test's (107 s -> 52 s), and a few objects per image need no more."""
    results = overfit(
        tmp_path,
        "model=faster_rcnn",
        "model.neck.out_channels=32",
        "model.roi.head.representation_size=64",
        "model.roi.sampler.num_samples=128",
        "optim.optimizer.lr=0.003",
        image_size=96,
        epochs=90,
    )
    assert results["config"]["loss"]["_target_"] == "detlab.losses.softmax.SoftmaxCrossEntropy"
    assert results["metrics"]["AP50"] > 0.9, results["metrics"]
