"""The COCO API layer: quiet progress output that never hides an error, and annotation-file errors by name."""

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
