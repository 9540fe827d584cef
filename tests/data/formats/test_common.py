"""The box checks every reader shares: what is kept, clipped or dropped, and the problem line for each."""

import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from detlab.data.formats.common import CocoBuilder, check_class_names, display_size, display_to_stored, image_header

WHERE = "src.txt: line 7, field 'box'"


def _builder_with_image(tmp_path):
    builder = CocoBuilder(["cat", "dog"], tmp_path)
    return builder, builder.add_image("a.jpg", 100, 50)


def test_a_good_box_becomes_xywh_with_its_area_and_flags(tmp_path):
    builder, image = _builder_with_image(tmp_path)
    builder.add_box(image, "dog", (10, 5, 30, 45), WHERE)
    builder.add_box(image, "cat", (0, 0, 100, 50), WHERE, ignore=True, iscrowd=True)
    coco = builder.result().coco
    first, second = coco["annotations"]
    assert first == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 5, 20, 40], "area": 800, "iscrowd": 0}
    assert second["bbox"] == [0, 0, 100, 50] and second["ignore"] == 1 and second["iscrowd"] == 1
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert coco["images"] == [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}]
    assert builder.problems == []


@pytest.mark.parametrize(
    "box, says",
    [
        ((30, 5, 10, 45), "x2 < x1"),
        ((10, 45, 30, 5), "y2 < y1"),
        ((10, 5, 10, 45), "zero area"),
        ((10, 5, 30, 5), "zero area"),
        ((math.nan, 5, 30, 45), "not finite"),
        ((10, 5, math.inf, 45), "not finite"),
        ((100, 0, 120, 10), "wholly outside the 100x50 image"),
        ((-20, -10, 0, 10), "wholly outside the 100x50 image"),
        ((10, 50, 20, 60), "wholly outside the 100x50 image"),
    ],
)
def test_a_box_that_cannot_be_kept_is_dropped_with_a_problem_naming_where(tmp_path, box, says):
    builder, image = _builder_with_image(tmp_path)
    builder.add_box(image, "cat", box, WHERE)
    assert builder.result().coco["annotations"] == []
    [problem] = builder.problems
    assert problem.startswith(WHERE) and says in problem and "dropped" in problem


def test_a_box_partly_outside_is_clipped_and_reported_unless_the_format_means_it(tmp_path):
    builder, image = _builder_with_image(tmp_path)
    builder.add_box(image, "cat", (-10, -5, 40, 60), WHERE)
    builder.add_box(image, "cat", (90, 40, 120, 70), WHERE, report_clipping=False)
    first, second = builder.result().coco["annotations"]
    assert first["bbox"] == [0, 0, 40, 50] and first["area"] == 2000
    assert second["bbox"] == [90, 40, 10, 10] and second["area"] == 100
    [note] = builder.notes  # nothing is lost: a note, not a problem
    assert builder.problems == []
    assert note.startswith(WHERE) and "partly outside" in note and "clipped to (0, 0, 40, 50)" in note


def test_class_names_must_be_distinct_and_non_empty():
    assert check_class_names(("a", "b")) == ["a", "b"]
    with pytest.raises(ValueError, match=r"'a' appears twice \(entries #0 and #2\)"):
        check_class_names(["a", "b", "a"])
    with pytest.raises(ValueError, match="entry #1 is empty"):
        check_class_names(["a", " "])
    with pytest.raises(ValueError, match="entry #1 is None, not a name"):  # it was a class called "None"
        check_class_names(["a", None])


def test_image_header_gives_the_size_and_a_clear_error_for_missing_or_broken_files(tmp_path, make_image):
    assert image_header(make_image(tmp_path / "a.png", 7, 5)) == (7, 5, None)
    with pytest.raises(ValueError, match="image file not found: .*missing.jpg"):
        image_header(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read the header of image .*broken.jpg"):
        image_header(tmp_path / "broken.jpg")


def test_an_image_over_pils_size_limit_is_a_clear_error(tmp_path, make_image, monkeypatch):
    """Over 2 * MAX_IMAGE_PIXELS (179 MP; DOTA's aerial photographs reach 400 MP) PIL raises its own
    DecompressionBombError, which was a bare traceback; a limit of 100 pixels makes a 40x30 image such a file."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"cannot read the header of image .*big.png \(Image size \(1200 pixels\) exceeds"):
        image_header(make_image(tmp_path / "big.png", 40, 30))


def test_an_unreadable_image_is_left_out_with_its_boxes_and_a_problem(tmp_path, make_image):
    builder = CocoBuilder(["cat"], tmp_path)
    make_image(tmp_path / "good.jpg", 8, 6)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    assert builder.add_image_from_file("good.jpg", "labels/good.txt", 0)["width"] == 8
    assert builder.add_image_from_file("bad.jpg", "labels/bad.txt", 3) is None
    assert [img["file_name"] for img in builder.result().coco["images"]] == ["good.jpg"]
    [problem] = builder.problems
    assert problem.startswith("labels/bad.txt: ") and "bad.jpg" in problem and "its 3 box(es) are left out" in problem


def test_an_exif_rotated_image_is_noted(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.new("RGB", (8, 4)).save(tmp_path / "rotated.jpg", exif=exif)
    builder = CocoBuilder(["cat"], tmp_path)
    image = builder.add_image_from_file("rotated.jpg", "rotated.xml", 0)
    assert (image["width"], image["height"]) == (8, 4)  # the stored pixels, which is what detlab loads
    assert builder.orientations == {image["id"]: 6} and builder.problems == []
    [note] = builder.notes
    assert note.startswith("rotated.xml: ") and "EXIF Orientation=6" in note and "stored pixels' frame" in note


@pytest.mark.parametrize("orientation", range(1, 9))
def test_display_to_stored_inverts_what_pil_shows(orientation):
    """A white rectangle drawn in the stored pixels; PIL's exif_transpose shows it; the box found in the shown
    image, mapped back, must be the drawn one."""
    stored = np.zeros((30, 50), np.uint8)  # H x W = 30 x 50
    stored[4:12, 7:20] = 255  # x 7..20, y 4..12
    image = Image.fromarray(stored)
    image.getexif()[0x0112] = orientation
    shown = np.asarray(ImageOps.exif_transpose(image))
    ys, xs = np.nonzero(shown)
    box_shown = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert display_size(orientation, 50, 30) == (shown.shape[1], shown.shape[0])
    assert display_to_stored(box_shown, orientation, 50, 30) == (7, 4, 20, 12)
