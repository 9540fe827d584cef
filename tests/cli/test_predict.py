"""detlab-predict: COCO results that score what torchvision's own detections score, files named on every error."""

import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image
from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights
from torchvision.ops import box_convert

from detlab.evaluation.results_file import evaluate_results_file
from detlab.cli.predict import main

# COCO's 80 categories {id: name}, from torchvision's weights metadata (no download: the names ship with it)
COCO = {i: n for i, n in enumerate(RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]) if n not in ("N/A", "__background__")}
PRESET = ["model=tv_retinanet_r50_fpn", "data.image_size=304", "data.max_size=512"]
TINY = ["data.image_size=64", "data.max_size=96", "model.backbone.depth=18", "model.neck.out_channels=16",
        "model.head.width=16", "model.head.depth=1"]


def as_results(image_ids, detections) -> list[dict]:
    return [
        {"image_id": i, "category_id": int(label), "bbox": box, "score": float(score)}
        for i, det in zip(image_ids, detections)
        for box, score, label in zip(box_convert(det["boxes"], "xyxy", "xywh").tolist(), det["scores"], det["labels"])
    ]


@pytest.mark.realdata
def test_results_score_exactly_what_torchvisions_detections_score(tv_retinanet, tv_retinanet_on_coco128, real_data,
                                                                  tmp_path, capsys):
    """A COCO file of three coco128 photos whose objects are torchvision's confident detections, moved by a few
    pixels (so that AP is far from 0 and from 1): detlab-predict's results and torchvision's, both scored by
    pycocotools, give the same 12 numbers and per-class APs."""
    _, weights = tv_retinanet
    photos, expected = tv_retinanet_on_coco128
    ids = list(photos)
    rng = np.random.default_rng(0)
    gts = [r for r in as_results(ids, expected) if r["score"] > 0.9 and r["category_id"] in COCO]
    annotations = [
        {"id": n + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0,
         "bbox": (np.asarray(r["bbox"]) + rng.normal(0, 3, 4)).tolist(), "area": r["bbox"][2] * r["bbox"][3]}
        for n, r in enumerate(gts)
    ]
    coco = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": p.shape[1], "height": p.shape[0]}
                       for i, p in photos.items()],
            "annotations": annotations,
            # COCO's own 80 categories: torchvision's labels for its unused ids ("N/A") and 0 fall outside the file
            "categories": [{"id": c, "name": name} for c, name in COCO.items()]}
    ann_file = tmp_path / "subset.json"
    ann_file.write_text(json.dumps(coco))
    (tmp_path / "tv.json").write_text(json.dumps([r for r in as_results(ids, expected) if r["category_id"] in COCO]))

    out = tmp_path / "detlab.json"
    # one batch of three, as torchvision ran them: padding a batch moves its anchors and border features
    main([str(ann_file), "--img-dir", str(real_data / "coco128" / "train2017"), "--out", str(out),
          "--batch-size", "3", *PRESET, f"model.weights={weights}"])
    left_out = sum(r["category_id"] not in COCO for r in as_results(ids, expected))
    assert left_out > 0 and f"{left_out} detections of categories that {ann_file} does not have" in capsys.readouterr().err
    ours = evaluate_results_file(str(ann_file), str(out), backend="pycocotools")
    theirs = evaluate_results_file(str(ann_file), str(tmp_path / "tv.json"), backend="pycocotools")
    assert ours == theirs
    assert 0.1 < theirs["metrics"]["AP"] < 0.9 and len(annotations) >= 10
    assert {r["image_id"] for r in json.loads(out.read_text())} == set(ids)


def test_files_and_folders_get_their_names_and_drawings(tmp_path):
    """Plain files: ids by sorted path, each file once, file names recorded, every image drawn at its own size. A tiny untrained
    model in the preset's label space, every score kept, so that there are boxes to draw."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"b.png": (60, 80), "a.jpg": (90, 50), "c.png": (40, 40)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save((folder if name != "c.png" else tmp_path) / name)
    out, drawn = tmp_path / "r.json", tmp_path / "drawn"
    # a.jpg given twice, in its folder and by name: one image id (it was two, each with the same detections)
    main([str(folder), str(folder / "a.jpg"), str(tmp_path / "c.png"), "--out", str(out), "--draw", str(drawn), "--draw-thresh", "0",
          "model=tv_retinanet_r50_fpn", *TINY, "model.postprocess.score_thresh=0", "model.postprocess.max_per_image=5"])
    results = json.loads(out.read_text())
    assert {(r["image_id"], r["file_name"]) for r in results} == {(0, "c.png"), (1, "a.jpg"), (2, "b.png")}
    assert len(results) == 15 and {r["category_id"] for r in results} <= set(range(91))
    for name, (h, w) in sizes.items():
        picture = np.asarray(Image.open(drawn / f"{name[:-4]}.png"))
        assert picture.shape == (h, w, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jpg"], "missing.jpg: no such image file or folder"),
        (["broken.jpg"], "broken.jpg: cannot read the image"),
        (["empty_dir"], "empty_dir: no image files"),
        (["coco.json"], "coco.json is a COCO json: give --img-dir"),
        (["ok.png", "model=retinanet"], "needs the model's label space"),
        # one name for two files: the results' file_name stood for both, the second drawing overwrote the first
        (["d1", "d2"], "d1/x.png and d2/x.png would have the same results' file_name ('x.png')"),
        (["ok.png", "d1/ok.jpg", "--draw", "drawn"], "d1/ok.jpg and ok.png would have the same drawing in drawn ('ok')"),
        # a COCO json's file names in folders (detlab-data's merged sequences): the second drawing overwrote the first
        (["seq.json", "--img-dir", ".", "--draw", "drawn"], "d1/x.png and d2/x.png would have the same drawing in drawn ('x')"),
        # before the model loads; a device name torch does not know, or a CUDA device that is not there, was
        # torch's traceback
        (["ok.png", "--device", "tpu"], "--device tpu: not a device"),
        (["ok.png", "--device", "cuda:99"], "--device cuda:99"),
        (["ok.png", "--draw", "drawn", "--draw-thresh", "2"], "--draw-thresh=2.0 must be a score in [0, 1]"),
        (["ok.png", "--batch-size", "0"], "--batch-size=0 must be >= 1"),
    ],
)
def test_bad_inputs_name_the_file_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "coco.json").write_text('{"images": []}')
    images = [{"id": i, "file_name": f"d{i}/x.png", "width": 40, "height": 30} for i in (1, 2)]
    (tmp_path / "seq.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (40, 30)).save(tmp_path / folder / "x.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "d1" / "ok.jpg")
    overrides = [] if any("=" in a for a in args) else ["model=tv_retinanet_r50_fpn"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *overrides, "--out", "r.json", *TINY])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A detlab checkpoint of the preset at TINY's size, as DetectionModule saves it (config, label space, weights)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from detlab.config import compose_train

    cfg = compose_train(["model=tv_retinanet_r50_fpn", *TINY])
    cats = list(cfg.data.category_ids)
    model = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=len(cats)).model
    saved = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "data", "trainer", "eval")}
    hparams = {"cfg": saved, "num_classes": len(cats), "category_ids": cats, "class_names": [str(c) for c in cats]}
    path = tmp_path / "weights.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "global_step": 1}, path)
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a group's name in place of the run's resolved group: an AttributeError traceback
        ("model=tv_ssd300_vgg16", "model is the run's whole model config, saved resolved, not a choice to switch"),
        ("data=coco", "data is the run's whole data config"),
        # a misspelt key of a component: Hydra's InstantiationException traceback
        ("model.postprocess.scor_thresh=0.9", "has no key model.postprocess.scor_thresh (model.postprocess has "
                                              "_target_, max_per_image, nms_iou, score_thresh, topk_per_level)"),
        # a misspelt key nothing instantiates: ignored without a word
        ("dat.image_size=96", "has no key dat.image_size"),
        # other weights: replaced by the run's own without a word
        ("model.weights=other.pth", "a run is loaded with its own weights"),
        # a run's own weights fit it whole: shapes are never forgiven
        ("model.weights_strict=false", "a run is loaded with its own weights"),
    ],
)
def test_run_overrides_the_saved_config_cannot_take_name_the_override(tiny_checkpoint, monkeypatch, capsys, override,
                                                                      message):
    monkeypatch.chdir(tiny_checkpoint.parent)
    with pytest.raises(SystemExit) as exit_info:
        main(["ok.png", "--run", str(tiny_checkpoint), "--out", "r.json", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"override '{override}'" in err and message in err and "Traceback" not in err


def test_run_overrides_of_existing_keys_apply(tiny_checkpoint, monkeypatch):
    """data.image_size, a key of a component, and a new key under a null node (data.val: null) are the run's to
    change: the rebuilt predictor takes them."""
    from detlab.inference import Predictor

    predictor, cfg = Predictor.from_run(tiny_checkpoint, ["data.image_size=96", "model.postprocess.score_thresh=0.5",
                                                          "data.val.ann_file=val.json"])
    assert predictor.transform.image_size == 96 and predictor.postprocess.score_thresh == 0.5
    assert cfg.data.val.ann_file == "val.json" and cfg.model.weights == str(tiny_checkpoint)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # each was a traceback (IsADirectoryError, FileExistsError) after the last batch, or at the first drawing
        (["--out", "folder"], "--out folder is a folder; give the results file's path (folder/results.json)"),
        (["--out", "ok.png/r.json"], "--out ok.png/r.json: ok.png is a file, not a folder"),
        (["--out", "r.json", "--draw", "ok.png"], "--draw ok.png: ok.png is a file, not a folder"),
    ],
)
def test_unusable_outputs_stop_before_the_model_loads(tmp_path, monkeypatch, capsys, args, message):
    from detlab.inference import Predictor

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Predictor, "from_config", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(SystemExit) as exit_info:
        main(["ok.png", *args, "model=tv_retinanet_r50_fpn", *TINY])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        # a COCO run's person (id 1) was written as a VOC json's raccoon (id 1) and scored as one, exit 0
        ([{"id": 1, "name": "raccoon"}, {"id": 2, "name": "2"}], "(id 1: '1' in the run, 'raccoon' in the json)"),
        # every detection was left out, and an empty results file written with exit 0
        ([{"id": 500, "name": "raccoon"}], "they share no category id"),
    ],
)
def test_a_coco_json_of_other_classes_than_the_runs_is_refused(tiny_checkpoint, monkeypatch, capsys, categories,
                                                               message):
    monkeypatch.chdir(tiny_checkpoint.parent)
    images = [{"id": 7, "file_name": "ok.png", "width": 40, "height": 30}]
    Path("other.json").write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    with pytest.raises(SystemExit) as exit_info:
        main(["other.json", "--img-dir", ".", "--run", str(tiny_checkpoint), "--out", "r.json"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "other.json: its categories (field 'categories') are not the ones" in err and message in err
    assert not Path("r.json").exists()


def test_a_coco_json_sharing_the_runs_category_names_is_predicted(tiny_checkpoint, monkeypatch):
    """Fewer categories than the run's label space, with the run's names, are the json's to score: the results
    carry its image id and only its category ids."""
    monkeypatch.chdir(tiny_checkpoint.parent)
    images = [{"id": 7, "file_name": "ok.png", "width": 40, "height": 30}]
    categories = [{"id": 1, "name": "1"}, {"id": 3, "name": "3"}]
    Path("same.json").write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    main(["same.json", "--img-dir", ".", "--run", str(tiny_checkpoint), "--out", "r.json",
          "model.postprocess.score_thresh=0"])
    results = json.loads(Path("r.json").read_text())
    assert results and {r["image_id"] for r in results} == {7} and {r["category_id"] for r in results} <= {1, 3}


@pytest.mark.parametrize(
    ("args", "lost"),
    [
        # the annotation json given as --out: replaced by the results, the dataset's annotations lost
        (["ann.json", "--img-dir", ".", "--out", "ann.json"], "ann.json"),
        # drawings into the photos' own folder: each PNG photo replaced by its drawing (alpha dropped, boxes burnt in)
        (["photos", "--out", "r.json", "--draw", "photos"], "photos/a.png"),
    ],
)
def test_outputs_never_replace_the_inputs(tmp_path, monkeypatch, capsys, args, lost):
    from detlab.inference import Predictor

    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    Image.new("RGBA", (40, 30), (10, 20, 30, 128)).save("photos/a.png")
    Image.new("RGB", (40, 30)).save("a.png")
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    Path("ann.json").write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    before = Path(lost).read_bytes()
    monkeypatch.setattr(Predictor, "from_config", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "model=tv_retinanet_r50_fpn", *TINY])
    assert exit_info.value.code == 2
    assert f"writing {lost} would replace {lost}, which this command reads" in capsys.readouterr().err
    assert Path(lost).read_bytes() == before


def test_a_coco_jsons_image_of_another_size_than_its_record_is_named(tmp_path, monkeypatch, capsys):
    """Images resized after annotating (a half-size copy of the val folder): the detections, in the pixels' size,
    were written for a file whose boxes are in the record's, and scored without a word (raccoon's val AP50 0.61
    read as 0.001); training and detlab-eval run stop on the same image."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 30)).save("a.png")
    images = [{"id": 5, "file_name": "a.png", "width": 80, "height": 60}]
    Path("ann.json").write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(SystemExit) as exit_info:
        main(["ann.json", "--img-dir", ".", "--out", "r.json", "model=tv_retinanet_r50_fpn", *TINY])
    assert exit_info.value.code == 2
    assert ("image a.png (image id=5 of ann.json) is 40x30 (w x h) but its record says fields 'width'=80, "
            "'height'=60") in capsys.readouterr().err
    assert not Path("r.json").exists()


def test_a_coco_jsons_missing_image_stops_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """The last image missing stopped the run after every other image was predicted, the results unwritten."""
    from detlab.inference import Predictor

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 30)).save("a.png")
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "gone.png", "width": 40, "height": 30}]
    Path("ann.json").write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    monkeypatch.setattr(Predictor, "from_config", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(SystemExit) as exit_info:
        main(["ann.json", "--img-dir", ".", "--out", "r.json", "model=tv_retinanet_r50_fpn", *TINY])
    assert exit_info.value.code == 2
    assert "gone.png: no such image file (image id=2 of ann.json, field 'file_name'; 1 of its 2 images are missing" \
        in capsys.readouterr().err
