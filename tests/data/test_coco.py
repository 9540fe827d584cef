"""The COCO reader: the label map, crowd and empty images, image modes, and a clear error for each bad input."""

import copy
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from detlab.data.coco.reader import CocoDetection
from detlab.data.transforms import DetectionTransform
from detlab.errors import DataError
from detlab.structures import boxes_to_original

# Non-contiguous category ids listed out of order: labels must follow the sorted ids (3 -> 0, 7 -> 1, 11 -> 2).
CATEGORIES = [{"id": 11, "name": "cat"}, {"id": 3, "name": "ant"}, {"id": 7, "name": "bee"}]
IMAGES = [  # (id, file, PIL mode, (w, h))
    (42, "rgb.png", "RGB", (64, 48)),
    (7, "gray.png", "L", (40, 30)),
    (1001, "palette.png", "P", (32, 32)),
    (5, "rgba.png", "RGBA", (20, 24)),
]
ANNOTATIONS = [  # (annotation id, image id, category id, bbox xywh, iscrowd)
    (1, 42, 7, [10, 5, 20, 30], 0),
    (2, 42, 3, [30.5, 20.25, 10, 12.5], 0),
    (3, 42, 11, [0, 0, 64, 48], 1),  # crowd: scored by COCOeval from the file, never a training target
    (4, 42, 11, [-6, 40, 16, 20], 0),  # partly outside: clipped to [0, 40, 10, 48]
    (5, 1001, 11, [2, 3, 4, 5], 0),
    (6, 5, 3, [1, 1, 5, 5], 0),
]  # image 7 has no objects and must be kept


def passthrough(image, boxes_xyxy, labels, image_id):
    return SimpleNamespace(image=image, boxes=boxes_xyxy, labels=labels, image_id=image_id)


def coco_dict() -> dict:
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, _, (w, h) in IMAGES],
        "annotations": [
            {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for a, i, c, b, crowd in ANNOTATIONS
        ],
        "categories": copy.deepcopy(CATEGORIES),
    }


@pytest.fixture
def data_coco(tmp_path) -> Path:
    """A small COCO folder: annotations.json and one image per mode; pixel (0, 0) has a known colour."""
    for _, name, mode, size in IMAGES:
        image = Image.new(mode, size, {"RGB": (10, 20, 30), "L": 77, "P": 1, "RGBA": (40, 50, 60, 0)}[mode])
        if mode == "P":
            image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
        image.save(tmp_path / name)
    write(tmp_path, coco_dict())
    return tmp_path


def write(folder: Path, data) -> Path:
    (folder / "annotations.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return folder / "annotations.json"


def test_labels_follow_sorted_category_ids_crowd_is_excluded_empty_images_kept(data_coco):
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    reference = COCO(str(data_coco / "annotations.json"))
    assert dataset.category_ids == [3, 7, 11] and dataset.class_names == ["ant", "bee", "cat"]
    assert len(dataset) == 4 and sorted(dataset.image_ids) == sorted(reference.getImgIds())
    for index, image_id in enumerate(dataset.image_ids):
        item = dataset[index]
        anns = [a for a in reference.loadAnns(reference.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        img = reference.loadImgs(image_id)[0]
        expected = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        expected[:, 2:] += expected[:, :2]
        expected = expected.clip(0, [img["width"], img["height"]] * 2)
        assert item.image_id == image_id
        np.testing.assert_allclose(item.boxes, expected, atol=1e-5)
        assert item.labels.tolist() == [sorted(reference.getCatIds()).index(a["category_id"]) for a in anns]
        assert item.boxes.dtype == np.float32 and item.labels.dtype == np.int64
    empty = dataset[dataset.image_ids.index(7)]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    assert dataset.eval_ann_file == str(data_coco / "annotations.json") and dataset.problems == []


def test_an_explicit_label_space_maps_category_ids_to_its_positions(data_coco):
    """data.category_ids (torchvision's 91-way COCO labels: label = category id) keeps places for ids the file
    lacks; a category of the file that the label space lacks stops with both named."""
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough, category_ids=list(range(12)))
    assert dataset.category_ids == list(range(12))
    assert dataset.class_names[3] == "ant" and dataset.class_names[7] == "bee" and dataset.class_names[0] == "unused_0"
    reference = COCO(str(data_coco / "annotations.json"))
    for index, image_id in enumerate(dataset.image_ids):
        anns = [a for a in reference.loadAnns(reference.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        assert dataset[index].labels.tolist() == [a["category_id"] for a in anns]
    with pytest.raises(ValueError, match=r"annotations.json: categories \[11\] .* not in data.category_ids=\[3, 7\]"):
        CocoDetection(data_coco / "annotations.json", data_coco, passthrough, category_ids=[3, 7])
    with pytest.raises(ValueError, match=r"data.category_ids=\[3, 3, 7, 11\] repeats an id"):
        CocoDetection(data_coco / "annotations.json", data_coco, passthrough, category_ids=[3, 3, 7, 11])


def test_grayscale_palette_and_rgba_images_become_rgb(data_coco):
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    expected = {42: (10, 20, 30), 7: (77, 77, 77), 1001: (200, 100, 50), 5: (40, 50, 60)}
    for index, image_id in enumerate(dataset.image_ids):
        image = dataset.load_image(index)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert tuple(image[0, 0]) == expected[image_id]


def test_items_through_the_eval_transform_map_back_to_the_file_exactly(data_coco):
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, DetectionTransform(50, min_box_size=0.01))
    sample = dataset[dataset.image_ids.index(42)]
    back = boxes_to_original(sample.boxes[None], torch.tensor([sample.scale]), torch.tensor([sample.offset]))[0]
    expected = torch.tensor([[10, 5, 30, 35], [30.5, 20.25, 40.5, 32.75], [0, 40, 10, 48]])
    torch.testing.assert_close(back, expected, atol=1e-4, rtol=0)
    assert sample.orig_size == (48, 64) and sample.size == (38, 50) and sample.image.shape == (3, 50, 50)


def mutate(edit):
    data = coco_dict()
    edit(data)
    return data


def ann(data, annotation_id):
    return next(a for a in data["annotations"] if a["id"] == annotation_id)


# Each bad input and the pieces its message must name (the file is always checked too).
BAD_INPUTS = {
    "truncated json": (json.dumps(coco_dict())[:150], ["not valid JSON", "truncated"]),
    # json's decoder recurses per level: a bare RecursionError
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    "not an object": ("[1, 2]", ["JSON object"]),
    "no annotations key": (mutate(lambda d: d.pop("annotations")), ["'annotations'"]),
    "image without file_name": (mutate(lambda d: d["images"][1].pop("file_name")), ["image id=7", "'file_name'"]),
    "image with zero width": (mutate(lambda d: d["images"][1].update(width=0)), ["image id=7", "'width'"]),
    # JSON's Infinity (or 1e400) passed the check: every box was "inside", and the run stopped at the first load
    "image of infinite height": (mutate(lambda d: d["images"][1].update(height=float("inf"))), ["image id=7", "'height'"]),
    "duplicate image id": (mutate(lambda d: d["images"][2].update(id=7)), ["image id=7", "duplicate", "'id'"]),
    "duplicate category id": (mutate(lambda d: d["categories"][1].update(id=11)), ["category id=11", "'id'"]),
    # the evaluator refused it after the data was read: 80 class names, without the file, the ids or the field
    "duplicate category name": (mutate(lambda d: d["categories"][1].update(name=d["categories"][0]["name"])),
                                ["categories id=11 and id=", "same field 'name'="]),
    # str() made it a class called "None" for pycocotools and faster-coco-eval; hotcoco refused the file
    "null category name": (mutate(lambda d: d["categories"][1].update(name=None)),
                           ["category id=3 (category #1)", "'name'=None must be a string"]),
    "annotation without bbox": (mutate(lambda d: ann(d, 2).pop("bbox")), ["image id=42", "annotation id=2", "'bbox'"]),
    "unknown category": (mutate(lambda d: ann(d, 2).update(category_id=99)), ["image id=42", "'category_id'=99"]),
    "unknown image": (mutate(lambda d: ann(d, 5).update(image_id=777)), ["image id=777", "'image_id'"]),
    # a list (or an object) stopped the checker with a bare TypeError (unhashable)
    "list as image id": (mutate(lambda d: ann(d, 5).update(image_id=[1001])), ["annotation id=5", "'image_id'"]),
    "list as category id": (mutate(lambda d: ann(d, 2).update(category_id=[3])), ["annotation id=2", "'category_id'"]),
    "zero width box": (mutate(lambda d: ann(d, 1).update(bbox=[1, 1, 0, 5])), ["image id=42", "'bbox'", "w <= 0"]),
    "negative size box": (mutate(lambda d: ann(d, 6).update(bbox=[4, 4, 3, -2])), ["image id=5", "'bbox'"]),
    "nan box": (mutate(lambda d: ann(d, 1).update(bbox=[1, float("nan"), 3, 3])), ["image id=42", "'bbox'", "finite"]),
    "inf box": (mutate(lambda d: ann(d, 5).update(bbox=[1, 1, float("inf"), 3])), ["image id=1001", "'bbox'"]),
    "box of 3 numbers": (mutate(lambda d: ann(d, 1).update(bbox=[1, 1, 3])), ["image id=42", "'bbox'"]),
    "box wholly outside": (mutate(lambda d: ann(d, 5).update(bbox=[32, 0, 5, 5])), ["image id=1001", "outside"]),
    # a JSON true is a Python int: without the check [true, true, true, true] was a 1x1 box
    "boolean box": (mutate(lambda d: ann(d, 1).update(bbox=[True, True, True, True])), ["annotation id=1", "'bbox'"]),
    "text in a box": (mutate(lambda d: ann(d, 1).update(bbox=["1", 1, 3, 3])), ["annotation id=1", "'bbox'"]),
    "string image id": (mutate(lambda d: d["images"][0].update(id="img42")), ["'id'='img42'", "must be an integer"]),
    # the engines hold ids as int64 (2**64 was a bare OverflowError), and hotcoco refuses a negative one
    "negative image id": (mutate(lambda d: d["images"][1].update(id=-7)), ["image id=-7", "'id'=-7", "from 0 to 2**63 - 1"]),
    "category id 2**64": (mutate(lambda d: d["categories"][0].update(id=2**64)), ["category #0", "from 0 to 2**63 - 1"]),
    "string category id": (mutate(lambda d: d["categories"][0].update(id="cat")), ["category #0", "'id'='cat'"]),
    # COCOeval takes a ground-truth id of 0 for "unmatched": the engines scored a perfect detection of it 0 or 1
    "annotation id 0": (mutate(lambda d: ann(d, 2).update(id=0)), ["annotation id=0", "'id'=0", "positive integer"]),
    "duplicate annotation id": (mutate(lambda d: ann(d, 2).update(id=1)), ["image id=42", "duplicate annotation id"]),
    "annotation without area": (mutate(lambda d: ann(d, 6).pop("area")), ["annotation id=6", "missing field 'area'"]),
    "boolean area": (mutate(lambda d: ann(d, 6).update(area=True)), ["annotation id=6", "'area'=True"]),
    # COCOeval sizes objects by it: the object counted as large (APl) or, above 1e10, in no number at all
    "area beyond its box and image": (mutate(lambda d: ann(d, 6).update(area=2e10)),
                                      ["annotation id=6", "'area'=20000000000.0 is larger than its box"]),
    # pycocotools takes any true iscrowd as crowd (the box silently ignored), hotcoco stops without naming the file
    "iscrowd text": (mutate(lambda d: ann(d, 6).update(iscrowd="no")), ["annotation id=6", "'iscrowd'='no'"]),
    "no annotation at all": (mutate(lambda d: d.update(annotations=[])), ["no object to learn from or score against"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_names_the_file_image_id_and_field(data_coco, case):
    data, pieces = BAD_INPUTS[case]
    path = write(data_coco, copy.deepcopy(data))
    with pytest.raises(ValueError) as err:
        dataset = CocoDetection(path, data_coco, passthrough)
        if dataset.empty:  # nothing invalid, but nothing to train on: DetectionDataModule stops on it
            raise ValueError(dataset.empty)
    for piece in [str(path), *pieces]:
        assert piece in str(err.value), (piece, str(err.value))


def test_missing_annotation_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nowhere.json"):
        CocoDetection(tmp_path / "nowhere.json", tmp_path, passthrough)


def test_a_folder_given_as_the_annotation_file_names_it(tmp_path):
    """It stopped with a bare IsADirectoryError."""
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: is a folder; give the COCO annotation json file")):
        CocoDetection(tmp_path, tmp_path, passthrough)


def test_skip_drops_and_counts_bad_annotations_and_scores_against_a_clean_copy(data_coco):
    def break_three(d):
        ann(d, 1).update(bbox=[1, 1, 0, 5])
        ann(d, 5).update(category_id=99)
        ann(d, 6).update(image_id=777)

    path = write(data_coco, mutate(break_three))
    with pytest.raises(ValueError, match="3 invalid annotation"):
        CocoDetection(path, data_coco, passthrough)
    dataset = CocoDetection(path, data_coco, passthrough, on_invalid="skip")
    assert dataset.num_skipped == 3 and len(dataset.problems) == 3
    assert any("annotation id=5" in p and "'category_id'" in p for p in dataset.problems)
    assert len(dataset) == 4  # every image is kept, also those that lost their only annotation
    assert sum(len(dataset[i].labels) for i in range(len(dataset))) == 2  # annotations 2 and 4; 3 is crowd
    clean = COCO(dataset.eval_ann_file)
    assert dataset.eval_ann_file != str(path) and sorted(clean.getAnnIds()) == [2, 3, 4]
    assert sorted(clean.getImgIds()) == sorted(i for i, *_ in IMAGES)


def test_unknown_policy_names_the_key(data_coco):
    with pytest.raises(ValueError, match="data.on_invalid='ignore'"):
        CocoDetection(data_coco / "annotations.json", data_coco, passthrough, on_invalid="ignore")


def test_missing_corrupt_and_wrongly_sized_images_name_the_file_and_image_id(data_coco):
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    index = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    (data_coco / "gray.png").unlink()
    with pytest.raises(DataError, match=r"gray\.png.*image id=7"):
        dataset[index[7]]
    (data_coco / "palette.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"palette\.png.*image id=1001"):
        dataset[index[1001]]
    Image.new("RGB", (21, 24)).save(data_coco / "rgba.png")
    with pytest.raises(ValueError, match=r"rgba\.png.*image id=5.*'width'=20"):
        dataset[index[5]]


def test_an_image_fault_found_only_by_decoding_names_the_command_that_finds_them_all(data_coco, capsys):
    """Undecodable pixels stop the run under either on_invalid; the message's command is runnable and finds the
    image, and the other images' faults with it, before training."""
    from detlab.cli.data import main

    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough, on_invalid="skip")
    (data_coco / "palette.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (21, 24)).save(data_coco / "rgba.png")
    with pytest.raises(DataError, match=r"palette\.png.*image id=1001") as caught:
        dataset[dataset.image_ids.index(1001)]
    command = re.search(r"`detlab-data (check .*?)`", str(caught.value)).group(1)
    assert main(shlex.split(command)) == 1
    printed = capsys.readouterr().out
    assert "image id=1001, field 'file_name'='palette.png'" in printed and "cannot decode" in printed
    assert "image id=5, field 'file_name'='rgba.png'" in printed and "'width'=20" in printed


def test_an_image_over_pils_size_limit_names_the_file_and_image_id(data_coco, monkeypatch):
    """PIL's DecompressionBombError (an Exception, not an OSError) was a bare traceback from the loader."""
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40x30 gray.png is then over twice the limit
    with pytest.raises(DataError, match=r"cannot decode image .*gray\.png \(image id=7 of .*\): Image size \(1200 pixels\)"):
        dataset[dataset.image_ids.index(7)]


@pytest.mark.realdata
def test_reads_the_real_coco128_subset(real_data):
    """The first 128 COCO train2017 images with their original annotations, checked against pycocotools."""
    folder = real_data / "coco128"
    ann_file = folder / "annotations" / "instances_train2017.json"
    dataset = CocoDetection(ann_file, folder / "train2017", DetectionTransform(512, min_box_size=1e-3))
    reference = COCO(str(ann_file))
    assert dataset.category_ids == sorted(reference.getCatIds()) and len(dataset.category_ids) == 80
    assert dataset.class_names == [reference.cats[c]["name"] for c in dataset.category_ids]
    assert len(dataset) == 128 and dataset.problems == []
    for index in (0, 5, 64, 127):
        sample = dataset[index]
        anns = [a for a in reference.imgToAnns[sample.image_id] if not a["iscrowd"]]
        expected = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        expected[:, 2:] += expected[:, :2]
        img = reference.imgs[sample.image_id]
        expected = expected.clamp(min=0).minimum(torch.tensor([img["width"], img["height"]] * 2, dtype=torch.float64))
        scale, offset = torch.tensor([sample.scale]), torch.tensor([sample.offset])
        back = boxes_to_original(sample.boxes[None].double(), scale, offset)
        torch.testing.assert_close(back[0], expected, atol=1e-2, rtol=0)
        assert [dataset.category_ids[label] for label in sample.labels] == [a["category_id"] for a in anns]
        assert sample.orig_size == (img["height"], img["width"]) and max(sample.size) == 512


def test_a_16_bit_image_loads_as_8_bit_rgb_scaled_not_clipped(data_coco):
    # 0x1234 = 4660: PIL's own convert("RGB") clips it to 255; the high byte 0x12 = 18 is the 8-bit value.
    Image.fromarray(np.full((30, 40), 0x1234, np.uint16)).save(data_coco / "gray.png")
    assert Image.open(data_coco / "gray.png").mode.startswith("I")
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    image = dataset.load_image(dataset.image_ids.index(7))
    assert image.dtype == np.uint8 and image.shape == (30, 40, 3) and (image == 0x12).all()


def exif_jpeg(path: Path, width: int, height: int, orientation: int) -> np.ndarray:
    """A JPEG whose stored pixels are width x height, left half dark, with an EXIF orientation; its pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, width // 2:] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    return pixels


def test_an_exif_rotated_jpeg_loads_as_stored_in_the_frame_of_its_coco_record(data_coco):
    """COCO's width, height and boxes are in the stored pixels' frame: the image is not rotated."""
    stored = exif_jpeg(data_coco / "rotated.jpg", 64, 48, orientation=6)  # a viewer shows it 48 x 64
    data = coco_dict()
    data["images"][0]["file_name"] = "rotated.jpg"  # image 42, 64 x 48
    path = write(data_coco, data)
    dataset = CocoDetection(path, data_coco, passthrough)
    image = dataset.load_image(dataset.image_ids.index(42))
    assert image.shape == stored.shape and np.abs(image.astype(int) - stored).max() <= 8  # JPEG rounding
    data["images"][0].update(width=48, height=64)  # a record in the rotated frame is caught, not trained on
    dataset = CocoDetection(write(data_coco, data), data_coco, passthrough, on_invalid="skip")
    with pytest.raises(ValueError, match=r"rotated\.jpg \(image id=42 .*is 64x48 \(w x h\).*'width'=48"):
        dataset.load_image(dataset.image_ids.index(42))


def test_a_missing_image_file_is_found_before_training_and_skipped_with_its_annotations(data_coco):
    (data_coco / "palette.png").unlink()  # image 1001, with annotation 5
    with pytest.raises(ValueError) as err:
        CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    message = str(err.value)
    assert str(data_coco / "annotations.json") in message and "image id=1001" in message
    assert "field 'file_name'='palette.png': image file not found" in message and "1 annotation(s)" in message
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough, on_invalid="skip")
    assert sorted(dataset.image_ids) == [5, 7, 42] and len(dataset.problems) == 1
    clean = COCO(dataset.eval_ann_file)
    assert sorted(clean.getImgIds()) == [5, 7, 42] and 5 not in clean.getAnnIds()


def test_an_image_listed_twice_is_found_before_training_and_the_second_record_skipped(data_coco):
    """A picture under two ids (files merged twice, a copied record): the objects of one record were background in
    the other, for training and for scoring, without a word."""
    def list_gray_twice(d):
        d["images"].append({**next(img for img in d["images"] if img["id"] == 7), "id": 8})
        d["annotations"].append({"id": 99, "image_id": 8, "category_id": 11, "bbox": [1, 1, 4, 4], "area": 16})

    path = write(data_coco, mutate(list_gray_twice))
    with pytest.raises(ValueError) as err:
        CocoDetection(path, data_coco, passthrough)
    assert (f"{path}: image id=8: field 'file_name'='gray.png': image id=7 has this file too: one picture listed "
            "twice; the image and its 1 annotation(s) are left out") in str(err.value)
    dataset = CocoDetection(path, data_coco, passthrough, on_invalid="skip")
    assert 8 not in dataset.image_ids and 7 in dataset.image_ids and len(dataset.problems) == 1
    assert 8 not in COCO(dataset.eval_ann_file).getImgIds()


def test_an_empty_dataset_is_an_error(data_coco):
    path = write(data_coco, mutate(lambda d: d.update(images=[], annotations=[])))
    with pytest.raises(ValueError, match=rf"{path}: field 'images' is empty: an empty dataset"):
        CocoDetection(path, data_coco, passthrough)


def test_a_box_partly_outside_is_clipped_and_noted(data_coco):
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, passthrough)
    [note] = dataset.notes  # annotation 4, [-6, 40, 16, 20] in the 64 x 48 image 42
    assert note.startswith(f"{data_coco / 'annotations.json'}: image id=42, annotation id=4: field 'bbox'")
    assert "partly outside the 64x48 image" in note and dataset.problems == []


def test_the_boxes_the_transform_drops_are_counted_across_loader_workers(data_coco):
    """At size 32 the 64-px image 42 is halved: its boxes of 20x30, 10x12.5 and 10x8 (clipped) become 10x15, 5x6.25
    and 5x4; with min_box_size=4.5 the last is dropped. The 32-px image 1001 keeps its 4x5 box as 4x5: dropped too;
    image 5 (24 px high) scales by 32/24, its 5x5 box becomes 6.67: kept."""
    dataset = CocoDetection(data_coco / "annotations.json", data_coco, DetectionTransform(32, min_box_size=4.5))
    assert dataset.transform_counts() == {"boxes": 0, "dropped": 0}
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=lambda items: items)
    for _ in range(2):  # two epochs
        kept = sum(len(item.boxes) for [item] in loader)
        assert kept == 3
    assert dataset.transform_counts() == {"boxes": 10, "dropped": 4}  # 5 training targets a pass, 2 dropped
