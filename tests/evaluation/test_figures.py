"""The error analysis' figures (detlab.evaluation.figures), drawn from detlab's own evaluation of a results file:
what each figure claims to show is there, readable, and nothing is drawn of no data."""

import json

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detlab.evaluation.figures import _calibration, _confusion, _pr_curves, plot_error_analysis
from detlab.evaluation.results_file import evaluate_results_file
from tests.conftest import pycocotools_eval
from tests.evaluation.test_analysis import write_case


def write_files(tmp_path, annotations, detections, classes=2):
    ann = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": i + 1, "name": f"c{i + 1}"} for i in range(classes)],
        "annotations": annotations,
    }
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    return str(tmp_path / "gt.json"), str(tmp_path / "dets.json")


def test_no_figure_of_no_data(tmp_path):
    """Without ground truth there is no precision-recall curve (COCO's AP is -1, pr_curves holds no class): no
    empty pr_curves figure. The confusion matrix of a detection of nothing is defined (one false positive), and
    drawn; with no detection either, it is a matrix of zeros: not drawn."""
    detection = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}
    result = evaluate_results_file(*write_files(tmp_path, [], [detection]))
    assert result["metrics"]["AP"] == -1 and result["pr_curves"]["AP50"] == {}
    written = plot_error_analysis(result, tmp_path / "analysis")
    assert sorted(p.name for p in written) == ["calibration.png", "confusion_matrix.png"]
    assert sorted(p.name for p in (tmp_path / "analysis").iterdir()) == [
        "calibration.pdf", "calibration.png", "confusion_matrix.pdf", "confusion_matrix.png"]

    (tmp_path / "none").mkdir()
    result = evaluate_results_file(*write_files(tmp_path / "none", [], []))
    assert result["confusion_matrix"]["matrix"] == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert plot_error_analysis(result, tmp_path / "none" / "analysis") == []


def write_coco80(tmp_path, classes=80):
    """COCO's 80 classes over 8 images of 200x200, two objects of each class; per object a detection moved by a
    few pixels (some with the wrong class), and boxes on nothing: every class has a PR curve of its own."""
    rng = np.random.default_rng(0)
    annotations, detections = [], []
    for i in range(2 * classes):
        image, category = i % 8 + 1, i % classes + 1
        x, y, w, h = (float(v) for v in rng.uniform([0, 0, 20, 20], [120, 120, 80, 80]))
        annotations.append({"id": i + 1, "image_id": image, "category_id": category, "bbox": [x, y, w, h],
                            "area": w * h, "iscrowd": 0})
        guess = category if rng.random() > 0.2 else int(rng.integers(1, classes + 1))
        dx, dy = rng.normal(0, 6, 2)
        detections.append({"image_id": image, "category_id": guess, "bbox": [x + dx, y + dy, w, h],
                           "score": float(rng.uniform(0.2, 1))})
        detections.append({"image_id": image, "category_id": category, "bbox": [float(v) for v in rng.uniform(0, 100, 4)],
                           "score": float(rng.uniform(0, 0.6))})
    ann = {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(1, 9)],
        "categories": [{"id": c, "name": f"class {c}"} for c in range(1, classes + 1)],
        "annotations": annotations,
    }
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    return str(tmp_path / "gt.json"), str(tmp_path / "dets.json")


def draw(plot, data):
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")  # as plot_error_analysis makes it
    FigureCanvasAgg(fig)
    plot(fig, data)
    fig.draw_without_rendering()
    return fig


@pytest.mark.parametrize("classes", [80, 10])
def test_pr_curves_name_the_classes_up_to_ten_and_draw_every_class_and_their_mean(tmp_path, classes):
    """At COCO's 80 classes a legend of every class covered both axes (and the 10 colours repeat 8 times, naming
    none): each class is a thin grey line, unnamed, the title says how many and where their APs are, and the mean
    curve is black, its area pycocotools' AP50 / AP75. Up to 10 classes each has its colour and legend entry."""
    ann_file, results_file = write_coco80(tmp_path, classes)
    reference = pycocotools_eval(ann_file, results_file)
    fig = draw(_pr_curves, evaluate_results_file(ann_file, results_file)["pr_curves"])
    for ax, key, ap in zip(fig.axes, ("AP50", "AP75"), reference.stats[1:3]):
        assert len(ax.lines) == classes + 1  # no class left out
        mean = ax.lines[-1]
        assert np.mean(mean.get_ydata()) == pytest.approx(ap, abs=1e-12)
        entries = [t.get_text() for t in ax.get_legend().get_texts()]
        assert entries[-1] == f"mean of {classes} ({key} {ap * 100:.1f})"
        if classes > 10:
            assert entries == entries[-1:]
            assert {line.get_color() for line in ax.lines[:-1]} == {"0.65"}
        else:
            assert entries[:-1] == [f"class {c} ({ap * 100:.1f})" for c, ap in enumerate(
                reference.eval["precision"][0 if key == "AP50" else 5, :, :, 0, -1].mean(axis=0), start=1)]
            assert len({line.get_color() for line in ax.lines[:-1]}) == classes
    title = fig.get_suptitle()
    assert (f"of {classes} classes in grey (the AP of each in results.json)" in title) == (classes > 10)


def overlaps(labels):
    boxes = [t.get_window_extent() for t in labels]
    return [(a.get_text(), b.get_text()) for (a, box_a), (b, box_b) in zip(zip(labels, boxes), zip(labels[1:], boxes[1:]))
            if box_a.overlaps(box_b)]


@pytest.mark.parametrize("classes", [80, 10])
def test_confusion_matrix_names_every_class_without_overlapping_labels(tmp_path, classes):
    """At COCO's 80 classes the 81 labels (with background) on each axis of a 4.6-inch figure were printed over
    each other; the figure now grows with the classes, every one named, none over its neighbour, none cut off.
    Each row's colour is a fraction of its total; above 20 classes no count is written in the cells, so each row's
    name carries its total: one missed object and 200 read alike in colour."""
    result = evaluate_results_file(*write_coco80(tmp_path, classes))
    fig = draw(_confusion, result["confusion_matrix"])
    ax = fig.axes[0]
    names = [f"class {c}" for c in range(1, classes + 1)] + ["background"]
    rows = [f"{name} (2)" for name in names[:-1]]  # the file's 2 objects of each class
    rows.append(f"background ({sum(result['confusion_matrix']['matrix'][-1])})")  # the false positives
    for labels, expected in ((ax.get_xticklabels(), names), (ax.get_yticklabels(), rows)):
        assert [t.get_text() for t in labels] == expected
        assert overlaps(labels) == []
        assert all(fig.bbox.contains(*t.get_window_extent().min) and fig.bbox.contains(*t.get_window_extent().max)
                   for t in labels)


def test_calibration_shows_how_many_detections_each_point_is_of(tmp_path):
    """ECE weighs each score bin by its detections; the curve drew a bin of 1 as one of 1000. The case worked by
    hand in test_analysis scores 7 detections: 0.6 and 0.65, 0.7 and 0.75, 0.8 and 0.85, 0.9."""
    result = evaluate_results_file(*write_case(tmp_path))
    ax = draw(_calibration, result["calibration"]).axes[0]
    assert [t.get_text() for t in ax.texts] == ["n=2", "n=2", "n=2", "n=1"]
    assert [t.xy for t in ax.texts] == [(pytest.approx(c), p) for c, p in ((0.625, 0.5), (0.725, 0), (0.825, 0), (0.9, 1))]
    assert not ax.lines[1].get_clip_on()  # a bin matched 0 or 1 of its detections is drawn whole, not half
