"""The error analysis' figures (detlab.evaluation.figures), drawn from detlab's own evaluation of a results file:
what each figure claims to show is there, readable, and nothing is drawn of no data."""

import json

from detlab.evaluation.figures import plot_error_analysis
from detlab.evaluation.results_file import evaluate_results_file


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
