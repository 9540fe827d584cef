"""MOT challenge gt.txt: a round trip from a hand-written COCO dict, ignore regions, visibility, bad input."""

import re

import pytest

from detlab.data.formats.mot import read_mot

# Frames 1..3 of a 32x24 sequence; frame 3 has no rows. Crowd annotations are the ignore regions.
EXPECTED = {
    "images": [
        {"id": 1, "file_name": "img1/000001.jpg", "width": 32, "height": 24},
        {"id": 2, "file_name": "img1/000002.jpg", "width": 32, "height": 24},
        {"id": 3, "file_name": "img1/000003.jpg", "width": 32, "height": 24},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 5, 10], "iscrowd": 0, "ignore": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 2, 6, 12.5], "iscrowd": 1, "ignore": 1},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 4, 4, 8], "iscrowd": 0, "ignore": 0},
    ],
    "categories": [{"id": 1, "name": "pedestrian"}],
}


def _sequence(tmp_path, make_image, rows, frames=(1, 2, 3)):
    for frame in frames:
        make_image(tmp_path / "img1" / f"{frame:06d}.jpg", 32, 24)
    gt = tmp_path / "gt" / "gt.txt"
    gt.parent.mkdir(exist_ok=True)
    gt.write_text("".join(f"{row}\n" for row in rows))
    return gt


def write_mot(coco, tmp_path, make_image):
    """One gt row per box: a pedestrian (class 1, conf 1) or, for a crowd region, a distractor (class 8, conf 0)."""
    frame_of = {img["id"]: int(img["file_name"][5:11]) for img in coco["images"]}
    rows = []
    for track, a in enumerate(coco["annotations"], start=1):
        conf, cls = (0, 8) if a["iscrowd"] else (1, 1)
        x, y, w, h = a["bbox"]
        rows.append(f"{frame_of[a['image_id']]},{track},{x},{y},{w},{h},{conf},{cls},1")
    return _sequence(tmp_path, make_image, rows, sorted(frame_of.values()))


def test_mot_round_trip_box_for_box(tmp_path, make_image, assert_same_coco):
    write_mot(EXPECTED, tmp_path, make_image)
    dataset = read_mot(tmp_path)
    assert_same_coco(dataset.coco, EXPECTED)
    assert dataset.problems == [] and dataset.img_dir == str(tmp_path)
    assert [img["id"] for img in dataset.coco["images"]] == [1, 2, 3]


ROWS = [
    "1,1,2,3,5,10,1,1,1.0",  # pedestrian
    "1,2,2,3,5,10,0,1,1.0",  # pedestrian with conf 0: not evaluated -> ignore region
    "1,3,2,3,5,10,0,7,0.8",  # static person -> ignore region, or a pedestrian with static_person
    "1,4,2,3,5,10,0,3,1.0",  # car -> ignore region
    "1,5,2,3,5,10,1,1,0.2",  # a mostly hidden pedestrian
    "2,6,2,3,5,10,0,8,1.0",  # distractor -> ignore region
    "2,7,2,3,5,10,0,12,0.5",  # reflection -> ignore region
]


@pytest.mark.parametrize(
    "options, targets",
    [
        ({}, [1, 5]),
        ({"static_person": True}, [1, 3, 5]),
        ({"min_visibility": 0.25}, [1]),
        ({"min_visibility": 0.25, "static_person": True}, [1, 3]),
    ],
)
def test_which_rows_are_pedestrians_and_which_are_ignore_regions(tmp_path, make_image, options, targets):
    _sequence(tmp_path, make_image, ROWS)
    annotations = read_mot(tmp_path, **options).coco["annotations"]
    assert len(annotations) == len(ROWS)  # nothing is lost: a row is a pedestrian or an ignore region
    pedestrians = [a["id"] for a in annotations if not a["iscrowd"]]
    assert pedestrians == targets
    assert all(a["ignore"] == a["iscrowd"] for a in annotations)


def test_boxes_beyond_the_border_are_clipped_silently_but_wholly_outside_is_a_problem(tmp_path, make_image):
    gt = _sequence(tmp_path, make_image, ["1,1,-4,20,10,10,1,1,0.5", "2,2,40,2,5,5,1,1,1", "2,3,2,2,0,5,1,1,1"])
    dataset = read_mot(tmp_path)
    assert [a["bbox"] for a in dataset.coco["annotations"]] == [[0, 20, 6, 4]]
    assert len(dataset.problems) == 2
    assert dataset.problems[0].startswith(f"{gt}: line 2, fields 'bb_left bb_top bb_width bb_height'")
    assert "wholly outside the 32x24 image" in dataset.problems[0]
    assert dataset.problems[1].startswith(f"{gt}: line 3") and "zero area" in dataset.problems[1]


def test_rows_of_a_frame_without_image_are_problems(tmp_path, make_image):
    gt = _sequence(tmp_path, make_image, ["1,1,2,3,5,10,1,1,1", "9,1,2,3,5,10,1,1,1"], frames=(1,))
    dataset = read_mot(tmp_path)
    assert len(dataset.coco["annotations"]) == 1
    [problem] = dataset.problems
    assert problem.startswith(f"{gt}: line 2: field 'frame'=9 has no image") and "row left out" in problem


@pytest.mark.parametrize(
    "row, says",
    [
        ("1,1,2,3,5,10,1,1", "line 2: 8 columns; a MOT gt row is frame,id,bb_left"),
        ("1,1,2,3,5,10,1,1,1,-1", "line 2: 10 columns"),
        ("1,1,2,3,wide,10,1,1,1", "line 2: field 'bb_width'='wide' is not a number"),
        ("1,1,2,3,5,10,1,person,1", "line 2: field 'class'='person' is not an integer"),
        ("1,1,2,3,5,10,1,14,1", "line 2: field 'class'=14 is not in the MOT class table"),
        ("0,1,2,3,5,10,1,1,1", "line 2: field 'frame'=0; MOT frames count from 1"),
        # a NaN visibility was below every min_visibility (an ignore region), a NaN conf != 0 (a pedestrian)
        ("1,1,10,10,20,20,1,1,nan", "line 2: field 'visibility'=nan must be a fraction in [0, 1]"),
        ("1,1,10,10,20,20,1,1,1.5", "line 2: field 'visibility'=1.5 must be a fraction in [0, 1]"),
        ("1,1,10,10,20,20,nan,1,1", "line 2: field 'conf'=nan must be a finite number"),
    ],
)
def test_a_malformed_gt_raises_naming_the_file_the_line_and_the_field(tmp_path, make_image, row, says):
    gt = _sequence(tmp_path, make_image, ["1,1,2,3,5,10,1,1,1", row])
    with pytest.raises(ValueError, match=re.escape(f"{gt}: {says}")):
        read_mot(tmp_path)


def test_missing_parts_and_bad_options_give_clear_errors(tmp_path, make_image):
    with pytest.raises(ValueError, match="MOT ground truth not found: .*gt.txt"):
        read_mot(tmp_path)
    _sequence(tmp_path, make_image, [], frames=())
    with pytest.raises(ValueError, match="MOT image folder not found: .*img1"):
        read_mot(tmp_path)
    (tmp_path / "img1").mkdir()
    with pytest.raises(ValueError, match="no frames in .*img1"):
        read_mot(tmp_path)
    make_image(tmp_path / "img1" / "first.jpg", 8, 8)
    with pytest.raises(ValueError, match="first.jpg: a MOT frame is named by its number"):
        read_mot(tmp_path)
    with pytest.raises(ValueError, match="min_visibility=1.5"):
        read_mot(tmp_path, min_visibility=1.5)
