"""A tiny RetinaNet memorises a handful of built-in images: the whole loop (data, assignment, loss,
optimiser, post-processing, evaluator) can learn. Runs the real entry point with `data=coco` on files
that the shapes generator writes, validating on the training images themselves.
"""

import json
import subprocess
import sys

from detlab.data.shapes import ShapesSource


def test_tiny_retinanet_overfits_a_handful_of_images(tmp_path):
    files = ShapesSource(
        seed=3, num_train_images=8, num_val_images=1, image_size=128, num_classes=3, cache_dir=str(tmp_path)
    ).splits()["train"]
    overrides = [
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
        "model.neck.out_channels=32",
        "model.head.width=32",
        "model.head.depth=1",
        "optim.scheduler.warmup_steps=10",
        "trainer.max_epochs=150",
        "trainer.check_val_every_n_epoch=150",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run([sys.executable, "-m", "detlab.train", *overrides], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert metrics["AP50"] > 0.9, metrics
