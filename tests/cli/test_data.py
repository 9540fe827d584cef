"""`detlab-data convert`: every format to a COCO json that pycocotools loads, the summary, clear errors."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detlab.cli.data import main


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _boxes(coco: COCO) -> list[tuple]:
    """(file name, class name, bbox, iscrowd) per annotation, as pycocotools reads them."""
    return sorted(
        (coco.imgs[a["image_id"]]["file_name"], coco.cats[a["category_id"]]["name"], a["bbox"], a["iscrowd"])
        for a in coco.loadAnns(coco.getAnnIds())
    )


def test_convert_voc(tmp_path, make_image, capsys):
    make_image(tmp_path / "JPEGImages" / "a.jpg", 30, 20)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>30</width><height>20</height></size>"
        "<object><name>dog</name><difficult>1</difficult>"
        "<bndbox><xmin>3</xmin><ymin>2</ymin><xmax>12</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    out = tmp_path / "out" / "instances.json"
    assert main(["convert", "--format", "voc", str(tmp_path), "--out", str(out)]) == 0
    coco = _load(out)
    # ymax 40 clipped to the 20-pixel image; difficult: a crowd (ignore) region
    assert _boxes(coco) == [("a.jpg", "dog", [2.0, 1.0, 10.0, 19.0], 1)]
    assert coco.loadAnns(coco.getAnnIds())[0]["ignore"] == 1
    printed = capsys.readouterr().out
    assert "1 images, 1 objects (1 of them crowd/ignore regions" in printed and "1 classes (dog 0)" in printed
    assert "0 problems (left out), 1 notes (repaired)" in printed
    assert "a.xml: object #1 ('dog'), field 'bndbox'" in printed and "clipped" in printed


def test_convert_yolo_with_a_data_yaml(tmp_path, make_image):
    make_image(tmp_path / "images" / "a.jpg", 40, 20)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    out = tmp_path / "yolo.json"
    argv = ["convert", "--format", "yolo", str(tmp_path / "images"), "--names", str(tmp_path / "data.yaml")]
    assert main(argv + ["--out", str(out)]) == 0
    assert _boxes(_load(out)) == [("a.jpg", "dog", [10.0, 5.0, 20.0, 10.0], 0)]


def test_convert_udacity(tmp_path, make_image):
    make_image(tmp_path / "frames" / "1.jpg", 50, 40)
    (tmp_path / "labels.csv").write_text('1.jpg 5 6 25 36 1 "trafficLight" "Green"\n1.jpg 0 0 10 10 0 "car"\n')
    out = tmp_path / "udacity.json"
    argv = ["convert", "--format", "udacity", str(tmp_path / "labels.csv"), "--images", str(tmp_path / "frames")]
    assert main(argv + ["--classes", "car,truck,trafficLight", "--out", str(out)]) == 0
    coco = _load(out)
    assert _boxes(coco) == [
        ("1.jpg", "car", [0.0, 0.0, 10.0, 10.0], 0),
        ("1.jpg", "trafficLight", [5.0, 6.0, 20.0, 30.0], 0),
    ]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["car", "truck", "trafficLight"]


def test_convert_mot(tmp_path, make_image, capsys):
    make_image(tmp_path / "img1" / "000001.jpg", 32, 24)
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "gt.txt").write_text("1,1,2,3,5,10,1,1,0.9\n1,2,10,2,6,12,1,1,0.1\n")
    out = tmp_path / "mot.json"
    assert main(["convert", "--format", "mot", str(tmp_path), "--min-visibility", "0.5", "--out", str(out)]) == 0
    coco = _load(out)
    assert _boxes(coco) == [
        ("img1/000001.jpg", "pedestrian", [2.0, 3.0, 5.0, 10.0], 0),
        ("img1/000001.jpg", "pedestrian", [10.0, 2.0, 6.0, 12.0], 1),
    ]
    assert "1 images, 2 objects (1 of them crowd/ignore regions" in capsys.readouterr().out


def exit_status(argv: list[str]) -> int:
    """main's status: returned (0 clean, 1 problems found) or exited with (2: a user's error, one message)."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def test_bad_input_ends_in_one_message_and_status_2(tmp_path, make_image, capsys):
    make_image(tmp_path / "images" / "a.jpg", 8, 8)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5\n")
    argv = ["convert", "--format", "yolo", str(tmp_path / "images"), "--out", str(tmp_path / "x.json")]
    assert exit_status(argv + ["--names", str(tmp_path / "nowhere.yaml")]) == 2
    assert "detlab-data convert: error: class names file not found" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("cat\n")
    assert exit_status(argv + ["--names", str(tmp_path / "names.txt")]) == 2
    assert f"{tmp_path / 'labels' / 'a.txt'}: line 1: 4 values" in capsys.readouterr().err
    assert exit_status(argv) == 2
    assert "--format yolo needs --names" in capsys.readouterr().err
    assert exit_status(argv + ["--names", str(tmp_path / "names.txt"), "--min-visibility", "0.5"]) == 2
    assert "--min-visibility does not apply to --format yolo" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_an_out_path_that_is_a_folder_is_one_message(tmp_path, make_image, capsys):
    """--out naming a folder stopped with a bare IsADirectoryError once the dataset was converted."""
    make_image(tmp_path / "images" / "a.jpg", 8, 8)
    (tmp_path / "labels").mkdir()
    (tmp_path / "names.txt").write_text("cat\n")
    argv = ["convert", "--format", "yolo", str(tmp_path / "images"), "--names", str(tmp_path / "names.txt")]
    assert exit_status(argv + ["--out", str(tmp_path / "labels")]) == 2
    assert f"--out {tmp_path / 'labels'} is a folder" in capsys.readouterr().err


def test_usage_errors_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["convert", "--format", "pascal", "x", "--out", "y.json"])
    assert "invalid choice: 'pascal'" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "detlab.cli.data", "convert", "--format", "mot", str(tmp_path), "--out", "x.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "MOT ground truth not found" in result.stderr and "Traceback" not in result.stderr


# A COCO file for `check`: areas 100 (small), 2500 (medium), 10000 (large, the boundary 96^2 = 9216 is below).
CHECK_COCO = {
    "images": [{"id": i, "file_name": f"{i}.png", "width": 120, "height": 120} for i in (1, 2, 3)],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
        {"id": 5, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 6, "image_id": 3, "category_id": 1, "bbox": [4, 4, 0, 5], "area": 0, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


def test_a_file_that_cannot_be_read_is_a_problem_in_every_format(tmp_path, make_image, capsys):
    """A truncated COCO json and a truncated VOC xml are the same finding: status 1 and a problem line. The VOC
    reader's ValueError used to be a user's error (status 2), the COCO checker's DataError a problem (1)."""
    (tmp_path / "cut.json").write_text('{"images": [')
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    make_image(tmp_path / "voc" / "JPEGImages" / "a.jpg", 8, 8)
    (tmp_path / "voc" / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename><obj")
    for argv, says in (([str(tmp_path / "cut.json")], "cut.json: not valid JSON"),
                       ([str(tmp_path / "voc"), "--format", "voc"], "a.xml: not valid XML")):
        assert exit_status(["check", *argv]) == 1
        out = capsys.readouterr().out
        assert out.startswith("problem: ") and says in out and "checked: the data cannot be used" in out


def test_a_source_whose_every_image_is_left_out_names_the_reasons(tmp_path, make_image, capsys):
    """check --format said only "field 'images' is empty" (status 1), convert wrote a json of no image (status 0)."""
    make_image(tmp_path / "JPEGImages" / "a.jpg", 8, 8)
    (tmp_path / "Annotations").mkdir()
    xml = tmp_path / "Annotations" / "a.xml"
    xml.write_text("<annotation><filename>a.jpg</filename><size><width>16</width><height>8</height></size>"
                   "</annotation>")
    says = f"{xml}: field 'size': says 16x8 (w x h) but image {tmp_path / 'JPEGImages' / 'a.jpg'} is 8x8"
    assert exit_status(["check", "--format", "voc", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"problem: 1 invalid annotation(s) or image(s) in voc {tmp_path}:") and says in out
    assert exit_status(["convert", "--format", "voc", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_check_a_coco_file_prints_the_numbers_and_every_problem(tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(CHECK_COCO))
    assert main(["check", str(ann)]) == 1  # problems found
    out = capsys.readouterr().out
    assert "images 3, objects 3 (+ 1 crowd/ignore regions, not trained on), classes 2" in out
    assert "objects per class: cat 1, dog 2" in out
    assert "object sizes (COCO area): small (< 32^2) 1, medium 1, large (>= 96^2) 1" in out
    assert "objects per image: 0: 2, 1: 0, 2-4: 1, 5-9: 0, 10-19: 0, 20+: 0" in out
    assert "problems: 2" in out
    assert f"{ann}: image id=2, annotation id=5: field 'category_id'=9 is not in 'categories'" in out
    assert f"{ann}: image id=3, annotation id=6: field 'bbox'=[4, 4, 0, 5] has w <= 0 or h <= 0" in out
    assert "checked 1 split(s): 2 problem(s), 0 note(s) (add --image-check" in out


def _image_zoo(folder: Path) -> dict:
    """One image per case the image check must name; returns the COCO dict that lists them (all 40 x 30)."""
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(folder / "ok.png")
    Image.new("L", (40, 30)).save(folder / "gray.png")
    Image.new("RGBA", (40, 30)).save(folder / "rgba.png")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(folder / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (40, 30)).save(folder / "rotated.jpg", exif=exif)
    Image.new("RGB", (30, 40)).save(folder / "rotated-record.jpg", exif=exif)  # shown 40 x 30, stored 30 x 40
    Image.new("RGB", (40, 30)).save(folder / "cut.jpg")
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:200])  # truncated
    (folder / "junk.png").write_bytes(b"not an image")
    names = ["ok.png", "gray.png", "rgba.png", "deep.png", "rotated.jpg", "rotated-record.jpg", "cut.jpg",
             "junk.png", "gone.png"]
    images = [{"id": i, "file_name": name, "width": 40, "height": 30} for i, name in enumerate(names, start=1)]
    box = {"category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
    return {"images": images, "annotations": [{**box, "id": 1, "image_id": 1}], "categories": [{"id": 1, "name": "x"}]}


def test_image_check_opens_every_image_and_names_each_bad_or_unusual_one(tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_image_zoo(tmp_path / "img")))
    assert main(["check", str(ann), "--img-dir", str(tmp_path / "img"), "--image-check"]) == 1
    out = capsys.readouterr().out

    def line(image_id: int, file_name: str) -> str:
        [found] = [x for x in out.splitlines() if f"image id={image_id}, field 'file_name'='{file_name}'" in x]
        assert found.strip().startswith(str(ann))
        return found

    assert "image file not found" in next(x for x in out.splitlines() if "'gone.png'" in x)  # before decoding
    assert "grayscale; loaded as RGB" in line(2, "gray.png")
    assert "RGBA; loaded as RGB, alpha dropped" in line(3, "rgba.png")
    assert "16-bit (I;16); loaded as 8-bit RGB" in line(4, "deep.png")
    assert "EXIF Orientation=8: loaded as stored (not rotated)" in line(5, "rotated.jpg")
    rotated = line(6, "rotated-record.jpg")
    assert "stored pixels are 30x40 (w x h) but fields 'width'=40, 'height'=30" in rotated
    assert "the size shown after EXIF Orientation=8" in rotated
    assert "cannot decode the image" in line(7, "cut.jpg") and "cannot decode the image" in line(8, "junk.png")
    assert "problems: 4" in out and "notes: 4" in out  # gone, rotated-record, cut, junk; gray, rgba, deep, rotated
    assert not [x for x in out.splitlines() if "'ok.png'" in x]


def test_check_a_source_folder_and_a_data_config(tmp_path, make_image, capsys):
    make_image(tmp_path / "images" / "train" / "a.jpg", 40, 20)
    make_image(tmp_path / "images" / "val" / "b.jpg", 40, 20)
    for split, line in (("train", "1 0.5 0.5 0.5 0.5\n0 0.1 0.5 0.4 0.2\n"), ("val", "0 0.5 0.5 0.2 0.2\n")):
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / f"{'a' if split == 'train' else 'b'}.txt").write_text(line)
    (tmp_path / "data.yaml").write_text("names: [cat, dog]\n")
    argv = ["check", "--format", "yolo", str(tmp_path / "images" / "train"), "--names", str(tmp_path / "data.yaml")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"yolo {tmp_path / 'images' / 'train'}" in out and "objects per class: cat 1, dog 1" in out
    assert "notes: 1" in out and "clipped" in out  # the cat at cx 0.1, w 0.4 starts left of the image
    overrides = [f"data.source.shared.names={tmp_path / 'data.yaml'}", f"data.source.cache_dir={tmp_path / 'cache'}",
                 f"data.source.train.images_dir={tmp_path / 'images/train'}",
                 f"data.source.val.images_dir={tmp_path / 'images/val'}"]
    assert main(["check", "yolo", *overrides, "--image-check"]) == 0
    out = capsys.readouterr().out
    assert "yolo: train split (" in out and "yolo: val split (" in out and "objects per class: cat 1, dog 0" in out
    assert "checked 2 split(s): 0 problem(s), 1 note(s); every image opened" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["check", "ann.json", "data.x=1"], "overrides (data.x=1) apply to a data config only"),
        (["check", "ann.json", "--image-check"], "--image-check of a COCO json needs --img-dir"),
        (["check", "ann.json", "--names", "n.txt"], "--names does not apply to a COCO json"),
        (["check", "vocc"], "'vocc' is not a .json, a data config (coco, mot, shapes, udacity, voc, yolo)"),
        (["check", "voc"], "Missing mandatory value: source.shared.root"),
        (["check", "nowhere.json"], "nowhere.json: no such file or folder"),
        (["check", "nowhere", "--format", "voc"], "nowhere: no such file or folder"),
    ],
)
def test_check_usage_problems_are_one_message(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert exit_status(argv) == 2
    assert f"detlab-data check: error: {says}" in capsys.readouterr().err


def test_check_a_mistyped_image_folder_is_one_message(tmp_path, monkeypatch, capsys):
    """Every image was a problem "image file not found" (status 1, 128 lines for coco128), where detlab-train
    stops on the one folder (data.train.img_dir=...: no such folder, status 2)."""
    monkeypatch.chdir(tmp_path)
    Path("ann.json").write_text(json.dumps(CHECK_COCO))
    assert exit_status(["check", "ann.json", "--img-dir", "imgs"]) == 2
    captured = capsys.readouterr()
    assert "detlab-data check: error: --img-dir imgs: no such file or folder" in captured.err and not captured.out
