"""YOLO txt: a round trip from a hand-written COCO dict, class names from yaml or a names file, bad input."""

import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from detlab.data.formats.yolo import read_names, read_yolo
from detlab.errors import DataError

EXPECTED = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 32},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 40},
        {"id": 3, "file_name": "c.jpg", "width": 16, "height": 16},  # no label file: no objects
        {"id": 4, "file_name": "sub/d.jpg", "width": 10, "height": 10},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 16], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [16, 8, 48, 24], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 10, 10, 20], "iscrowd": 0},
        {"id": 4, "image_id": 4, "category_id": 2, "bbox": [2.5, 1, 5, 7.5], "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}, {"id": 3, "name": "bus"}],
}
NAMES = ["person", "car", "bus"]


def write_yolo(coco, root, make_image):
    """images/ and labels/ side by side; each box as `class cx cy w h`, normalised by the image size."""
    for img in coco["images"]:
        make_image(root / "images" / img["file_name"], img["width"], img["height"])
        lines = []
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                x, y, w, h = a["bbox"]
                W, H = img["width"], img["height"]
                lines.append(f"{a['category_id'] - 1} {(x + w / 2) / W!r} {(y + h / 2) / H!r} {w / W!r} {h / H!r}")
        if lines:
            label = (root / "labels" / img["file_name"]).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines) + "\n")


def test_yolo_round_trip_box_for_box(tmp_path, make_image, assert_same_coco):
    write_yolo(EXPECTED, tmp_path, make_image)
    dataset = read_yolo(tmp_path / "images", NAMES)
    assert_same_coco(dataset.coco, EXPECTED)
    assert dataset.problems == []
    assert [img["file_name"] for img in dataset.coco["images"]] == ["a.jpg", "b.png", "c.jpg", "sub/d.jpg"]
    assert "ignore" not in dataset.coco["annotations"][0]  # YOLO has no such flag


def test_a_box_by_hand(tmp_path, make_image):
    make_image(tmp_path / "imgs" / "x.jpg", 100, 50)
    (tmp_path / "lbl").mkdir()
    (tmp_path / "lbl" / "x.txt").write_text("0 0.5 0.5 0.2 0.4\n\n")
    [ann] = read_yolo(tmp_path / "imgs", ["thing"], tmp_path / "lbl").coco["annotations"]
    assert ann["bbox"] == pytest.approx([40, 15, 20, 20])


@pytest.mark.parametrize(
    "text",
    [
        "names: [person, car, bus]\nnc: 3\n",
        "names:\n  0: person\n  1: car\n  2: bus\n",
        "path: ../data\ntrain: images/train\nnames:\n  - person\n  - car\n  - bus\n",
    ],
)
def test_names_from_data_yaml_as_a_list_or_a_dict(tmp_path, text):
    (tmp_path / "data.yaml").write_text(text)
    assert read_names(tmp_path / "data.yaml") == NAMES


def test_names_from_a_names_file(tmp_path):
    (tmp_path / "obj.names").write_text("person\ncar\n\nbus\n")
    assert read_names(tmp_path / "obj.names") == NAMES


@pytest.mark.parametrize(
    "text, says",
    [
        ("names:\n  0: person\n  2: bus\n", "field 'names' has keys [0, 2]"),
        ("names: [person, car]\nnc: 3\n", "field 'nc'=3 but field 'names' lists 2 classes"),
        ("train: images\n", "field 'names' must be"),
        ("names: [person\n", "not valid YAML"),
        # str() made a null a class called "None" (an entry left empty is null in YAML)
        ("names: [person, null]\n", "class names: entry #1 is None, not a name"),
        ("names:\n  - person\n  -\n", "class names: entry #1 is None, not a name"),
        ("names:\n  0: person\n  1:\n", "class names: entry #1 is None, not a name"),
        ("names: [person, person]\n", "class names: 'person' appears twice"),
    ],
)
def test_bad_data_yaml_names_the_file_and_field(tmp_path, text, says):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "data.yaml")) + ".*" + re.escape(says)):
        read_names(tmp_path / "data.yaml")


@pytest.mark.parametrize("name", ["data.yaml", "obj.names"])
def test_a_names_file_that_is_not_text_names_it(tmp_path, name):
    """A binary file given as the names (a mistyped path) stopped with a bare UnicodeDecodeError."""
    (tmp_path / name).write_bytes(b"\xff\xfe\x00\x89PNG")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / name)) + ": not a text file"):
        read_names(tmp_path / name)


def _one_image(tmp_path, make_image, label_text):
    make_image(tmp_path / "images" / "a.jpg", 10, 10)
    label = tmp_path / "labels" / "a.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(label_text)
    return label


@pytest.mark.parametrize(
    "text, says",
    [
        ("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1\n", "line 2: 4 values; a YOLO box line is `class cx cy w h`"),
        ("0 0.5 0.5 0.1 0.1 0.9\n", "line 1: 6 values"),
        ("person 0.5 0.5 0.1 0.1\n", "line 1: field 'class'='person' is not an integer"),
        ("0 0.5 half 0.1 0.1\n", "line 1: field 'cy'='half' is not a number"),
        ("\n3 0.5 0.5 0.1 0.1\n", "line 2: field 'class'=3 is not a class index; the names list 3 classes (0..2)"),
        ("-1 0.5 0.5 0.1 0.1\n", "line 1: field 'class'=-1 is not a class index"),
    ],
)
def test_a_malformed_label_file_raises_naming_the_file_the_line_and_the_field(tmp_path, make_image, text, says):
    label = _one_image(tmp_path, make_image, text)
    with pytest.raises(ValueError, match=re.escape(f"{label}: {says}")):
        read_yolo(tmp_path / "images", NAMES)


def test_recoverable_boxes_are_dropped_or_clipped_with_a_problem_each(tmp_path, make_image):
    lines = [
        "0 0.5 0.5 0.2 0.2",  # good
        "0 0.5 0.5 -0.2 0.2",  # x2 < x1
        "0 0.5 0.5 0 0.2",  # zero width
        "0 nan 0.5 0.2 0.2",
        "0 1.0 0.5 0.4 0.2",  # x 8..12 in a 10-pixel image: clipped to 8..10
        "0 1.5 0.5 0.2 0.2",  # wholly outside
    ]
    label = _one_image(tmp_path, make_image, "\n".join(lines))
    dataset = read_yolo(tmp_path / "images", NAMES)
    boxes = [a["bbox"] for a in dataset.coco["annotations"]]
    assert len(boxes) == 2
    assert boxes[0] == pytest.approx([4, 4, 2, 2]) and boxes[1] == pytest.approx([8, 4, 2, 2])
    assert len(dataset.problems) == 4  # dropped
    for number, says in zip((2, 3, 4, 6), ("x2 < x1", "zero area", "not finite", "wholly outside")):
        assert any(p.startswith(f"{label}: line {number}, fields 'cx cy w h'") and says in p for p in dataset.problems)
    [note] = dataset.notes  # clipped: nothing lost
    assert note.startswith(f"{label}: line 5, fields 'cx cy w h'") and "clipped to (8, 4, 10, 6)" in note


def test_a_label_file_without_image_and_an_unreadable_image_are_problems(tmp_path, make_image):
    _one_image(tmp_path, make_image, "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "labels" / "broken.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    dataset = read_yolo(tmp_path / "images", NAMES)
    assert [img["file_name"] for img in dataset.coco["images"]] == ["a.jpg"]
    assert len(dataset.coco["annotations"]) == 1
    ghost, broken = sorted(dataset.problems, key=lambda p: "ghost" not in p)
    assert ghost.startswith(str(tmp_path / "labels" / "ghost.txt")) and "its 2 box line(s) are left out" in ghost
    assert broken.startswith(str(tmp_path / "labels" / "broken.txt")) and "broken.jpg" in broken
    assert "its 1 box(es) are left out" in broken


def test_folders_and_empty_datasets_give_clear_errors(tmp_path, make_image):
    with pytest.raises(ValueError, match="image folder not found"):
        read_yolo(tmp_path / "images", NAMES)
    (tmp_path / "pics").mkdir()
    with pytest.raises(ValueError, match="no folder named 'images'.*pass labels_dir"):
        read_yolo(tmp_path / "pics", NAMES)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="label folder not found: .*labels"):
        read_yolo(tmp_path / "images", NAMES)
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match="no image files under .*an empty dataset"):
        read_yolo(tmp_path / "images", NAMES)
    with pytest.raises(ValueError, match="class names file not found"):
        read_yolo(tmp_path / "images", tmp_path / "data.yaml")


def test_the_default_labels_folder_replaces_the_last_images_folder(tmp_path, make_image):
    make_image(tmp_path / "images" / "train" / "images" / "a.jpg", 8, 8)
    label = tmp_path / "images" / "train" / "labels" / "a.txt"
    label.parent.mkdir(parents=True)
    label.write_text("1 0.5 0.5 0.5 0.5\n")
    coco = read_yolo(tmp_path / "images" / "train" / "images", NAMES).coco
    assert [a["category_id"] for a in coco["annotations"]] == [2]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_labels_of_an_exif_rotated_jpeg_are_read_as_shown_and_mapped_to_the_stored_pixels(tmp_path, orientation):
    """The label is written as Ultralytics writes it: fractions of the image PIL's exif_transpose shows. The
    reader's box must cover the same object in the stored pixels, the frame detlab loads."""
    stored = np.zeros((40, 60, 3), np.uint8)  # H x W = 40 x 60
    stored[5:15, 10:30] = 255  # the object: x 10..30, y 5..15
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "images").mkdir()
    Image.fromarray(stored).save(tmp_path / "images" / "a.jpg", exif=exif, quality=100)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "images" / "a.jpg")))[:, :, 0] > 128
    ys, xs = np.nonzero(shown)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    H, W = shown.shape
    (tmp_path / "labels").mkdir()
    label = tmp_path / "labels" / "a.txt"
    label.write_text(f"0 {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}\n")
    dataset = read_yolo(tmp_path / "images", ["thing"])
    assert dataset.coco["images"][0]["width"] == 60 and dataset.coco["images"][0]["height"] == 40
    assert dataset.coco["annotations"][0]["bbox"] == pytest.approx([10, 5, 20, 10], abs=1e-6)
    [note] = dataset.notes
    assert note.startswith(f"{label}: image") and f"EXIF Orientation={orientation}" in note and "shows" in note
    assert dataset.problems == []
