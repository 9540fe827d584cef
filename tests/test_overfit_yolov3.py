"""A tiny YOLOv3 (darknet_tiny, 128 px) memorises a handful of built-in images through the real entry point:
anchors, best-shape assignment, objectness + focal loss, GIoU, decoding with objectness and the evaluator.
About a minute on 2 CPU cores.
"""

import json
import subprocess
import sys

from detlab.data.shapes import ShapesSource


def test_tiny_yolov3_overfits_a_handful_of_images(tmp_path):
    files = ShapesSource(
        seed=3, num_train_images=8, num_val_images=1, image_size=128, num_classes=3, cache_dir=str(tmp_path)
    ).splits()["train"]
    overrides = [
        "model=yolov3",
        "model/backbone=darknet_tiny",
        "loss=focal",
        "data=coco",
        f"data.train.ann_file={files.ann_file}",
        f"data.train.img_dir={files.img_dir}",
        f"data.val.ann_file={files.ann_file}",
        f"data.val.img_dir={files.img_dir}",
        "data.image_size=128",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.augment.hflip=0",
        "data.augment.scale_range=[1,1]",
        "data.augment.color_jitter=0",
        "optim.optimizer.lr=0.003",
        "optim.scheduler.warmup_steps=10",
        "trainer.max_epochs=50",
        "trainer.check_val_every_n_epoch=50",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run([sys.executable, "-m", "detlab.train", *overrides], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert metrics["AP50"] > 0.9, metrics
