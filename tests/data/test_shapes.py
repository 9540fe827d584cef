"""The shapes generator: deterministic, cached by its parameters, atomic, tight boxes, valid COCO files."""

import json
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlab.data import shapes
from detlab.data.shapes import SHAPE_KINDS, ShapesSource

SMALL = {"num_train_images": 16, "num_val_images": 4, "image_size": 96}


def source(cache: Path, **params) -> ShapesSource:
    return ShapesSource(**{**SMALL, **params, "cache_dir": str(cache)})


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_another_seed_does_not(tmp_path):
    first = source(tmp_path / "a").splits()
    second = source(tmp_path / "b").splits()
    a, b = folder_bytes(Path(first["train"].img_dir).parent), folder_bytes(Path(second["train"].img_dir).parent)
    assert a.keys() == b.keys() and len(a) == 16 + 4 + 3  # images, two json files, params.json
    assert a == b
    other = source(tmp_path / "c", seed=1).splits()
    assert Path(other["train"].ann_file).read_bytes() != Path(first["train"].ann_file).read_bytes()


def test_cache_is_reused_and_keyed_by_the_parameters(tmp_path, monkeypatch):
    first = source(tmp_path).splits()
    with monkeypatch.context() as patch:
        patch.setattr(shapes, "write_split", lambda *args: pytest.fail("the cached dataset was generated again"))
        assert source(tmp_path).splits() == first
    changed = source(tmp_path, num_classes=4).splits()
    assert changed["train"].ann_file != first["train"].ann_file
    assert sorted(p.name.startswith("shapes-") for p in tmp_path.iterdir()) == [True, True]  # no temp leftovers


def _build_and_read(cache: str) -> tuple[str, int]:
    files = source(Path(cache)).splits()  # returns only once the folder is complete
    coco = json.loads(Path(files["train"].ann_file).read_text())
    missing = [i["file_name"] for i in coco["images"] if not (Path(files["train"].img_dir) / i["file_name"]).is_file()]
    assert not missing, missing
    return files["train"].ann_file, len(coco["images"])


def test_processes_building_the_same_dataset_at_once_are_safe(tmp_path):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_build_and_read, [str(tmp_path)] * 3)
    assert results == [results[0]] * 3 and results[0][1] == SMALL["num_train_images"]
    assert [p.name.startswith("shapes-") for p in tmp_path.iterdir()] == [True]
    reference = source(tmp_path / "ref").splits()
    assert Path(results[0][0]).read_bytes() == Path(reference["train"].ann_file).read_bytes()


def test_boxes_are_the_tight_boxes_of_the_painted_pixels(tmp_path):
    """One solid shape on a one-colour background, lossless: the box must be the extent of the non-background."""
    files = source(
        tmp_path, num_classes=len(SHAPE_KINDS), background="plain", image_format="png", size_jitter=0.3,
        objects_per_image=(1, 1), distractors_per_image=(0, 0), num_train_images=32,
    ).splits()["train"]
    coco = json.loads(Path(files.ann_file).read_text())
    anns = {a["image_id"]: a for a in coco["annotations"]}
    assert len(anns) == len(coco["annotations"]) == 32
    for record in coco["images"]:
        image = cv2.imread(str(Path(files.img_dir) / record["file_name"]))
        colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        shape = np.any(image != colours[counts.argmax()], axis=-1)
        ys, xs = np.nonzero(shape)
        expected = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert anns[record["id"]]["bbox"] == expected, record
        assert anns[record["id"]]["area"] == shape.sum()


def test_sizes_cover_coco_small_medium_and_large(tmp_path):
    files = ShapesSource(num_train_images=40, num_val_images=1, cache_dir=str(tmp_path)).splits()["train"]
    areas = np.array([a["area"] for a in json.loads(Path(files.ann_file).read_text())["annotations"]])
    fractions = [np.mean(areas < 32**2), np.mean((areas >= 32**2) & (areas < 96**2)), np.mean(areas >= 96**2)]
    assert min(fractions) > 0.08, fractions


def test_files_are_valid_coco_that_pycocotools_scores(tmp_path):
    """Read by pycocotools; the ground truth scored as detections gives AP = 1 (every id and box consistent)."""
    files = source(tmp_path, num_classes=4).splits()["val"]
    gt = COCO(files.ann_file)
    assert gt.getCatIds() == [1, 2, 3, 4] and [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(SHAPE_KINDS[:4])
    assert sorted(gt.getImgIds()) == list(range(1000, 1000 + SMALL["num_val_images"]))
    for img in gt.loadImgs(gt.getImgIds()):
        assert cv2.imread(str(Path(files.img_dir) / img["file_name"])).shape[:2] == (img["height"], img["width"])
    detections = [{**a, "score": 1.0} for a in gt.loadAnns(gt.getAnnIds())]
    evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_long_tail_makes_later_classes_rarer(tmp_path):
    files = source(tmp_path, long_tail=2.0, num_train_images=40).splits()["train"]
    counts = np.bincount([a["category_id"] for a in json.loads(Path(files.ann_file).read_text())["annotations"]])
    assert counts[1] > 2 * counts[2] > 0 and counts[2] >= counts[3]


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"num_classes": len(SHAPE_KINDS) + 1}, "data.source.num_classes=9"),
        ({"objects_per_image": (3, 1)}, "data.source.objects_per_image"),
        ({"object_size": (0.5, 1.5)}, "data.source.object_size"),
        ({"num_train_images": 0}, "data.source.num_train_images"),
        ({"background": "noise"}, "data.source.background"),
        ({"seed": -1}, "data.source.seed=-1: must be an integer >= 0"),
    ],
)
def test_bad_parameters_name_their_key(tmp_path, params, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[")):
        source(tmp_path, **params)


def test_the_fingerprint_is_the_same_on_every_machine(tmp_path, caplog):
    """The drawn pixels and the annotation files of a small config hash to a constant recorded on the project's
    machine: a machine that draws anything differently (numpy, OpenCV, float rounding) fails here."""
    caplog.set_level("INFO", logger=shapes.log.name)
    files = source(tmp_path).splits()
    params = json.loads((Path(files["train"].ann_file).parent / "params.json").read_text())
    assert params["fingerprint"] == "50caf2330f2ba934"
    assert "fingerprint 50caf2330f2ba934" in caplog.text  # printed with every run that uses it
    source(tmp_path, seed=1).splits()
    assert "fingerprint " in caplog.records[-1].getMessage()
    assert "fingerprint 50caf2330f2ba934" not in caplog.records[-1].getMessage()  # other data, another fingerprint
