"""Pascal VOC xml: a round trip from a hand-written COCO dict, the 1-based convention, splits, bad input."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from detlab.data.formats.voc import read_voc
from detlab.errors import DataError
from detlab.evaluation.results_file import evaluate_results_file

# What a careful human reads from the files written below: boxes xywh in pixels, difficult as a crowd (ignore)
# region: both COCO evaluators take `ignore` from `iscrowd`.
EXPECTED = {
    "images": [
        {"id": 1, "file_name": "000001.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "000002.jpg", "width": 24, "height": 36},
        {"id": 3, "file_name": "000003.jpg", "width": 20, "height": 20},  # no objects
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 12], "iscrowd": 0, "ignore": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 6, 35, 24], "iscrowd": 1, "ignore": 1},
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


def _write(root, stem, text, image_size=None):
    """Writes Annotations/<stem>.xml and, given image_size (w, h), the image JPEGImages/<stem>.jpg."""
    path = root / "Annotations" / f"{stem}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if image_size is not None:
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", image_size).save(root / "JPEGImages" / f"{stem}.jpg")
    return path


def test_the_1_based_inclusive_convention_by_hand(tmp_path):
    # A box over VOC pixels 1..10 x 1..20 covers 10 x 20 pixels from the image's top-left corner.
    _write(tmp_path, "a", _annotation_xml("a.jpg", (50, 40), [_object_xml("cat", (1, 1, 10, 20))]), (50, 40))
    [ann] = read_voc(tmp_path).coco["annotations"]
    assert ann["bbox"] == [0, 0, 10, 20] and ann["area"] == 200


def test_classes_are_sorted_from_the_files_or_taken_in_the_given_order(tmp_path):
    objects = [_object_xml("zebra", (1, 1, 5, 5)), _object_xml("ant", (1, 1, 5, 5))]
    _write(tmp_path, "a", _annotation_xml("a.jpg", (10, 10), objects), (10, 10))
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


def test_a_folder_without_imagesets_names_the_split_keys_and_the_fix(tmp_path, make_image):
    """raccoon's layout (xml and photos, no ImageSets): the message named the file alone, not the key that asked
    for it nor the README's way to read such a folder."""
    write_voc(EXPECTED, tmp_path, make_image)
    with pytest.raises(DataError) as err:
        read_voc(tmp_path, "trainval")
    assert f"{tmp_path / 'ImageSets' / 'Main' / 'trainval.txt'} (split='trainval': data.source.train.split" in str(err.value)
    assert "split=null" in str(err.value) and "data.source.val=null data.source.holdout=0.2" in str(err.value)


def test_a_filename_that_names_no_file_falls_back_to_the_image_named_like_the_xml(tmp_path, make_image):
    make_image(tmp_path / "JPEGImages" / "a.png", 12, 8)
    xml = _write(tmp_path, "a", _annotation_xml("a.jpg", None, [_object_xml("cat", (1, 1, 4, 4))]))
    dataset = read_voc(tmp_path)
    assert dataset.coco["images"] == [{"id": 1, "file_name": "a.png", "width": 12, "height": 8}]
    [note] = dataset.notes  # nothing is lost
    assert note.startswith(f"{xml}: field 'filename'='a.jpg'") and "using a.png" in note and dataset.problems == []


@pytest.mark.parametrize("size", [(0, 0), (9, 9)], ids=["without size", "with size"])
def test_no_image_leaves_the_image_out_with_its_boxes(tmp_path, size):
    xml = _write(tmp_path, "a", _annotation_xml("a.jpg", size, [_object_xml("cat", (1, 1, 4, 4))]))
    _write(tmp_path, "b", _annotation_xml("b.jpg", (9, 9), [_object_xml("cat", (1, 1, 4, 4))]), (9, 9))
    dataset = read_voc(tmp_path)
    assert [img["file_name"] for img in dataset.coco["images"]] == ["b.jpg"] and len(dataset.coco["annotations"]) == 1
    [problem] = dataset.problems
    assert problem.startswith(f"{xml}: field 'filename'='a.jpg': no such image in {tmp_path / 'JPEGImages'}")
    assert "the image and its 1 box(es) are left out" in problem


def test_a_size_that_is_not_the_images_leaves_the_image_out_naming_the_xml(tmp_path):
    """<size> 40x30 over a 20x15 image (resized after labelling): the boxes were in the old size, and the run
    used to stop in its first epoch naming only the converted file's record; and a <size> that is the EXIF-rotated
    frame of an image stored 30x40 (a tool that drew on the rotated image)."""
    resized = _write(tmp_path, "a", _annotation_xml("a.jpg", (40, 30), [_object_xml("cat", (1, 1, 30, 20))]), (20, 15))
    _write(tmp_path, "b", _annotation_xml("b.jpg", (30, 40), [_object_xml("cat", (1, 1, 10, 10))]))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "JPEGImages" / "b.jpg", exif=exif)
    _write(tmp_path, "c", _annotation_xml("c.jpg", (9, 9), [_object_xml("cat", (1, 1, 4, 4))]), (9, 9))
    dataset = read_voc(tmp_path)
    assert [img["file_name"] for img in dataset.coco["images"]] == ["c.jpg"] and len(dataset.coco["annotations"]) == 1
    first, second = dataset.problems
    assert first == (f"{resized}: field 'size': says 40x30 (w x h) but image {tmp_path / 'JPEGImages' / 'a.jpg'} is "
                     "20x15; the image and its 1 box(es) are left out")
    assert "says 30x40 (w x h)" in second and "the size shown after EXIF Orientation=6" in second


@pytest.mark.parametrize("size", [(0, 30), (40, 0), (0, 0)])
def test_a_size_with_a_zero_side_is_no_size_and_the_image_gives_it(tmp_path, size):
    """Labelling tools write <size> 0 0 (or one side 0) when they never read the image: such a size says nothing,
    and the image's own 40x30 is the record's (not a 'size disagrees with the image' problem)."""
    _write(tmp_path, "a", _annotation_xml("a.jpg", size, [_object_xml("cat", (1, 1, 30, 20))]), (40, 30))
    dataset = read_voc(tmp_path)
    assert dataset.problems == [] and len(dataset.coco["annotations"]) == 1
    assert [(img["width"], img["height"]) for img in dataset.coco["images"]] == [(40, 30)]


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
        # round() of these stopped the reader with a bare ValueError / OverflowError
        (_annotation_xml("a.jpg", ("nan", 9), []), "field 'size/width'='nan' is not a finite number"),
        (_annotation_xml("a.jpg", (9, "inf"), []), "field 'size/height'='inf' is not a finite number"),
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
    xml = _write(tmp_path, "a", _annotation_xml("a.jpg", (20, 20), objects), (20, 20))
    dataset = read_voc(tmp_path)
    assert [a["bbox"] for a in dataset.coco["annotations"]] == [[0, 0, 10, 10], [14, 11, 6, 9]]
    assert len(dataset.problems) == 4  # dropped
    for number, says in zip((2, 3, 4, 6), ("x2 < x1", "zero area", "not finite", "wholly outside")):
        assert any(p.startswith(f"{xml}: object #{number} ('cat'), field 'bndbox'") and says in p
                   for p in dataset.problems), says
    [note] = dataset.notes  # clipped: nothing lost
    assert note.startswith(f"{xml}: object #5 ('cat'), field 'bndbox'") and "clipped to (14, 11, 20, 20)" in note


def test_a_split_file_given_by_path(tmp_path, make_image):
    write_voc(EXPECTED, tmp_path, make_image)
    (tmp_path / "mine.txt").write_text("000002\n")
    coco = read_voc(tmp_path, str(tmp_path / "mine.txt")).coco
    assert [img["file_name"] for img in coco["images"]] == ["000002.jpg"] and len(coco["annotations"]) == 2


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(ValueError, match="no .xml files in .*an empty dataset"):
        read_voc(tmp_path)
    with pytest.raises(ValueError, match="annotation folder not found"):
        read_voc(tmp_path / "nowhere")


@pytest.mark.realdata
def test_raccoon_real_data(real_data):
    """The raccoon dataset (datitran/raccoon_dataset): 200 photographs, 217 boxes of one class, per its README."""
    root = real_data / "raccoon"
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


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_a_difficult_object_is_an_ignore_region_for_both_evaluators(tmp_path, backend):
    """A detection only on the normal cat scores AP 1 when the difficult cat is ignored (0.5 recall if it counted);
    a detection on the difficult cat is then no false positive either. Written as ignore=1 without iscrowd=1,
    both evaluators would count it: they take `ignore` from `iscrowd`."""
    objects = [_object_xml("cat", (1, 1, 10, 10)), _object_xml("cat", (21, 21, 40, 40), difficult=1)]
    _write(tmp_path, "a", _annotation_xml("a.jpg", (50, 50), objects), (50, 50))
    coco = read_voc(tmp_path).coco
    detections = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
                  {"image_id": 1, "category_id": 1, "bbox": [20, 20, 20, 20], "score": 0.9}]

    def ap(annotations, results) -> float:
        (tmp_path / "gt.json").write_text(json.dumps({**coco, "annotations": annotations}))
        (tmp_path / "dt.json").write_text(json.dumps(results))
        return evaluate_results_file(str(tmp_path / "gt.json"), str(tmp_path / "dt.json"), backend)["metrics"]["AP"]

    assert ap(coco["annotations"], detections[:1]) == pytest.approx(1.0)
    assert ap(coco["annotations"], detections) == pytest.approx(1.0)
    without_crowd = [{**a, "iscrowd": 0} for a in coco["annotations"]]  # ignore=1 alone
    assert ap(without_crowd, detections[:1]) == pytest.approx(0.5, abs=0.01)
