"""The error analysis (hotcoco's TIDE breakdown, confusion matrix, calibration; PR curves) on a case worked out by
hand, and PR curves against pycocotools' precision array."""

import json

import numpy as np
import pytest

from detlab.evaluation.backends import BACKENDS
from detlab.evaluation.results_file import evaluate_results_file
from tests.conftest import pycocotools_eval

# One 100x100 image, classes a (id 1) and b (id 2). Ground truth (id, class, xywh):
GROUND_TRUTH = [
    (1, 1, [0, 0, 20, 20]),  # G1 a: found by D1
    (2, 1, [50, 50, 20, 20]),  # G2 a: only a badly placed box (D3)
    (3, 2, [0, 50, 20, 20]),  # G3 b: only a box of class a on it (D4)
    (4, 1, [70, 0, 20, 20]),  # G4 a: found by D7
    (5, 1, [40, 20, 10, 10]),  # G5 a: no detection near it
]
# Detections (class, xywh, score), all of class a, one of each error type, in score order:
DETECTIONS = [
    (1, [0, 0, 20, 20], 0.9),  # D1 true positive on G1
    (1, [0, 0, 20, 20], 0.85),  # D2 Dupe: G1 again
    (1, [30, 80, 10, 10], 0.8),  # D5 Bkg: nothing near
    (1, [0, 50, 20, 20], 0.75),  # D4 Cls: exactly G3, wrong class
    (1, [60, 50, 20, 20], 0.7),  # D3 Loc: IoU 1/3 with G2
    (1, [10, 50, 20, 20], 0.65),  # D6 Both: IoU 1/3 with G3, wrong class
    (1, [70, 0, 20, 20], 0.6),  # D7 true positive on G4
]


def write_case(tmp_path):
    ann = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": i, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for i, c, b in GROUND_TRUTH],
    }
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    dets = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in DETECTIONS]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return str(tmp_path / "gt.json"), str(tmp_path / "dets.json")


def test_error_breakdown_confusion_and_calibration_by_hand(tmp_path):
    """COCO's AP50 is the mean over classes of 101-point interpolated precision. Class a (4 objects) has true
    positives at ranks 1 and 7: precision 1 up to recall 0.25 (26 recall points), 2/7 up to 0.5 (25 points):
    AP_a = (26 + 25 * 2/7) / 101; class b has an object and no detection: 0. AP50 = AP_a / 2 = 0.164074.

    Fixing one error type (TIDE) and scoring again, in units of 1/202 (mean of two classes over 101 points):
    - Dupe, Bkg or Both removed: the second true positive moves to rank 6: 26 + 25 * 2/6; dAP = 1.190476/202.
    - Cls: D4 becomes a true positive of b (AP_b = 1) and leaves a's list: 26 + 25/3 + 101; dAP = 102.190476/202.
    - Loc: D3 takes G2: true positives at ranks 1, 5, 7 (recall 1/4, 2/4, 3/4), interpolated precision 3/7 from
      recall 0.26 to 0.75 (50 points): 26 + 50 * 3/7; dAP = 14.285714/202.
    - Miss: G5 removed, 3 objects of a: precision 1 to recall 1/3 (34 points), 2/7 to 2/3 (33 points):
      34 + 33 * 2/7; dAP = 10.285714/202.
    - FP: every false positive (D2 to D6) removed: a's true positives at ranks 1 and 2, precision 1 to recall 0.5
      (51 points): 51; dAP = 17.857143/202.
    - FN: a's missed objects (G2, G5) removed, 2 objects of a: precision 1 to recall 0.5 (51 points), 2/7 from
      0.51 to 1 (50 points): 51 + 50 * 2/7; b keeps its AP of 0; dAP = 32.142857/202.
    """
    result = evaluate_results_file(*write_case(tmp_path))
    base = (26 + 25 * 2 / 7) / 202
    assert result["metrics"]["AP50"] == pytest.approx(base, abs=1e-12)
    errors = result["errors"]
    assert errors["AP50"] == pytest.approx(base, abs=1e-12)
    expected = {"Dupe": 26 + 25 / 3, "Bkg": 26 + 25 / 3, "Both": 26 + 25 / 3, "Cls": 26 + 25 / 3 + 101,
                "Loc": 26 + 50 * 3 / 7, "Miss": 34 + 33 * 2 / 7, "FP": 51, "FN": 51 + 50 * 2 / 7}
    assert errors["dAP"] == pytest.approx({k: v / 202 - base for k, v in expected.items()}, abs=1e-9)
    assert errors["counts"] == {"Cls": 1, "Loc": 1, "Both": 1, "Dupe": 1, "Bkg": 1, "Miss": 1}

    # At IoU 0.5, rows the ground truth, columns the prediction, background last. a->a: D1, D7; a missed: G2, G5;
    # b predicted as a: D4 on G3; background predicted as a: D2, D5, D3, D6.
    assert result["confusion_matrix"]["classes"] == ["a", "b", "background"]
    assert result["confusion_matrix"]["matrix"] == [[2, 0, 2], [1, 0, 0], [4, 0, 0]]

    # Scores binned by tenths; matched at IoU 0.5: 0.9 (1 of 1), 0.85 and 0.8 (0 of 2), 0.75 and 0.7 (0 of 2),
    # 0.65 and 0.6 (1 of 2). ECE = sum of count / 7 * |precision - mean confidence|; MCE the largest gap.
    calibration = result["calibration"]
    assert calibration["ECE"] == pytest.approx((1 * 0.1 + 2 * 0.825 + 2 * 0.725 + 2 * 0.125) / 7, abs=1e-12)
    assert calibration["MCE"] == pytest.approx(0.825, abs=1e-12)
    filled = [(b["low"], b["count"], b["precision"]) for b in calibration["bins"] if b["count"]]
    assert filled == [(0.6, 2, 0.5), (0.7, 2, 0.0), (0.8, 2, 0.0), (0.9, 1, 1.0)]
    assert calibration["per_class_ECE"] == pytest.approx({"a": calibration["ECE"]})

    # The PR curve at IoU 0.5 of class a is the interpolated precision above; b has no detection (precision 0).
    curves = result["pr_curves"]
    assert curves["recall"] == pytest.approx([r / 100 for r in range(101)])
    assert curves["AP50"]["a"] == pytest.approx([1.0] * 26 + [2 / 7] * 25 + [0.0] * 50)
    assert curves["AP50"]["b"] == [0.0] * 101


@pytest.mark.parametrize("backend", BACKENDS)
def test_pr_curves_are_pycocotools_precision(tmp_path, backend):
    ann_file, results_file = write_case(tmp_path)
    reference = pycocotools_eval(ann_file, results_file)
    result = evaluate_results_file(ann_file, results_file, backend)
    precision = reference.eval["precision"]  # [T, R, K, A, M]
    for key, t in (("AP50", 0), ("AP75", 5)):
        assert result["pr_curves"][key] == {name: pytest.approx(precision[t, :, k, 0, -1].tolist(), abs=1e-12)
                                            for k, name in enumerate(["a", "b"])}
    assert ("errors" in result) == (backend == "hotcoco")  # TIDE, confusion, calibration: hotcoco's APIs


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_outside_zero_one_are_scored_without_a_calibration(tmp_path, backend):
    """AP ranks the scores, so pycocotools scores logits or percentages as they are; a calibration of them means
    nothing (hotcoco's refuses them). The default engine used to stop with hotcoco's traceback instead."""
    ann_file, results_file = write_case(tmp_path)
    logits = [{**d, "score": (d["score"] - 0.7) * 30} for d in json.loads(open(results_file).read())]  # -3 .. 6
    (tmp_path / "logits.json").write_text(json.dumps(logits))
    reference = pycocotools_eval(ann_file, tmp_path / "logits.json")
    result = evaluate_results_file(ann_file, str(tmp_path / "logits.json"), backend)
    assert list(result["metrics"].values()) == pytest.approx(reference.stats.tolist(), abs=1e-12)
    assert "calibration" not in result
    assert ("errors" in result and "confusion_matrix" in result) == (backend == "hotcoco")


def _counted_by_pycocotools(ann_file, results_file):
    """Per category id, the detections pycocotools' COCOeval counts at IoU 0.5, area all, maxDets 100 (its
    evalImgs: at most 100 per image and category, none matched to a crowd region), the objects it counts, and the
    counted detections it matched (dtMatches)."""
    reference = pycocotools_eval(ann_file, results_file)
    detections, objects, matched = {}, {}, {}
    for e in reference.evalImgs:
        if e is None or e["aRng"] != reference.params.areaRng[0]:
            continue
        c = e["category_id"]
        counted = ~e["dtIgnore"][0]
        detections[c] = detections.get(c, 0) + int(counted.sum())
        objects[c] = objects.get(c, 0) + int((~e["gtIgnore"].astype(bool)).sum())
        matched[c] = matched.get(c, 0) + int((counted & (e["dtMatches"][0] > 0)).sum())
    return detections, objects, matched


def test_confusion_matrix_counts_the_detections_coco_counts(tmp_path):
    """COCO scores at most 100 detections per image and class; hotcoco's confusion matrix capped them at 100 per
    image over all classes. Here class a has its object and 120 detections of nothing, scored above the one
    detection of b (exactly b's object): COCO's AP of b is 1, while the matrix said b's object was missed and
    counted none of b's detections."""
    ann = {
        "images": [{"id": 1, "width": 1000, "height": 1000}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [500, 500, 20, 20], "area": 400,
                         "iscrowd": 0}],
    }
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.99}]
    dets += [{"image_id": 1, "category_id": 1, "bbox": [100 + 3 * i, 800, 2, 2], "score": 0.9 - i / 1000}
             for i in range(120)]
    dets += [{"image_id": 1, "category_id": 2, "bbox": [500, 500, 20, 20], "score": 0.1}]
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ann_file, results_file = str(tmp_path / "gt.json"), str(tmp_path / "dets.json")

    result = evaluate_results_file(ann_file, results_file)
    assert result["per_class_AP"] == pytest.approx({"a": 1.0, "b": 1.0})
    # a: its object found, 99 of its 120 background boxes inside COCO's 100; b: its object found
    assert result["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 1, 0], [99, 0, 0]]
    detections, objects, _ = _counted_by_pycocotools(ann_file, results_file)
    matrix = result["confusion_matrix"]["matrix"]
    assert [sum(row[k] for row in matrix) for k in range(2)] == [detections[1], detections[2]]  # columns
    assert [sum(row) for row in matrix[:2]] == [objects[1], objects[2]]  # rows


def test_confusion_matrix_leaves_out_the_detections_coco_ignores(tmp_path):
    """hotcoco's confusion matrix knows no crowd regions: a detection on a crowd region of its class, which COCO
    ignores (neither TP nor FP), was a false positive in the background row, and so was a detection COCO ignores
    for lying outside area all's range (over 1e10 square pixels). One image, classes a (id 1) and b (id 2); no
    detection here is confused with another class's object, so each matrix entry is a count of pycocotools':
    diagonal its matches, background row its unmatched counted detections, background column its missed objects."""
    ann = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 1},
                        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [70, 0, 20, 20], "area": 400, "iscrowd": 0}],
    }
    dets = [
        (1, [0, 0, 40, 40], 0.9),  # a on a's crowd region: ignored
        (1, [5, 5, 10, 10], 0.85),  # a inside a's crowd region (IoU 1/16, but inside it): ignored
        (1, [50, 50, 20, 20], 0.8),  # a's object: TP
        (1, [50, 50, 20, 20], 0.75),  # a's object again: FP (a crowd region is no excuse away from it)
        (2, [0, 0, 40, 40], 0.7),  # b on a's crowd region: a crowd region excuses only its own class, FP
        (2, [70, 0, 20, 20], 0.6),  # b's object: TP
        (1, [0, 0, 2e5, 2e5], 0.55),  # a, unmatched, larger than area all's range: ignored
        (1, [80, 80, 10, 10], 0.5),  # a on nothing: FP
    ]
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": c, "bbox": b, "score": s}
                                                    for c, b, s in dets]))
    ann_file, results_file = str(tmp_path / "gt.json"), str(tmp_path / "dets.json")

    detections, objects, matched = _counted_by_pycocotools(ann_file, results_file)
    assert (detections, objects, matched) == ({1: 3, 2: 2}, {1: 1, 2: 1}, {1: 1, 2: 1})  # the comments above
    expected = [[matched[1], 0, objects[1] - matched[1]],
                [0, matched[2], objects[2] - matched[2]],
                [detections[1] - matched[1], detections[2] - matched[2], 0]]
    result = evaluate_results_file(ann_file, results_file)
    assert result["confusion_matrix"]["matrix"] == expected == [[1, 0, 0], [0, 1, 0], [2, 1, 0]]
    assert result["calibration"]["bins"][5]["count"] == 1  # 0.5 and 0.55: only the counted one, as COCO counts
    assert result["errors"]["counts"] == {"Cls": 0, "Loc": 0, "Both": 0, "Dupe": 1, "Bkg": 2, "Miss": 0}


def test_confusion_matrix_counts_what_coco_counts_with_crowds_and_past_100(tmp_path):
    """Random detections on three images with a crowd region each, class a past COCO's 100 on image 1, some on
    crowd regions and some on objects: every detection COCO counts lies in its class's column and no other does,
    so the matrix's column sums are pycocotools' counted detections per class and its row sums the objects it
    counts (whatever class confusions the matrix finds inside)."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 200, "height": 200} for i in (1, 2, 3)]
    boxes = rng.uniform(0, 150, (12, 2))
    annotations = [{"id": k + 1, "image_id": k % 3 + 1, "category_id": k % 2 + 1,
                    "bbox": [*boxes[k].tolist(), 40.0, 40.0], "area": 1600.0, "iscrowd": int(k % 4 == 0)}
                   for k in range(12)]
    dets = []
    for i in range(500):  # 300 on image 1: about 150 of class a
        image = 1 if i < 300 else int(rng.integers(2, 4))
        own = [a for a in annotations if a["image_id"] == image]
        a = own[rng.integers(len(own))]
        near = rng.random() < 0.6  # jittered on an object or crowd region, else anywhere
        x, y = (np.asarray(a["bbox"][:2]) + rng.normal(0, 8, 2) if near else rng.uniform(0, 180, 2)).tolist()
        category = a["category_id"] if rng.random() < 0.8 else 3 - a["category_id"]
        dets.append({"image_id": a["image_id"], "category_id": category, "bbox": [x, y, 40.0, 40.0],
                     "score": float(rng.uniform(0.01, 1))})
    ann = {"images": images, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": annotations}
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ann_file, results_file = str(tmp_path / "gt.json"), str(tmp_path / "dets.json")

    detections, objects, _ = _counted_by_pycocotools(ann_file, results_file)
    assert sum(detections.values()) < len(dets) - 100  # past 100 and on crowd regions: many are not counted
    matrix = np.asarray(evaluate_results_file(ann_file, results_file)["confusion_matrix"]["matrix"])
    assert matrix[:, :2].sum(axis=0).tolist() == [detections[1], detections[2]]
    assert matrix[:2].sum(axis=1).tolist() == [objects[1], objects[2]]


@pytest.mark.parametrize("results", [[], [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "score": 0.9}]])
def test_no_calibration_of_no_detections(tmp_path, results):
    """A reliability of no detections is undefined (no bin has a detection): hotcoco reports ECE 0.0, which read
    as a perfectly calibrated detector in results.json and W&B's val/ECE (a first validation that keeps nothing).
    The second case's one detection lies on a crowd region, which COCOeval ignores: nothing is left to calibrate."""
    ann = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400,
                         "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600,
                         "iscrowd": 1}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps(results))
    if results:  # pycocotools' loadRes cannot read an empty list
        detections, _, _ = _counted_by_pycocotools(str(tmp_path / "gt.json"), str(tmp_path / "dets.json"))
        assert sum(detections.values()) == 0
    result = evaluate_results_file(str(tmp_path / "gt.json"), str(tmp_path / "dets.json"))
    assert result["metrics"]["AP"] == 0.0
    assert "calibration" not in result


def test_no_error_breakdown_without_ground_truth(tmp_path):
    """With no object in the scored images COCO's AP50 is undefined (pycocotools: -1); hotcoco's TIDE said AP50 0.0
    and a dAP of 0.0 for every error type, numbers that detlab-report compared as measured."""
    ann = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
           "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9],
                                                     "score": 0.5}]))
    reference = pycocotools_eval(tmp_path / "gt.json", tmp_path / "dets.json")
    result = evaluate_results_file(str(tmp_path / "gt.json"), str(tmp_path / "dets.json"))
    assert reference.stats[1] == -1 and result["metrics"]["AP50"] == -1
    assert "errors" not in result
    assert result["confusion_matrix"]["matrix"] == [[0, 0], [1, 0]]  # the detection: a false positive
