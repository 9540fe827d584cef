"""CocoEvaluator and evaluate_results_file against pycocotools' COCOeval run directly on the same data."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from detlab.evaluation.backends import BACKENDS, DEFAULT_BACKEND
from detlab.evaluation.coco_evaluator import CocoEvaluator
from detlab.evaluation.coco_table import METRIC_NAMES, format_table
from detlab.evaluation.results_file import ResultsFileError, evaluate_results_file
from detlab.structures import Detections, boxes_to_original
from tests.conftest import pycocotools_eval

# Non-contiguous category ids; "fish" has no ground truth anywhere.
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}, {"id": 12, "name": "fish"}]
CATEGORY_IDS = [c["id"] for c in CATEGORIES]
IMAGES = [  # (id, width, height)
    (3, 640, 480),
    (7, 320, 240),
    (11, 100, 200),
    (42, 500, 375),  # no objects
    (57, 256, 256),
]
IMAGE_IDS = [i for i, _, _ in IMAGES]
# (image id, category id, bbox xywh, iscrowd): small (< 32^2), medium and large boxes, one crowd region.
OBJECTS = [
    (3, 1, [40.0, 50.0, 200.0, 150.0], 0),
    (3, 5, [300.0, 200.0, 60.0, 50.0], 0),
    (3, 1, [500.0, 400.0, 20.0, 16.0], 0),
    (3, 5, [0.0, 300.0, 200.0, 150.0], 1),
    (7, 9, [30.0, 40.0, 45.0, 40.0], 0),
    (7, 5, [200.0, 100.0, 25.0, 30.0], 0),
    (11, 1, [10.0, 20.0, 60.0, 80.0], 0),
    (11, 9, [0.0, 60.0, 100.0, 120.0], 0),
    (57, 5, [20.0, 20.0, 180.0, 200.0], 0),
    (57, 1, [200.0, 10.0, 12.0, 12.0], 0),
]
TOL = 1e-12  # pycocotools divides by tp + fp + eps, faster-coco-eval does not: they differ by ~1e-16


def metric_dict(stats) -> dict[str, float]:
    return dict(zip(METRIC_NAMES, (float(s) for s in stats)))


@pytest.fixture
def ann_file(tmp_path) -> str:
    return write_ann_file(tmp_path)


def write_ann_file(folder: Path) -> str:
    annotations = [
        {"id": k, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}
        for k, (img, cat, box, crowd) in enumerate(OBJECTS, start=1)
    ]
    images = [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in IMAGES]
    path = folder / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return str(path)


def detections_from_xywh(rows: list[tuple[int, int, list[float], float]], image_ids: list[int]) -> list[Detections]:
    """Per image of image_ids, Detections (xyxy, contiguous labels) from (image, category, xywh, score) rows."""
    out = []
    for img in image_ids:
        mine = [r for r in rows if r[0] == img]
        xywh = torch.tensor([r[2] for r in mine], dtype=torch.float32).reshape(-1, 4)
        out.append(
            Detections(
                boxes=box_convert(xywh, "xywh", "xyxy"),
                scores=torch.tensor([r[3] for r in mine], dtype=torch.float32),
                labels=torch.tensor([CATEGORY_IDS.index(r[1]) for r in mine], dtype=torch.int64),
            )
        )
    return out


def as_results(rows) -> list[dict]:
    """COCO result dicts with the float32 values the evaluator sees."""
    return [
        {
            "image_id": img,
            "category_id": cat,
            "bbox": box_convert(box_convert(torch.tensor([box]), "xywh", "xyxy").double(), "xyxy", "xywh")[0].tolist(),
            "score": float(np.float32(score)),
        }
        for img, cat, box, score in rows
    ]


def reference_eval(ann_file: str, rows, img_ids=None, cat_ids=None) -> COCOeval:
    """pycocotools run the documented way (COCO, loadRes, COCOeval), the reference for every number."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        dt = gt.loadRes(copy.deepcopy(as_results(rows)))
        ev = COCOeval(gt, dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def perfect_rows():
    return [(img, cat, box, 0.9) for img, cat, box, crowd in OBJECTS if not crowd]


def random_rows(seed: int = 0, per_image: int = 80):
    """Several hundred detections: jittered ground truth (hits at various IoUs) and random boxes, all classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for img, w, h in IMAGES:
        gts = [o for o in OBJECTS if o[0] == img]
        for _ in range(per_image):
            if gts and rng.random() < 0.5:
                _, cat, (x, y, bw, bh), _ = gts[rng.integers(len(gts))]
                x, y = x + rng.normal(0, 0.1 * bw), y + rng.normal(0, 0.1 * bh)
                bw, bh = bw * rng.uniform(0.7, 1.3), bh * rng.uniform(0.7, 1.3)
                if rng.random() < 0.2:
                    cat = CATEGORY_IDS[rng.integers(len(CATEGORY_IDS))]
            else:
                bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                cat = CATEGORY_IDS[rng.integers(len(CATEGORY_IDS))]
            rows.append((img, int(cat), [float(x), float(y), float(bw), float(bh)], float(rng.uniform(0.01, 1.0))))
    return rows


def evaluate(ann_file: str, rows, image_ids=IMAGE_IDS, backend=DEFAULT_BACKEND, category_ids=CATEGORY_IDS):
    evaluator = CocoEvaluator(ann_file, category_ids, backend=backend)
    detections = detections_from_xywh(rows, image_ids)
    # Two updates, to exercise accumulation across validation steps.
    evaluator.update(detections[:2], torch.tensor(image_ids[:2]))
    evaluator.update(detections[2:], torch.tensor(image_ids[2:]))
    return evaluator.compute()


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_score_one(ann_file, backend):
    result = evaluate(ann_file, perfect_rows(), backend=backend)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert result["metrics"][name] == pytest.approx(1.0, abs=TOL), name
    # One detection per image and class: image 3's second cat is out of reach, cat recall is 3 of 4.
    assert result["metrics"]["AR1"] == pytest.approx((3 / 4 + 1 + 1) / 3, abs=TOL)
    assert result["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0}, abs=TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_box_matches_pycocotools(ann_file, backend):
    rows = perfect_rows()
    img, cat, (x, y, w, h), score = rows[0]
    rows[0] = (img, cat, [x + 0.17 * w, y - 0.05 * h, w, h], score)  # IoU ~0.68: a hit below IoU 0.7 only
    reference = reference_eval(ann_file, rows)
    result = evaluate(ann_file, rows, backend=backend)
    assert result["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
    assert result["metrics"]["AP"] < 0.99


def reference_per_class_ap(reference: COCOeval) -> dict[str, float]:
    """Per-class AP from pycocotools' precision array [T, R, K, A, M] (K in sorted category-id order): the mean
    over IoU thresholds and recall points at area all, maxDets 100, of the entries that are defined."""
    precision = reference.eval["precision"]
    expected = {}
    for k, cat in enumerate(sorted(CATEGORY_IDS)):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            expected[next(c["name"] for c in CATEGORIES if c["id"] == cat)] = float(p[p > -1].mean())
    return expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_engine_gives_pycocotools_numbers(ann_file, backend):
    """A crowd region (image 3, with detections near it), an image without objects (42) and 150 detections per
    image (past maxDets=100) of every class: each engine's 12 stats and per-class AP are pycocotools'."""
    rows = random_rows(per_image=150)
    assert len(rows) == 750 and any(r[0] == 42 for r in rows)
    reference = reference_eval(ann_file, rows)
    result = evaluate(ann_file, rows, backend=backend)
    assert result["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
    assert result["per_class_AP"] == pytest.approx(reference_per_class_ap(reference), abs=TOL)
    assert 0.05 < result["metrics"]["AP"] < 0.95  # a non-trivial set: the comparison means something
    if backend != "faster_coco_eval":  # the same computation as pycocotools' (faster-coco-eval drops its eps)
        assert result["metrics"] == metric_dict(reference.stats)


def test_per_class_ap_from_precision_array(ann_file):
    rows = random_rows(seed=1)
    expected = reference_per_class_ap(reference_eval(ann_file, rows))
    result = evaluate(ann_file, rows)
    assert "fish" not in result["per_class_AP"]  # no ground truth: left out, documented
    assert result["per_class_AP"] == pytest.approx(expected, abs=TOL)
    assert list(result["per_class_AP"]) == ["cat", "dog", "bird"]  # label order
    assert np.mean(list(result["per_class_AP"].values())) == pytest.approx(result["metrics"]["AP"], abs=TOL)


def test_only_seen_images_and_own_categories_are_scored(ann_file):
    rows = random_rows(seed=2)
    seen = [3, 57]
    # A model of two classes, listed out of id order: label 0 is "dog" (id 5), label 1 is "cat" (id 1).
    evaluator = CocoEvaluator(ann_file, [5, 1])
    mine = [r for r in rows if r[0] in seen and r[1] in (1, 5)]
    detections = detections_from_xywh(mine, seen)
    for d in detections:
        d.labels = torch.tensor([1 if CATEGORY_IDS[label] == 1 else 0 for label in d.labels.tolist()])
    evaluator.update(detections, torch.tensor(seen))
    result = evaluator.compute()
    reference = reference_eval(ann_file, mine, img_ids=seen, cat_ids=[1, 5])
    assert result["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
    assert list(result["per_class_AP"]) == ["dog", "cat"]
    assert result["scored"] == {"images": 2, "detections": len(mine)}
    everything = reference_eval(ann_file, mine)
    assert everything.stats[0] != pytest.approx(reference.stats[0])  # the restriction changes the number


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_space_out_of_id_order_keeps_each_class_its_own_ap(ann_file, backend):
    """data.category_ids in any order (label 0 = "bird", id 9): each class keeps its own AP and PR curve, as
    pycocotools computes them (hotcoco kept catIds in the order given, and the precision array's K axis, read
    in sorted id order, gave cat's AP to bird and dog's to cat)."""
    rows = random_rows(seed=7)
    reference = reference_eval(ann_file, rows)
    expected = reference_per_class_ap(reference)
    assert len(set(np.round(list(expected.values()), 6))) == 3  # three different APs: a swap shows
    label_space = [9, 1, 12, 5]
    evaluator = CocoEvaluator(ann_file, label_space, backend=backend)
    detections = detections_from_xywh(rows, IMAGE_IDS)
    for d in detections:
        d.labels = torch.tensor([label_space.index(CATEGORY_IDS[label]) for label in d.labels.tolist()])
    evaluator.update(detections, torch.tensor(IMAGE_IDS))
    result = evaluator.compute()
    assert list(result["per_class_AP"]) == ["bird", "cat", "dog"]  # label order, fish has no ground truth
    assert result["per_class_AP"] == pytest.approx(expected, abs=TOL)
    assert result["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
    bird = reference.eval["precision"][0, :, sorted(CATEGORY_IDS).index(9), 0, -1]
    assert result["pr_curves"]["AP50"]["bird"] == pytest.approx(bird.tolist(), abs=TOL)


def test_predictions_on_resized_inputs_map_back(ann_file):
    """Boxes predicted in input pixels (stretch resize plus letterbox offsets) and mapped back score AP 1."""
    objects = {img: [o for o in OBJECTS if o[0] == img and not o[3]] for img in IMAGE_IDS}
    max_objects = max(len(v) for v in objects.values())
    sizes = {i: (w, h) for i, w, h in IMAGES}
    scales = torch.tensor([[128 / sizes[i][0], 96 / sizes[i][1]] for i in IMAGE_IDS])  # (sx, sy)
    offsets = torch.tensor([[4.0, 2.0], [0.0, 16.0], [10.0, 0.0], [0.0, 0.0], [3.0, 7.0]])  # (ox, oy)
    boxes_in = torch.zeros(len(IMAGE_IDS), max_objects, 4)
    for b, img in enumerate(IMAGE_IDS):
        for j, (_, _, box, _) in enumerate(objects[img]):
            xyxy = box_convert(torch.tensor(box), "xywh", "xyxy")
            boxes_in[b, j] = xyxy * scales[b].repeat(2) + offsets[b].repeat(2)  # input = original * s + o
    boxes_orig = boxes_to_original(boxes_in, scales, offsets)
    detections = [
        Detections(
            boxes=boxes_orig[b, : len(objects[img])],
            scores=torch.full((len(objects[img]),), 0.9),
            labels=torch.tensor([CATEGORY_IDS.index(o[1]) for o in objects[img]], dtype=torch.int64),
        )
        for b, img in enumerate(IMAGE_IDS)
    ]
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    evaluator.update(detections, torch.tensor(IMAGE_IDS))
    metrics = evaluator.compute()["metrics"]
    assert metrics["AP"] == pytest.approx(1.0, abs=TOL)
    assert metrics["AP75"] == pytest.approx(1.0, abs=TOL)
    # The same boxes left in input pixels score far lower: the test sees a wrong map.
    evaluator.reset()
    evaluator.update([Detections(boxes_in[b, : len(d.scores)], d.scores, d.labels) for b, d in enumerate(detections)],
                     torch.tensor(IMAGE_IDS))
    assert evaluator.compute()["metrics"]["AP"] < 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_give_cocoeval_zeros(ann_file, backend, tmp_path):
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS, backend=backend)
    evaluator.update([empty] * len(IMAGE_IDS), torch.tensor(IMAGE_IDS))
    result = evaluator.compute()
    # Every range has ground truth here (small, medium and large objects): COCOeval's answer is 0 throughout.
    assert result["metrics"] == {name: 0.0 for name in METRIC_NAMES}
    assert result["per_class_AP"] == {"cat": 0.0, "dog": 0.0, "bird": 0.0}
    results_file = tmp_path / "empty.json"
    results_file.write_text("[]")
    assert evaluate_results_file(ann_file, str(results_file), backend=backend) == result


def test_no_detections_on_images_without_small_objects(ann_file):
    """Where a range has no ground truth COCO reports -1, as pycocotools does for these images."""
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    evaluator.update([empty, empty], torch.tensor([11, 42]))
    metrics = evaluator.compute()["metrics"]
    reference = reference_eval(ann_file, [(11, 12, [0.0, 0.0, 1.0, 1.0], 0.5)], img_ids=[11, 42])  # fish: no gt
    assert metrics == metric_dict(reference.stats)
    assert metrics["APs"] == -1.0 and metrics["AP"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_file_matches_evaluator(ann_file, backend, tmp_path):
    rows = random_rows(seed=3)
    results_file = tmp_path / "detections.json"
    results_file.write_text(json.dumps(as_results(rows)))
    from_file = evaluate_results_file(ann_file, str(results_file), backend=backend)
    from_evaluator = evaluate(ann_file, rows, backend=backend)
    assert from_file["metrics"] == pytest.approx(from_evaluator["metrics"], abs=TOL)
    assert from_file["per_class_AP"] == pytest.approx(from_evaluator["per_class_AP"], abs=TOL)
    assert from_file["metrics"] == pytest.approx(metric_dict(reference_eval(ann_file, rows).stats), abs=TOL)


GOOD = {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid JSON"),
        ('{"image_id": 3}', "JSON list"),
        ('[{"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5]}]', "detection 0: lacks ['score']"),
        ("[3]", "detection 0: lacks ['image_id', 'category_id', 'bbox', 'score']"),
        ([GOOD, {**GOOD, "image_id": 4}], "detection 1: image_id 4 is not in the annotation file"),
        ([GOOD, {**GOOD, "category_id": 2}], "detection 1: category_id 2 is not in the annotation file"),
        # pycocotools rejects these ids; int() or numpy would score 74.5 and "3" as image 74 and 3.
        ([GOOD, {**GOOD, "image_id": 3.5}], "detection 1: image_id 3.5 is not an integer"),
        ([{**GOOD, "image_id": "3"}], "detection 0: image_id '3' is not an integer"),
        ([{**GOOD, "image_id": 3.0}], "detection 0: image_id 3.0 is not an integer"),
        ([GOOD, {**GOOD, "image_id": 2**64}], f"detection 1: image_id {2**64} is not in the annotation file"),
        ([{**GOOD, "category_id": -2**63 - 1}], f"detection 0: category_id {-2**63 - 1} is not in the annotation"),
        ([{**GOOD, "category_id": 1.9}], "detection 0: category_id 1.9 is not an integer"),
        ([{**GOOD, "category_id": True}], "detection 0: category_id True is not an integer"),
        ([GOOD, {**GOOD, "bbox": [0, 0, 5]}], "detection 1: bbox [0, 0, 5] is not 4 numbers"),
        # 8 numbers: a reshape to [-1, 4] would pair the boxes with the wrong detections.
        ([{**GOOD, "bbox": [0, 0, 5, 5, 1, 1, 5, 5]}, GOOD], "detection 0: bbox [0, 0, 5, 5, 1, 1, 5, 5] is not 4"),
        ([{**GOOD, "bbox": [0, "0", 5, 5]}], "detection 0: bbox [0, '0', 5, 5] is not 4 numbers"),
        ([{**GOOD, "bbox": [[0, 0], [5, 5]]}], "is not 4 numbers"),
        # pycocotools would ignore a box of negative width where it matches nothing (its area w * h < 0 is outside
        # every area range): a free false positive. Width 0 stays allowed: an empty box scores as a false positive.
        ([GOOD, {**GOOD, "bbox": [9, 0, -5, 5]}], "detection 1: bbox [9, 0, -5, 5] has a negative width or height"),
        ([{**GOOD, "bbox": [9, 9, -5, -5]}], "detection 0: bbox [9, 9, -5, -5] has a negative width or height"),
        ([{**GOOD, "score": None}], "detection 0: score None is not a number"),
        ([GOOD, GOOD, {**GOOD, "score": float("nan")}], "detection 2: score nan is not finite"),
        ([GOOD, {**GOOD, "bbox": [0, 0, float("inf"), 5]}], "detection 1: bbox [0.0, 0.0, inf, 5.0] is not finite"),
    ],
)
def test_bad_results_file_names_the_file_detection_and_field(ann_file, tmp_path, content, message):
    results_file = tmp_path / "bad_results.json"
    results_file.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ResultsFileError) as err:
        evaluate_results_file(ann_file, str(results_file))
    assert isinstance(err.value, ValueError)  # every CLI reports a ValueError as one message, exit 2
    assert str(err.value).startswith(f"{results_file}: ") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_results_box_of_width_zero_is_scored_as_pycocotools_scores_it(ann_file, tmp_path, backend):
    """Width 0 is allowed (a negative one is refused above): an empty box matches nothing, a false positive that,
    scored above every true one, lowers AP as in pycocotools itself."""
    detections = [{"image_id": img, "category_id": cat, "bbox": box, "score": 0.5}
                  for img, cat, box, crowd in OBJECTS if not crowd]
    detections.append({"image_id": 3, "category_id": 1, "bbox": [40.0, 50.0, 0.0, 150.0], "score": 0.9})
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(detections))
    reference = pycocotools_eval(ann_file, results_file)
    metrics = evaluate_results_file(ann_file, str(results_file), backend)["metrics"]
    assert metrics["AP50"] < 1.0
    assert metrics == pytest.approx(metric_dict(reference.stats), abs=TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_ids_beyond_float64_precision_keep_their_image(tmp_path, backend):
    """hotcoco's array form of results is float64: image id 2**53 + 1 read as 2**53, an image the file lacks, and a
    perfect detection scored AP 0 where pycocotools gives 1."""
    big = 2**53 + 1
    box = [10, 10, 50, 50]
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": big, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": big, "category_id": 1, "bbox": box, "area": 2500, "iscrowd": 0}],
    }))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": big, "category_id": 1, "bbox": box, "score": 0.5}]))
    reference = pycocotools_eval(tmp_path / "gt.json", tmp_path / "dets.json")
    result = evaluate_results_file(str(tmp_path / "gt.json"), str(tmp_path / "dets.json"), backend)
    assert result["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
    assert reference.stats[0] == pytest.approx(1.0, abs=TOL)


def _plain_file_results(tmp_path: Path, ids_by_name: dict[str, int]) -> tuple[Path, Path]:
    """An annotation file of b.jpg and a.jpg, one box each, with the given image ids, and perfect detections as
    detlab-predict writes them for those two files given as plain files: ids by sorted name, each with its name."""
    boxes = {"a.jpg": [10.0, 10.0, 40.0, 40.0], "b.jpg": [50.0, 20.0, 30.0, 60.0]}
    images = [{"id": ids_by_name[n], "file_name": f"photos/{n}", "width": 100, "height": 100} for n in ("b.jpg", "a.jpg")]
    annotations = [{"id": k + 1, "image_id": ids_by_name[n], "category_id": 1, "bbox": boxes[n], "area": 1600.0,
                    "iscrowd": 0} for k, n in enumerate(("b.jpg", "a.jpg"))]
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                  "categories": [{"id": 1, "name": "cat"}]}))
    detections = [{"image_id": i, "category_id": 1, "bbox": boxes[n], "score": 0.9, "file_name": n}
                  for i, n in enumerate(sorted(boxes))]
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    return tmp_path / "gt.json", tmp_path / "dets.json"


def test_results_naming_another_file_than_their_image_id_are_refused(tmp_path):
    """detlab-predict numbers plain files 0..N-1 by sorted name; an annotation file (an exporter's) numbering
    b.jpg 0 and a.jpg 1 took each perfect detection as the other image's: AP 0 where matching by file gives 1."""
    gt, dets = _plain_file_results(tmp_path, {"b.jpg": 0, "a.jpg": 1})
    with pytest.raises(ResultsFileError) as err:
        evaluate_results_file(str(gt), str(dets))
    assert str(err.value).startswith(f"{dets}: detection 0: field 'file_name'='a.jpg', but its image_id 0 is "
                                      "'photos/b.jpg' in the annotation file (2 detections name another file")
    assert "detlab-predict <ann.json> --img-dir" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_naming_their_image_ids_file_are_scored_as_pycocotools_scores_them(tmp_path, backend):
    gt, dets = _plain_file_results(tmp_path, {"a.jpg": 0, "b.jpg": 1})
    reference = pycocotools_eval(gt, dets)
    assert evaluate_results_file(str(gt), str(dets), backend)["metrics"] == pytest.approx(
        metric_dict(reference.stats), abs=TOL)
    assert reference.stats[0] == pytest.approx(1.0, abs=TOL)


def test_unreadable_results_file_is_named(ann_file, tmp_path):
    """A binary file (a checkpoint, a gzip) or a folder given as --results: one message, not a decoder traceback."""
    gzip_header = tmp_path / "dets.json.gz"
    gzip_header.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(ResultsFileError, match=f"^{gzip_header}: not a valid JSON file"):
        evaluate_results_file(ann_file, str(gzip_header))
    with pytest.raises(ResultsFileError, match=f"^{tmp_path}: is a folder"):
        evaluate_results_file(ann_file, str(tmp_path))
    deep = tmp_path / "deep.json"  # json's decoder recurses per level: it was a bare RecursionError
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ResultsFileError, match=f"^{deep}: JSON nested too deeply to read"):
        evaluate_results_file(ann_file, str(deep))
    with_bom = tmp_path / "bom.json"  # UTF-8 with a byte-order mark (Windows tools write it): still JSON
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([]).encode())
    assert evaluate_results_file(ann_file, str(with_bom))["scored"]["detections"] == 0


def test_wider_label_space_scores_the_files_categories_only(ann_file):
    """torchvision's 91-way labels keep places for ids the file lacks: labels of such ids are not scored, the
    others score exactly as pycocotools does on the file's own categories."""
    rows = random_rows()
    reference = reference_eval(ann_file, rows)
    wide_ids = [0, *CATEGORY_IDS, 99]  # label k + 1 is CATEGORY_IDS[k]; labels 0 and 5 have no category
    evaluator = CocoEvaluator(ann_file, wide_ids)
    assert evaluator.class_names == ["unused_0", "cat", "dog", "bird", "fish", "unused_99"]
    detections = detections_from_xywh(rows, IMAGE_IDS)
    for d in detections:  # shift to the wide space and add confident boxes of the two unused labels
        d.labels = torch.cat([d.labels + 1, torch.tensor([0, 5])])
        d.boxes = torch.cat([d.boxes, torch.tensor([[0.0, 0.0, 50.0, 50.0]] * 2)])
        d.scores = torch.cat([d.scores, torch.tensor([0.99, 0.99])])
    evaluator.update(detections, torch.tensor(IMAGE_IDS))
    result = evaluator.compute()
    assert result["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
    assert set(result["per_class_AP"]) == {"cat", "dog", "bird"}


def test_bad_inputs_are_named(ann_file, tmp_path):
    with pytest.raises(ValueError, match="hotcoco.*faster_coco_eval.*pycocotools"):
        CocoEvaluator(ann_file, CATEGORY_IDS, backend="detectron2")
    with pytest.raises(ValueError, match=r"category ids \[2, 3\] are not categories of .*instances_val.json"):
        CocoEvaluator(ann_file, [2, 3])
    with pytest.raises(ValueError, match="2 class_names for 4 category_ids"):
        CocoEvaluator(ann_file, CATEGORY_IDS, class_names=["a", "b"])
    bad_ann = tmp_path / "not_coco.json"
    bad_ann.write_text('{"images": []}')
    with pytest.raises(ValueError, match=f"{bad_ann}: missing the top-level list field 'annotations'"):
        CocoEvaluator(str(bad_ann), [1])
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    one = Detections(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.5]), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"image ids \[99\] are not images of .*instances_val.json"):
        evaluator.update([one], torch.tensor([99]))
    with pytest.raises(ValueError, match=r"labels \[4\] \(images \[3\]\) are outside 0..3"):
        evaluator.update([one], torch.tensor([3]))
    with pytest.raises(ValueError, match="2 Detections for 1 image ids"):
        evaluator.update([one, one], torch.tensor([3]))
    with pytest.raises(RuntimeError, match="before any update"):
        evaluator.compute()


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluator_survives_deepcopy_and_pickle(ann_file, backend):
    """Lightning's weight averaging (ema.decay) deep-copies the module, evaluator included; DDP spawn pickles it."""
    import pickle

    rows = random_rows(seed=4)
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS, backend=backend)
    evaluator.update(detections_from_xywh(rows, IMAGE_IDS[:2]), torch.tensor(IMAGE_IDS[:2]))
    for clone in (copy.deepcopy(evaluator), pickle.loads(pickle.dumps(evaluator))):
        clone.update(detections_from_xywh(rows, IMAGE_IDS[2:]), torch.tensor(IMAGE_IDS[2:]))
        assert clone.compute()["metrics"] == pytest.approx(metric_dict(reference_eval(ann_file, rows).stats), abs=TOL)


def test_repeated_image_keeps_its_first_copy(ann_file):
    rows = random_rows(seed=4)
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    detections = detections_from_xywh(rows, IMAGE_IDS)
    evaluator.update(detections, torch.tensor(IMAGE_IDS))
    shifted = Detections(detections[0].boxes + 7.0, detections[0].scores, detections[0].labels)
    evaluator.update([shifted], torch.tensor([IMAGE_IDS[0]]))  # image 3 again, as a padded sampler repeats it
    result = evaluator.compute()
    assert result["metrics"] == pytest.approx(metric_dict(reference_eval(ann_file, rows).stats), abs=TOL)
    assert result["scored"] == {"images": len(IMAGE_IDS), "detections": len(rows)}


def test_compute_is_quiet_and_reset_clears(ann_file, capsys):
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS, backend="pycocotools")
    evaluator.update(detections_from_xywh(perfect_rows(), IMAGE_IDS), torch.tensor(IMAGE_IDS))
    assert evaluator.compute()["metrics"]["AP"] == pytest.approx(1.0, abs=TOL)
    evaluator.reset()
    evaluator.update(detections_from_xywh(random_rows(seed=5), IMAGE_IDS), torch.tensor(IMAGE_IDS))
    assert evaluator.compute()["metrics"]["AP"] < 0.9
    assert capsys.readouterr().out == ""


def test_format_table_is_aligned(ann_file):
    result = evaluate(ann_file, random_rows(seed=6))
    result["metrics"]["APs"] = -1.0
    table = format_table(result)
    lines = table.splitlines()
    metric_lines = [line for line in lines if "@[ IoU=" in line and "maxDets" in line][:12]
    assert [line.split()[0] for line in metric_lines] == list(METRIC_NAMES)
    assert len({line.index("=", line.index("]")) for line in metric_lines}) == 1  # values in one column
    assert f"{result['metrics']['AP']:.3f}" in metric_lines[0]
    assert "n/a" in metric_lines[3] and "maxDets=  1" in metric_lines[6]
    for name, ap in result["per_class_AP"].items():
        assert any(line.split() == [name, f"{ap:.3f}"] for line in lines)
    # per-class values in one column too, two spaces after the longest name (names of 3 and 4 letters here)
    names = {name: f"{ap:.3f}" for name, ap in result["per_class_AP"].items()}
    class_lines = [line for line in lines if line.split() and line.split()[0] in names]
    longest = max(len(name) for name in names)
    assert len({len(name) for name in names}) > 1 and len(class_lines) == len(names)
    assert all(line.index(line.split()[1]) == 2 + longest + 2 for line in class_lines), class_lines


# ---- DDP: a real two-process gloo group ----------------------------------------------------------------


def _ddp_worker(rank: int, world_size: int, init_file: str, ann_file: str, shards: list[list[int]], out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
        ids = shards[rank]
        evaluator.update(detections_from_xywh(random_rows(), ids), torch.tensor(ids))
        result = evaluator.compute()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_gathers_once_and_drops_padding_duplicates(ann_file, tmp_path):
    # As a DistributedSampler pads 5 images to 6: rank 1 ends with image 3 again.
    shards = [[3, 7, 11], [42, 57, 3]]
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "dist_init"), ann_file, shards, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    single = evaluate(ann_file, random_rows())
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["metrics"] == pytest.approx(single["metrics"], abs=TOL)
        assert result["per_class_AP"] == pytest.approx(single["per_class_AP"], abs=TOL)
        assert result["scored"] == single["scored"] == {"images": 5, "detections": len(random_rows())}
    # Keeping the duplicate would have changed the numbers: the assertion above can fail.
    with_duplicate = random_rows() + [r for r in random_rows() if r[0] == 3]
    assert reference_eval(ann_file, with_duplicate).stats[0] != pytest.approx(single["metrics"]["AP"], abs=1e-6)


def test_results_naming_their_image_ids_file_with_its_folder_are_scored(tmp_path):
    """A results file of another tool that copies each image's file_name as the annotation file writes it (folder
    and all, 'photos/a.jpg') names the right files: it is scored, as pycocotools scores it (AP 1), not refused."""
    gt, dets = _plain_file_results(tmp_path, {"a.jpg": 0, "b.jpg": 1})
    detections = json.loads(dets.read_text())
    for detection in detections:
        detection["file_name"] = f"photos/{detection['file_name']}"
    dets.write_text(json.dumps(detections))
    reference = pycocotools_eval(gt, dets)
    assert reference.stats[0] == pytest.approx(1.0, abs=TOL)
    assert evaluate_results_file(str(gt), str(dets))["metrics"] == pytest.approx(metric_dict(reference.stats), abs=TOL)
