"""The real-data tier: `detlab-data check` and a short training run on raccoon (VOC xml) and coco128 (COCO json).

The numbers checked are those the datasets' READMEs publish (../shared/data/README.md): raccoon has 200
photographs with 217 boxes of one class; coco128 has 128 images and 939 annotations, 10 of them crowd.
The two training runs go through the real entry point (`python -m detlab.cli.train`) with a tiny model, 4 train
batches and 2 val batches of 2 images, and must end in a results.json with the full COCO table.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detlab.cli.data import main
from detlab.data.coco.reader import CocoDetection
from detlab.data.transforms import DetectionTransform

pytestmark = pytest.mark.realdata

COCO_TABLE = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
TINY_RUN = [
    "model.neck.out_channels=16", "model.head.width=16", "model.head.depth=1",
    "data.image_size=128", "data.batch_size=2", "data.num_workers=0",
    "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "logger=none", "speed.enabled=false",
]


def raccoon_overrides(real_data: Path) -> list[str]:
    """data=voc on raccoon: a folder of xml and images without splits, 10% held out as val."""
    root = real_data / "raccoon"
    return [f"data.source.shared.root={root}", "data.source.shared.ann_dir=annotations",
            "data.source.shared.img_dir=images", "data.source.train.split=null", "data.source.val=null",
            "data.source.holdout=0.1"]


def coco128_overrides(real_data: Path) -> list[str]:
    """data=coco on coco128: its one file serves as train and val (a smoke run, not a benchmark)."""
    ann = real_data / "coco128" / "annotations" / "instances_train2017.json"
    images = real_data / "coco128" / "train2017"
    return [f"data.{split}.{key}={value}" for split in ("train", "val")
            for key, value in (("ann_file", ann), ("img_dir", images))]


def test_check_reports_raccoon_through_data_voc(real_data, capsys):
    assert main(["check", "voc", *raccoon_overrides(real_data), "--image-check"]) == 0
    out = capsys.readouterr().out
    images = [int(line.split("images ")[1].split(",")[0]) for line in out.splitlines() if "  images " in line]
    objects = [int(line.split("objects ")[1].split(" ")[0]) for line in out.splitlines() if "  images " in line]
    assert images == [180, 20] and sum(objects) == 217
    assert "objects per class: raccoon" in out and "grayscale; loaded as RGB" in out  # raccoon-150.jpg is one
    assert "checked 2 split(s): 0 problem(s)" in out


def test_check_reports_coco128(real_data, capsys):
    folder = real_data / "coco128"
    argv = ["check", str(folder / "annotations" / "instances_train2017.json"), "--img-dir", str(folder / "train2017")]
    assert main([*argv, "--image-check"]) == 0
    out = capsys.readouterr().out
    assert "images 128, objects 929 (+ 10 crowd/ignore regions, not trained on), classes 80" in out
    assert "objects per image: 0: 2," in out  # two images without objects, as the README says
    assert "checked 1 split(s): 0 problem(s)" in out


@pytest.fixture(scope="module")
def runs(real_data, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Both training runs at once, one thread each (much of their time is start-up, which overlaps)."""
    commands = {
        "raccoon": ["data=voc", *raccoon_overrides(real_data)],
        "coco128": ["data=coco", *coco128_overrides(real_data)],
    }
    started = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, overrides in commands.items():
        run_dir = tmp_path_factory.mktemp(name) / "run"
        argv = [sys.executable, "-m", "detlab.cli.train", *overrides, *TINY_RUN, f"hydra.run.dir={run_dir}"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        started[name] = (run_dir, process)
    return {name: (run_dir, process.communicate(timeout=300)[0], process.returncode)
            for name, (run_dir, process) in started.items()}


@pytest.mark.parametrize("name", ["raccoon", "coco128"])
def test_a_short_training_run_ends_in_the_coco_table(runs, real_data, name):
    run_dir, output, returncode = runs[name]
    assert returncode == 0, output[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert set(COCO_TABLE) <= set(results["metrics"])
    assert all(-1 <= results["metrics"][key] <= 1 for key in COCO_TABLE)
    if name == "raccoon":
        assert list(results["per_class_AP"]) == ["raccoon"]
        # results.json says what the data held: every one of the 200 images, nothing left out
        counts = results["data"]["counts"]
        assert (counts["data/train_images"], counts["data/val_images"]) == (180, 20)
        assert results["data"]["problems"] == {"train": [], "val": []}
    else:  # the classes with objects in the 8 val images scored, by their names in the file
        coco = json.loads((real_data / "coco128" / "annotations" / "instances_train2017.json").read_text())
        assert results["per_class_AP"] and set(results["per_class_AP"]) <= {c["name"] for c in coco["categories"]}
    assert "COCO box evaluation" in output and "AP50" in output


def test_the_size_rule_drops_the_count_of_coco128_objects_that_readme_gives(real_data):
    """README's differences table says how many of coco128's objects min_box_size=2 drops at 160 px (and 300 px):
    the transform's count and the closed form must both be it (it said 84 of 939: the 939 annotations hold 10
    crowd regions, never targets, and 84 was counted with the unrounded scale). The closed form: a box is dropped
    when its clipped width or height times resized side / original side (whole pixels, longest = size) is < 2."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    counts = {size: re.search(pattern, readme) for size, pattern in (
        (160, r"the size rule alone drops (\d+) of coco128's (\d+) objects"), (300, r"0\.9%, (\d+) objects, at 300 px"))}
    assert all(counts.values()), "README's sentence on the size rule's coco128 count has changed: update this test"
    (at_160, objects), (at_300,) = (tuple(int(v) for v in counts[size].groups()) for size in (160, 300))
    folder = real_data / "coco128"
    ann_file = folder / "annotations" / "instances_train2017.json"
    coco = json.loads(ann_file.read_text())
    images = {image["id"]: image for image in coco["images"]}
    for size, dropped in ((160, at_160), (300, at_300)):
        closed_form = 0
        for ann in (a for a in coco["annotations"] if not a["iscrowd"]):
            w, h = images[ann["image_id"]]["width"], images[ann["image_id"]]["height"]
            scale = size / max(w, h)
            x, y, bw, bh = ann["bbox"]
            clipped = np.array([min(x + bw, w) - max(x, 0), min(y + bh, h) - max(y, 0)])
            closed_form += bool((clipped * [round(w * scale) / w, round(h * scale) / h] < 2).any())
        dataset = CocoDetection(ann_file, folder / "train2017", DetectionTransform(size, min_box_size=2))
        for index in range(len(dataset)):
            dataset[index]
        assert dataset.transform_counts() == {"boxes": objects, "dropped": dropped} and closed_form == dropped
