"""`detlab-data convert`: every format to a COCO json that pycocotools loads, the summary, clear errors."""

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from detlab.datacli import main


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
    assert _boxes(coco) == [("a.jpg", "dog", [2.0, 1.0, 10.0, 19.0], 0)]  # ymax 40 clipped to the 20-pixel image
    assert coco.loadAnns(coco.getAnnIds())[0]["ignore"] == 1
    printed = capsys.readouterr().out
    assert "1 images, 1 objects (1 difficult" in printed and "1 classes (dog 0)" in printed
    assert "1 problems" in printed and "a.xml: object #1 ('dog'), field 'bndbox'" in printed


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
    assert "1 images, 2 objects (0 difficult, kept with ignore=1; 1 crowd/ignore regions)" in capsys.readouterr().out


def test_bad_input_ends_in_one_message_and_status_1(tmp_path, make_image, capsys):
    make_image(tmp_path / "images" / "a.jpg", 8, 8)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5\n")
    argv = ["convert", "--format", "yolo", str(tmp_path / "images"), "--out", str(tmp_path / "x.json")]
    assert main(argv + ["--names", str(tmp_path / "nowhere.yaml")]) == 1
    assert "detlab-data convert: error: class names file not found" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("cat\n")
    assert main(argv + ["--names", str(tmp_path / "names.txt")]) == 1
    assert f"{tmp_path / 'labels' / 'a.txt'}: line 1: 4 values" in capsys.readouterr().err
    assert main(argv) == 1
    assert "--format yolo needs --names" in capsys.readouterr().err
    assert main(argv + ["--names", str(tmp_path / "names.txt"), "--min-visibility", "0.5"]) == 1
    assert "--min-visibility does not apply to --format yolo" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_usage_errors_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["convert", "--format", "pascal", "x", "--out", "y.json"])
    assert "invalid choice: 'pascal'" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "detlab.datacli", "convert", "--format", "mot", str(tmp_path), "--out", "x.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "MOT ground truth not found" in result.stderr and "Traceback" not in result.stderr
