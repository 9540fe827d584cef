"""The COCO API layer: quiet progress output that never hides an error, and annotation-file errors by name."""

import json
import re

import pytest

from detlab.errors import DataError
from detlab.evaluation.backends import BACKENDS, load_ground_truth, quiet
from detlab.evaluation.results_file import evaluate_results_file


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
    with pytest.raises(ValueError, match=f"{broken}: not valid JSON"):
        load_ground_truth(str(broken), backend)
    with pytest.raises(DataError, match="missing.json"):
        load_ground_truth(str(tmp_path / "missing.json"), backend)
    listing = tmp_path / "list.json"
    listing.write_text("[]")
    with pytest.raises(ValueError, match=f"{listing}: a COCO file is a JSON object"):
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
    with pytest.raises(ValueError, match=r"gt.json: image id=1, annotation id=7: duplicate annotation id \(field 'id'=7\)"):
        load_ground_truth(str(ann_file), backend)


GOOD_BOX = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
# Each engine read these differently: pycocotools and faster-coco-eval crashed deep inside on a missing area or
# bbox (hotcoco scored them), a NaN box was an object no detection could match, and pycocotools took an iscrowd
# of "no" as crowd (hotcoco stopped without naming the file).
BROKEN_GROUND_TRUTH = {
    "no area": ({k: v for k, v in GOOD_BOX.items() if k != "area"}, "missing field 'area'"),
    "no bbox": ({k: v for k, v in GOOD_BOX.items() if k != "bbox"}, "missing field 'bbox'"),
    "NaN box": ({**GOOD_BOX, "bbox": [float("nan"), 10, 20, 20]}, "field 'bbox'=[nan, 10, 20, 20] is not finite"),
    "iscrowd text": ({**GOOD_BOX, "iscrowd": "no"}, "field 'iscrowd'='no' must be 0 or 1"),
}


@pytest.mark.parametrize("case", BROKEN_GROUND_TRUTH)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_engine_refuses_a_broken_annotation_naming_the_file_image_and_field(tmp_path, backend, case):
    broken, says = BROKEN_GROUND_TRUTH[case]
    data = {
        "images": [{"id": 1, "width": 100, "height": 100}],  # no file_name: scoring reads no image
        "annotations": [{**GOOD_BOX, "id": 1}, {**broken, "id": 2}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        load_ground_truth(str(ann_file), backend)
    assert f"{ann_file}: image id=1, annotation id=2: {says}" in str(err.value)


@pytest.mark.parametrize("ann_id", [0, -1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_annotation_id_below_1_is_refused_by_every_engine(tmp_path, backend, ann_id):
    """COCOeval records a match by the ground truth's annotation id, 0 meaning unmatched: a perfect detection of
    an object of id 0 scored AP 0.0 in pycocotools and faster-coco-eval and 1.0 in hotcoco; of id -1, 1.0 in
    pycocotools, 0.0 in faster-coco-eval, and hotcoco refused the file."""
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps({"images": [{"id": 1, "width": 100, "height": 100}],
                                    "annotations": [{**GOOD_BOX, "id": ann_id}],
                                    "categories": [{"id": 1, "name": "thing"}]}))
    with pytest.raises(DataError) as err:
        load_ground_truth(str(ann_file), backend)
    assert f"{ann_file}: image id=1, annotation id={ann_id}: field 'id'={ann_id} must be a positive integer" in str(
        err.value)


def one_box_file(tmp_path, image_id=1, category_id=1, ann_id=1):
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": image_id, "width": 100, "height": 100}],
        "annotations": [{**GOOD_BOX, "id": ann_id, "image_id": image_id, "category_id": category_id}],
        "categories": [{"id": category_id, "name": "thing"}]}))
    return ann_file


# pycocotools and faster-coco-eval stopped with a bare OverflowError on an id beyond int64 (hotcoco refused it),
# and scored a negative image or category id that hotcoco refused; faster-coco-eval scored a perfect detection of
# an annotation of id 2**64 AP 0.
OUT_OF_RANGE_IDS = {
    "negative image id": ({"image_id": -3}, "image id=-3 (image #0): field 'id'=-3 must be an integer from 0 to 2**63 - 1"),
    "image id 2**63": ({"image_id": 2**63}, f"field 'id'={2**63} must be an integer from 0 to 2**63 - 1"),
    "image id 2**64": ({"image_id": 2**64}, f"field 'id'={2**64} must be an integer from 0 to 2**63 - 1"),
    "negative category id": ({"category_id": -2}, "category #0: field 'id'=-2 must be an integer from 0 to 2**63 - 1"),
    "category id 2**64": ({"category_id": 2**64}, f"category #0: field 'id'={2**64} must be an integer from 0"),
    "annotation id 2**64": ({"ann_id": 2**64}, f"annotation id={2**64}: field 'id'={2**64} must be a positive integer"),
}


@pytest.mark.parametrize("case", OUT_OF_RANGE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_id_outside_int64_or_a_negative_one_is_refused_by_every_engine(tmp_path, backend, case):
    ids, says = OUT_OF_RANGE_IDS[case]
    ann_file = one_box_file(tmp_path, **ids)
    with pytest.raises(DataError) as err:
        load_ground_truth(str(ann_file), backend)
    assert f"{ann_file}: " in str(err.value) and says in str(err.value), str(err.value)


@pytest.mark.parametrize("ids", [{"image_id": 0}, {"image_id": 2**63 - 1, "category_id": 0, "ann_id": 2**63 - 1}])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_at_the_ends_of_the_range_score_a_perfect_detection_1_in_every_engine(tmp_path, backend, ids):
    ann_file = one_box_file(tmp_path, **ids)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": ids["image_id"], "category_id": ids.get("category_id", 1),
                                 "bbox": GOOD_BOX["bbox"], "score": 0.9}]))
    metrics = evaluate_results_file(str(ann_file), str(dets), backend)["metrics"]
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["AR100"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", [None, 5])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_category_name_that_is_not_a_string_is_refused_by_every_engine(tmp_path, backend, name):
    """pycocotools and faster-coco-eval scored a class called "None" (or "5"); hotcoco refused the file."""
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps({"images": [{"id": 1, "width": 100, "height": 100}],
                                    "annotations": [{**GOOD_BOX, "id": 1}],
                                    "categories": [{"id": 1, "name": name}]}))
    with pytest.raises(DataError, match=re.escape(f"{ann_file}: category id=1 (category #0): field 'name'={name!r} "
                                                  "must be a string")):
        load_ground_truth(str(ann_file), backend)


def test_a_field_only_hotcoco_refuses_names_the_file(tmp_path):
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps({"images": [{"id": 1, "width": 100, "height": 100}], "annotations": [],
                                    "categories": [{"id": 1, "name": "thing", "supercategory": 7}]}))
    with pytest.raises(DataError, match=f"{ann_file}: the hotcoco engine cannot read it: .*'supercategory'"):
        load_ground_truth(str(ann_file), "hotcoco")
