"""Pascal VOC xml: a round trip from a hand-written COCO dict, the 1-based convention, splits, bad input."""

import os
import re
from pathlib import Path

import pytest

from detlab.data.formats.voc import read_voc

# What a careful human reads from the files written below: boxes xywh in pixels, difficult as ignore.
EXPECTED = {
    "images": [
        {"id": 1, "file_name": "000001.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "000002.jpg", "width": 24, "height": 36},
        {"id": 3, "file_name": "000003.jpg", "width": 20, "height": 20},  # no objects
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 12], "iscrowd": 0, "ignore": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 6, 35, 24], "iscrowd": 0, "ignore": 1},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [3, 4, 1, 1], "iscrowd": 0, "ignore": 0},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [10, 10, 14, 26], "iscrowd": 0, "ignore": 0},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


def _object_xml(name, bndbox, difficult=0):
    boxes = "".join(f"<{key}>{value}</{key}>" for key, value in zip(("xmin", "ymin", "xmax", "ymax"), bndbox))
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{boxes}</bndbox></object>"


def _annotation_xml(file_name, size, objects):
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    return f"<annotation><filename>{file_name}</filename>{size_xml}{''.join(objects)}</annotation>"


def write_voc(coco, root, make_image, size_in_xml=True):
    """Writes a COCO dict as VOC: xmin = x + 1, ymin = y + 1 (1-based), xmax = x + w, ymax = y + h (inclusive)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for img in coco["images"]:
        make_image(root / "JPEGImages" / img["file_name"], img["width"], img["height"])
        objects = [
            _object_xml(names[a["category_id"]], _voc_box(a["bbox"]), a["ignore"])
            for a in coco["annotations"]
            if a["image_id"] == img["id"]
        ]
        size = (img["width"], img["height"]) if size_in_xml else None
        xml = root / "Annotations" / f"{Path(img['file_name']).stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(_annotation_xml(img["file_name"], size, objects))


def _voc_box(bbox_xywh):
    x, y, w, h = bbox_xywh
    return (x + 1, y + 1, x + w, y + h)


@pytest.mark.parametrize("size_in_xml", [True, False])
def test_voc_round_trip_box_for_box(tmp_path, make_image, assert_same_coco, size_in_xml):
    write_voc(EXPECTED, tmp_path, make_image, size_in_xml)
    dataset = read_voc(tmp_path)
    assert_same_coco(dataset.coco, EXPECTED)
    assert dataset.problems == []
    assert dataset.img_dir == str(tmp_path / "JPEGImages")
    assert [img["id"] for img in dataset.coco["images"]] == [1, 2, 3]


def _write(root, stem, text):
    path = root / "Annotations" / f"{stem}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_1_based_inclusive_convention_by_hand(tmp_path):
    # A box over VOC pixels 1..10 x 1..20 covers 10 x 20 pixels from the image's top-left corner.
    _write(tmp_path, "a", _annotation_xml("a.jpg", (50, 40), [_object_xml("cat", (1, 1, 10, 20))]))
    [ann] = read_voc(tmp_path).coco["annotations"]
    assert ann["bbox"] == [0, 0, 10, 20] and ann["area"] == 200


def test_classes_are_sorted_from_the_files_or_taken_in_the_given_order(tmp_path):
    objects = [_object_xml("zebra", (1, 1, 5, 5)), _object_xml("ant", (1, 1, 5, 5))]
    _write(tmp_path, "a", _annotation_xml("a.jpg", (10, 10), objects))
    assert read_voc(tmp_path).coco["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "zebra"}]
    coco = read_voc(tmp_path, class_names=["zebra", "bee", "ant"]).coco
    assert coco["categories"] == [{"id": 1, "name": "zebra"}, {"id": 2, "name": "bee"}, {"id": 3, "name": "ant"}]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 3]
    with pytest.raises(ValueError, match=r"a\.xml: object #1 \('zebra'\): field 'name'='zebra' is not one of"):
        read_voc(tmp_path, class_names=["ant"])


def test_a_devkit_split_reads_only_its_ids_in_sorted_order(tmp_path, make_image, assert_same_coco):
    write_voc(EXPECTED, tmp_path, make_image)
    split_file = tmp_path / "ImageSets" / "Main" / "val.txt"
    split_file.parent.mkdir(parents=True)
    split_file.write_text("000003\n000001\n\n")
    coco = read_voc(tmp_path, "val").coco
    assert [img["file_name"] for img in coco["images"]] == ["000001.jpg", "000003.jpg"]
    assert len(coco["annotations"]) == 2
    split_file.write_text("000001\n000009\n")
    with pytest.raises(ValueError, match=r"val\.txt: line 2: id '000009' has no annotation file"):
        read_voc(tmp_path, "val")
    with pytest.raises(ValueError, match=r"split file not found: .*test\.txt"):
        read_voc(tmp_path, "test")


def test_a_filename_that_names_no_file_falls_back_to_the_image_named_like_the_xml(tmp_path, make_image):
    make_image(tmp_path / "JPEGImages" / "a.png", 12, 8)
    xml = _write(tmp_path, "a", _annotation_xml("a.jpg", None, [_object_xml("cat", (1, 1, 4, 4))]))
    dataset = read_voc(tmp_path)
    assert dataset.coco["images"] == [{"id": 1, "file_name": "a.png", "width": 12, "height": 8}]
    [problem] = dataset.problems
    assert problem.startswith(f"{xml}: field 'filename'='a.jpg'") and "using a.png" in problem


def test_no_image_and_no_size_leaves_the_image_out_with_its_boxes(tmp_path):
    xml = _write(tmp_path, "a", _annotation_xml("a.jpg", (0, 0), [_object_xml("cat", (1, 1, 4, 4))]))
    dataset = read_voc(tmp_path)
    assert dataset.coco["images"] == [] and dataset.coco["annotations"] == []
    assert any(p.startswith(f"{xml}: field 'size'") and "its 1 box(es) are left out" in p for p in dataset.problems)


@pytest.mark.parametrize(
    "text, says",
    [
        ("<annotation><object><name>cat</name>", "not valid XML"),
        ("<html></html>", "the root element is <html>"),
        (_annotation_xml("a.jpg", (9, 9), ["<object><bndbox/></object>"]), "object #1: missing field 'name'"),
        (_annotation_xml("a.jpg", (9, 9), ["<object><name>cat</name></object>"]), "#1 ('cat'): missing field 'bndbox'"),
        (
            _annotation_xml("a.jpg", (9, 9), [_object_xml("cat", (1, 1, 2, 2)), _object_xml("dog", (1, "2cm", 2, 2))]),
            "object #2 ('dog'): field 'bndbox/ymin'='2cm' is not a number",
        ),
        (
            _annotation_xml("a.jpg", (9, 9), ["<object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object>"]),
            "object #1 ('cat'): missing field 'bndbox/ymin'",
        ),
        (_annotation_xml("a.jpg", ("wide", 9), []), "field 'size/width'='wide' is not a number"),
        (_annotation_xml("a.jpg", (9, 9), [_object_xml("cat", (1, 1, 2, 2), "yes")]), "field 'difficult'='yes'"),
    ],
)
def test_a_malformed_file_raises_naming_the_file_the_object_and_the_field(tmp_path, text, says):
    xml = _write(tmp_path, "bad", text)
    with pytest.raises(ValueError, match=re.escape(str(xml)) + ".*" + re.escape(says)):
        read_voc(tmp_path)


def test_recoverable_boxes_are_dropped_or_clipped_with_a_problem_each(tmp_path):
    objects = [
        _object_xml("cat", (1, 1, 10, 10)),  # good
        _object_xml("cat", (8, 2, 3, 9)),  # x2 < x1
        _object_xml("cat", (5, 5, 4, 9)),  # zero width: pixels 5..4
        _object_xml("cat", ("nan", 2, 3, 9)),  # NaN
        _object_xml("cat", (15, 12, 30, 30)),  # partly outside the 20x20 image: clipped
        _object_xml("cat", (25, 25, 30, 30)),  # wholly outside: dropped
    ]
    xml = _write(tmp_path, "a", _annotation_xml("a.jpg", (20, 20), objects))
    dataset = read_voc(tmp_path)
    assert [a["bbox"] for a in dataset.coco["annotations"]] == [[0, 0, 10, 10], [14, 11, 6, 9]]
    problems = [p for p in dataset.problems if "field 'bndbox'" in p]
    assert len(problems) == 5
    for number, says in zip((2, 3, 4, 5, 6), ("x2 < x1", "zero area", "not finite", "clipped", "wholly outside")):
        assert any(p.startswith(f"{xml}: object #{number} ('cat')") and says in p for p in problems), says


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(ValueError, match="no .xml files in .*an empty dataset"):
        read_voc(tmp_path)
    with pytest.raises(ValueError, match="annotation folder not found"):
        read_voc(tmp_path / "nowhere")


@pytest.mark.realdata
def test_raccoon_real_data():
    """The raccoon dataset (datitran/raccoon_dataset): 200 photographs, 217 boxes of one class, per its README."""
    if "DETLAB_REAL_DATA" not in os.environ:
        pytest.fail("DETLAB_REAL_DATA is not set: point it at the shared data folder (make test sets it)")
    root = Path(os.environ["DETLAB_REAL_DATA"]) / "raccoon"
    if not (root / "annotations").is_dir():
        pytest.fail(f"DETLAB_REAL_DATA={os.environ['DETLAB_REAL_DATA']} but {root}/annotations does not exist")
    dataset = read_voc(root, ann_dir="annotations", img_dir="images")
    coco = dataset.coco
    assert len(coco["images"]) == 200 and len(coco["annotations"]) == 217
    assert coco["categories"] == [{"id": 1, "name": "raccoon"}]
    assert dataset.problems == []
    # raccoon-1.xml: size 650x417, bndbox xmin 81, ymin 88, xmax 522, ymax 408.
    [first] = [img for img in coco["images"] if img["file_name"] == "raccoon-1.jpg"]
    assert (first["width"], first["height"]) == (650, 417)
    [box] = [a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"]]
    assert box == [80, 87, 442, 321]
    assert all((root / "images" / img["file_name"]).is_file() for img in coco["images"])
