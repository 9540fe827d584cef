"""Udacity CSV, both layouts: a round trip from a hand-written COCO dict, layout detection, bad input."""

import re

import pytest

from detlab.data.formats.udacity import read_udacity

EXPECTED = {
    "images": [
        {"id": 1, "file_name": "1478019952686311006.jpg", "width": 48, "height": 30},
        {"id": 2, "file_name": "1478019953180167674.jpg", "width": 48, "height": 30},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 12], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [30, 20, 18, 10], "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "pedestrian"}, {"id": 3, "name": "trafficLight"}],
}


def _rows(coco):
    """(frame, xmin, ymin, xmax, ymax, label) per box."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    rows = []
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        rows.append((files[a["image_id"]], f"{x:g}", f"{y:g}", f"{x + w:g}", f"{y + h:g}", names[a["category_id"]]))
    return rows


def write_crowdai(coco, folder, make_image):
    """The published header names the columns xmin,xmax,ymin,ymax but the values are xmin,ymin,xmax,ymax."""
    lines = ["xmin,xmax,ymin,ymax,Frame,Label,Preview URL"]
    for frame, x1, y1, x2, y2, label in _rows(coco):
        lines.append(f"{x1},{y1},{x2},{y2},{frame},{label.capitalize()},http://crowdai.com/images/x/visualize")
    _images(coco, folder, make_image)
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def write_autti(coco, folder, make_image):
    lines = []
    for frame, x1, y1, x2, y2, label in _rows(coco):
        attribute = ' "Red"' if label == "trafficLight" else ""
        lines.append(f'{frame} {x1} {y1} {x2} {y2} 0 "{label}"{attribute}')
    _images(coco, folder, make_image)
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def _images(coco, folder, make_image):
    for img in coco["images"]:
        make_image(folder / img["file_name"], img["width"], img["height"])


def test_crowdai_round_trip_box_for_box(tmp_path, make_image, assert_same_coco):
    write_crowdai(EXPECTED, tmp_path, make_image)
    dataset = read_udacity(tmp_path / "labels.csv")
    # CrowdAI's labels are capitalised (Car, Pedestrian); the writer above does the same.
    categories = [{"id": c["id"], "name": c["name"].capitalize()} for c in EXPECTED["categories"]]
    expected = {**EXPECTED, "categories": categories}
    assert_same_coco(dataset.coco, expected)
    assert dataset.problems == [] and dataset.img_dir == str(tmp_path)


def test_autti_round_trip_box_for_box(tmp_path, make_image, assert_same_coco):
    write_autti(EXPECTED, tmp_path, make_image)
    dataset = read_udacity(tmp_path / "labels.csv")
    assert_same_coco(dataset.coco, EXPECTED)
    assert dataset.problems == []


def test_crowdai_by_hand_without_preview_and_an_explicit_class_list(tmp_path, make_image):
    make_image(tmp_path / "imgs" / "f.jpg", 100, 100)
    (tmp_path / "labels.csv").write_text("xmin,ymin,xmax,ymax,Frame,Label\n10,20,30,60,f.jpg,Car\n")
    coco = read_udacity(tmp_path / "labels.csv", tmp_path / "imgs", ["Truck", "Car"]).coco
    assert coco["annotations"][0]["bbox"] == [10, 20, 20, 40] and coco["annotations"][0]["category_id"] == 2
    assert coco["categories"] == [{"id": 1, "name": "Truck"}, {"id": 2, "name": "Car"}]
    with pytest.raises(ValueError, match=r"labels\.csv: line 2: field 'label'='Car' is not one of the classes"):
        read_udacity(tmp_path / "labels.csv", tmp_path / "imgs", ["Truck"])


@pytest.mark.parametrize(
    "text, says",
    [
        ("xmin,ymin,xmax,ymax,Frame,Label\n1,2,3,4,f.jpg\n", "line 2: 5 columns; a CrowdAI row is"),
        ("xmin,ymin,xmax,ymax,Frame,Label\n1,2,x,4,f.jpg,Car\n", "line 2: field 'xmax'='x' is not a number"),
        ("xmin,ymin,xmax,ymax,Frame,Label\n1,2,3,4,,Car\n", "line 2: field 'Frame' is empty"),
        ('f.jpg 1 2 3 4 0\n', "line 1: 6 columns; an Autti row is"),
        ('f.jpg 1 2 3 4 0 "car"\nf.jpg 1 2 3 four 0 "car"\n', "line 2: field 'ymax'='four' is not a number"),
        ('f.jpg 1 2 3 4 maybe "car"\n', "line 1: field 'occluded'='maybe' is not an integer"),
        ("\n\n", "no rows: an empty dataset"),
        ("xmin,ymin,xmax,ymax,Frame,Label\n", "a header but no rows"),
    ],
)
def test_a_malformed_csv_raises_naming_the_file_the_line_and_the_field(tmp_path, text, says):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'labels.csv'}: {says}")):
        read_udacity(tmp_path / "labels.csv")


def test_recoverable_rows_are_dropped_or_clipped_with_a_problem_each(tmp_path, make_image):
    make_image(tmp_path / "f.jpg", 20, 20)
    rows = ["2 2 8 8", "8 2 2 8", "2 2 2 8", "nan 2 8 8", "15 15 25 25", "30 30 40 40"]
    lines = [f'f.jpg {row} 1 "car"' for row in rows] + ['missing.jpg 1 1 5 5 0 "car"']
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    dataset = read_udacity(tmp_path / "labels.csv")
    assert [a["bbox"] for a in dataset.coco["annotations"]] == [[2, 2, 6, 6], [15, 15, 5, 5]]
    assert [img["file_name"] for img in dataset.coco["images"]] == ["f.jpg"]
    csv_file = tmp_path / "labels.csv"
    for number, says in zip((2, 3, 4, 6), ("x2 < x1", "zero area", "not finite", "wholly outside")):
        assert any(p.startswith(f"{csv_file}: line {number}, fields 'xmin ymin xmax ymax'") and says in p
                   for p in dataset.problems), says
    missing = [p for p in dataset.problems if "missing.jpg" in p]
    assert len(missing) == 1 and missing[0].startswith(f"{csv_file}: line 7, field 'frame'")
    assert "image file not found" in missing[0] and "its 1 box(es) are left out" in missing[0]
    assert len(dataset.problems) == 5
    [note] = dataset.notes  # clipped: nothing lost
    assert note.startswith(f"{csv_file}: line 5, fields 'xmin ymin xmax ymax'") and "clipped" in note


def test_a_folder_given_as_the_csv_names_it(tmp_path):
    """The folder of the drive instead of its labels.csv stopped with a bare IsADirectoryError."""
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} is a folder; give the labels.csv inside it")):
        read_udacity(tmp_path)
