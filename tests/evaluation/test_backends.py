"""The COCO API layer: quiet progress output that never hides an error, and annotation-file errors by name."""

import json

import pytest

from detlab.evaluation.backends import BACKENDS, load_ground_truth, quiet


def test_quiet_swallows_chatter_but_replays_it_with_an_error(capsys):
    with quiet():
        print("loading annotations into memory...")
    assert capsys.readouterr().out == ""
    with pytest.raises(KeyError), quiet():
        print("index created!")
        raise KeyError("boom")
    captured = capsys.readouterr()
    assert captured.out == "" and "index created!" in captured.err


@pytest.mark.parametrize("backend", BACKENDS)
def test_annotation_file_errors_name_the_file(tmp_path, backend):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match=f"{broken}: not a valid JSON"):
        load_ground_truth(str(broken), backend)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_ground_truth(str(tmp_path / "missing.json"), backend)
    listing = tmp_path / "list.json"
    listing.write_text("[]")
    with pytest.raises(ValueError, match=f"{listing}: not a COCO annotation file"):
        load_ground_truth(str(listing), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_is_indexed(tmp_path, backend):
    path = tmp_path / "tiny.json"
    path.write_text(
        '{"images": [{"id": 8, "width": 10, "height": 10}], "categories": [{"id": 3, "name": "a"}],'
        ' "annotations": [{"id": 1, "image_id": 8, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0}]}'
    )
    coco = load_ground_truth(str(path), backend)
    assert coco.getImgIds() == [8] and coco.getCatIds() == [3] and coco.getAnnIds(imgIds=[8]) == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_annotation_ids_are_an_error_not_a_lost_box(tmp_path, backend):
    """pycocotools' index keeps one annotation per id: scoring copies of the ground truth against a file with a
    repeated id gives AP < 1 without a word. Loading the ground truth refuses it, naming the id."""
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"gt.json: annotation id 7 \(field 'id'\) is used more than once"):
        load_ground_truth(str(ann_file), backend)
