"""FormatSource and data=voc|yolo|udacity|mot: converted once into the cache by content, read as data=coco does."""

import errno
import functools
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from detlab.data.datamodule import DetectionDataModule
from detlab.data.formats import source as source_module
from detlab.data.coco.reader import write_cache_folder
from detlab.errors import StorageError
from detlab.data.formats.source import FormatSource
from detlab.structures import Batch, boxes_to_original

CONF = Path(__file__).resolve().parents[3] / "conf" / "data"
LOADER = ["image_size=64", "batch_size=2", "num_workers=0"]


def image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 90, 90)).save(path)


def voc_object(name, xmin, ymin, xmax, ymax, difficult=0):
    box = f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{box}</bndbox></object>"


def write_voc(root: Path, images: dict[str, list[str]], size=(40, 30)) -> None:
    """Annotations/<stem>.xml and JPEGImages/<stem>.jpg per image; images: stem -> object xml strings."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, objects in images.items():
        image(root / "JPEGImages" / f"{stem}.jpg", *size)
        size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
        xml = f"<annotation><filename>{stem}.jpg</filename>{size_xml}{''.join(objects)}</annotation>"
        (root / "Annotations" / f"{stem}.xml").write_text(xml)


def write_split(root: Path, name: str, stems: list[str]) -> None:
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """A devkit: 000001 (a cat at VOC pixels 2..11 x 3..13, a difficult dog) and 000002 in trainval, 000003 in test."""
    root = tmp_path / "VOC"
    write_voc(root, {
        "000001": [voc_object("cat", 2, 3, 11, 13), voc_object("dog", 20, 5, 35, 25, difficult=1)],
        "000002": [voc_object("dog", 1, 1, 40, 30)],
        "000003": [voc_object("cat", 5, 5, 20, 20), voc_object("dog", 21, 1, 30, 10)],
    })
    write_split(root, "trainval", ["000001", "000002"])
    write_split(root, "test", ["000003"])
    return root


def build(name: str, overrides: list[str]) -> DetectionDataModule:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[*LOADER, *overrides])
    return instantiate(cfg)


def boxes_of(datamodule: DetectionDataModule, split: str) -> list[tuple]:
    """(file name, class name, bbox xywh, iscrowd) per annotation of the split's COCO file."""
    coco = json.loads(Path(datamodule.ann_file(split)).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    return sorted((files[a["image_id"]], names[a["category_id"]], a["bbox"], a["iscrowd"]) for a in coco["annotations"])


def test_data_voc_trains_on_the_devkit_splits_with_difficult_as_crowd(voc_root, tmp_path):
    datamodule = build("voc", [f"source.shared.root={voc_root}", f"source.cache_dir={tmp_path / 'cache'}"])
    assert datamodule.class_names == ["cat", "dog"] and datamodule.category_ids == [1, 2]
    # VOC 1-based inclusive pixels 2..11 are the continuous span 1..11: x = 1, w = 10.
    assert boxes_of(datamodule, "train") == [
        ("000001.jpg", "cat", [1, 2, 10, 11], 0),
        ("000001.jpg", "dog", [19, 4, 16, 21], 1),
        ("000002.jpg", "dog", [0, 0, 40, 30], 0),
    ]
    assert boxes_of(datamodule, "val") == [
        ("000003.jpg", "cat", [4, 4, 16, 16], 0),
        ("000003.jpg", "dog", [20, 0, 10, 10], 0),
    ]
    assert datamodule.datasets["train"].num_objects == 2  # the difficult dog is not a training target
    batch = next(iter(datamodule.val_dataloader()))
    assert isinstance(batch, Batch)
    back = boxes_to_original(batch.gt_boxes, batch.scales, batch.offsets)[0][batch.gt_valid[0]]
    torch.testing.assert_close(back, torch.tensor([[4.0, 4, 20, 20], [20, 0, 30, 10]]), atol=1e-3, rtol=0)
    assert datamodule.problems == {"train": [], "val": []}
    assert Path(datamodule.ann_file("train")).parent.parent == tmp_path / "cache"


def test_val_is_read_with_the_train_classes_so_the_splits_cannot_disagree(voc_root, tmp_path):
    # test holds cat and dog; trainval only dog (sorted names of train: [dog]): the cat in test is an error.
    write_split(voc_root, "trainval", ["000002"])
    with pytest.raises(InstantiationException) as err:
        build("voc", [f"source.shared.root={voc_root}", f"source.cache_dir={tmp_path}"])
    message = str(err.value.__cause__)
    assert f"{voc_root / 'Annotations' / '000003.xml'}: object #1 ('cat')" in message
    assert "field 'name'='cat' is not one of the classes ['dog']" in message


def test_a_source_converts_once_and_again_only_when_its_content_changes(voc_root, tmp_path, monkeypatch):
    calls = []
    real = source_module.READERS["voc"]

    @functools.wraps(real)  # the same signature, so the same arguments
    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setitem(source_module.READERS, "voc", counting)
    source = FormatSource("voc", train={"split": "trainval"}, val={"split": "test"}, shared={"root": str(voc_root)},
                          cache_dir=str(tmp_path / "cache"))
    first = source.splits()
    assert len(calls) == 2  # train and val
    assert source.splits() == first and len(calls) == 2  # cached: not read again
    assert FormatSource("voc", train={"split": "trainval"}, val={"split": "test"}, shared={"root": str(voc_root)},
                        cache_dir=str(tmp_path / "cache")).splits() == first  # a new object finds the same folder
    # An edited xml (a different box) converts again, into a new folder; the old one is left as it was.
    xml = voc_root / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<xmin>1</xmin>", "<xmin>5</xmin>"))
    second = source.splits()
    assert len(calls) == 4 and second["train"].ann_file != first["train"].ann_file
    assert json.loads(Path(second["train"].ann_file).read_text())["annotations"][-1]["bbox"] == [4, 0, 36, 30]
    assert json.loads(Path(first["train"].ann_file).read_text())["annotations"][-1]["bbox"] == [0, 0, 40, 30]
    # So does a replaced image file (another byte size), and a changed reader argument.
    Image.effect_noise((40, 30), 64).convert("RGB").save(voc_root / "JPEGImages" / "000003.jpg")  # same size
    assert source.splits()["val"].ann_file != second["val"].ann_file and len(calls) == 6
    shared = {"root": str(voc_root), "class_names": ["dog", "cat"]}
    other = FormatSource("voc", train={"split": "trainval"}, val={"split": "test"}, shared=shared,
                         cache_dir=str(tmp_path / "cache"))
    assert other.directory != source.directory
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_the_cache_folder_appears_whole_and_a_lost_race_keeps_the_winner(tmp_path):
    root = tmp_path / "voc-0123"

    def fail(folder: Path) -> None:
        (folder / "train.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_cache_folder(root, fail)
    assert list(tmp_path.iterdir()) == []  # nothing half-written

    def full(folder: Path) -> None:
        (folder / "train.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "train.json"))

    with pytest.raises(StorageError, match=rf"cannot write {tmp_path} \(the data cache: \$DETLAB_CACHE.*no space left.*set DETLAB_CACHE"):
        write_cache_folder(root, full)
    assert list(tmp_path.iterdir()) == []

    def lose(folder: Path) -> None:  # another rank renames its identical folder first
        (folder / "meta.json").write_text("mine")
        root.mkdir()
        (root / "meta.json").write_text("theirs")

    write_cache_folder(root, lose)
    assert (root / "meta.json").read_text() == "theirs" and list(tmp_path.iterdir()) == [root]


def test_holdout_moves_the_images_whose_name_hash_sorts_first(tmp_path):
    stems = [f"img{i:02d}" for i in range(10)]
    write_voc(tmp_path, {s: [voc_object("cat", 2, 2, 10, 10)] for s in stems})
    source = FormatSource("voc", train={"split": None}, val=None, holdout=0.3, shared={"root": str(tmp_path)},
                          cache_dir=str(tmp_path / "cache"))
    splits = source.splits()
    files = {split: {img["file_name"]: img["id"] for img in json.loads(Path(f.ann_file).read_text())["images"]}
             for split, f in splits.items()}
    by_hash = sorted((f"{s}.jpg" for s in stems), key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    assert sorted(files["val"]) == sorted(by_hash[:3]) and sorted(files["train"]) == sorted(by_hash[3:])
    ids = {**files["train"], **files["val"]}
    assert sorted(ids.values()) == list(range(1, 11))  # the reader's ids, kept
    for split in ("train", "val"):
        coco = json.loads(Path(splits[split].ann_file).read_text())
        assert {a["image_id"] for a in coco["annotations"]} == set(files[split].values())
    assert splits["train"].img_dir == splits["val"].img_dir == str(tmp_path / "JPEGImages")


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"val": None}, "data.source.val .* or data.source.holdout > 0 .* not neither"),
        ({"holdout": 0.5}, "not both"),
        ({"val": None, "holdout": 1.0}, r"data.source.holdout=1.0: a fraction"),
        ({"format": "coco"}, r"data.source.format='coco': use one of \['mot', 'udacity', 'voc', 'yolo'\]"),
        ({"train": {"folder": "x"}}, r"data.source.train: .*'folder'.*the read_voc arguments are \['root', 'split'"),
        ({"shared": {"root": "r", "class_names": ["cat", None]}}, r"^data.source.shared.class_names: entry #1 is None"),
        ({"train": {"class_names": ["a", "a"]}}, r"^data.source.train.class_names: 'a' appears twice"),
    ],
)
def test_wrong_source_settings_name_their_key(tmp_path, arguments, says):
    given = {"format": "voc", "train": {}, "val": {}, "shared": {"root": str(tmp_path)}, **arguments}
    with pytest.raises(ValueError, match=says):
        FormatSource(**given)


def test_holdout_needs_an_image_in_each_split(tmp_path):
    write_voc(tmp_path, {"a": [voc_object("cat", 2, 2, 10, 10)], "b": [voc_object("cat", 2, 2, 10, 10)]})
    source = FormatSource("voc", train={}, holdout=0.1, shared={"root": str(tmp_path)}, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"data.source.holdout=0.1 of 2 images holds out 0"):
        source.splits()


@pytest.mark.parametrize("holdout", [0.5, 0.0])
def test_a_split_whose_every_image_is_left_out_names_each_reason(tmp_path, holdout):
    """Every <size> disagrees with its image (resized after labelling): the message was the holdout's "0 images
    holds out 0" or the converted file's "field 'images' is empty", naming neither an xml nor a reason."""
    write_voc(tmp_path, {"a": [voc_object("cat", 2, 2, 10, 10)], "b": [voc_object("cat", 2, 2, 10, 10)]})
    for stem in ("a", "b"):
        image(tmp_path / "JPEGImages" / f"{stem}.jpg", 20, 15)
    given = {"holdout": holdout} if holdout else {"val": {}}
    source = FormatSource("voc", train={}, shared={"root": str(tmp_path)}, cache_dir=str(tmp_path / "c"), **given)
    with pytest.raises(ValueError) as err:
        source.splits()
    message = str(err.value)
    assert message.startswith("2 invalid annotation(s) or image(s) in data.source.train:")
    for stem in ("a", "b"):
        assert f"{tmp_path / 'Annotations' / stem}.xml: field 'size': says 40x30 (w x h)" in message
    assert "every image was left out" in message and not list((tmp_path / "c").iterdir())  # nothing cached


def test_a_list_of_parts_is_one_split_with_file_names_under_their_common_folder(tmp_path):
    write_voc(tmp_path / "VOC2007", {"a": [voc_object("cat", 2, 2, 10, 10)]})
    write_voc(tmp_path / "VOC2012", {"a": [voc_object("dog", 1, 1, 5, 5)], "b": [voc_object("cat", 1, 1, 8, 8)]})
    parts = [{"root": str(tmp_path / "VOC2007")}, {"root": str(tmp_path / "VOC2012")}]
    source = FormatSource("voc", train=parts, holdout=0.34, shared={"class_names": ["cat", "dog"]},
                          cache_dir=str(tmp_path / "cache"))
    coco = source.read()
    merged = {img["file_name"] for split in coco.values() for img in split.coco["images"]}
    assert merged == {"VOC2007/JPEGImages/a.jpg", "VOC2012/JPEGImages/a.jpg", "VOC2012/JPEGImages/b.jpg"}
    assert coco["train"].img_dir == str(tmp_path)
    everything = [a for split in coco.values() for a in split.coco["annotations"]]
    assert sorted(a["id"] for a in everything) == [1, 2, 3]
    files = {img["id"]: img["file_name"] for split in coco.values() for img in split.coco["images"]}
    assert sorted((files[a["image_id"]], a["category_id"], a["bbox"]) for a in everything) == [
        ("VOC2007/JPEGImages/a.jpg", 1, [1, 1, 9, 9]),
        ("VOC2012/JPEGImages/a.jpg", 2, [0, 0, 5, 5]),
        ("VOC2012/JPEGImages/b.jpg", 1, [0, 0, 8, 8]),
    ]


def test_what_a_reader_leaves_out_stops_training_or_is_counted_and_survives_the_cache(voc_root, tmp_path):
    xml = voc_root / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<object>", voc_object("cat", 9, 9, 3, 3) + "<object>", 1))
    args = [f"source.shared.root={voc_root}", f"source.cache_dir={tmp_path}"]
    with pytest.raises(InstantiationException) as err:
        build("voc", args)
    message = str(err.value.__cause__)
    assert f"{xml}: object #1 ('cat'), field 'bndbox'" in message and "x2 < x1" in message
    assert "data.on_invalid=skip" in message
    for _ in range(2):  # converted, then read from the cache: the same lines
        datamodule = build("voc", [*args, "on_invalid=skip"])
        [problem] = datamodule.problems["train"]
        assert problem.startswith(f"{xml}: object #1 ('cat'), field 'bndbox'") and "box dropped" in problem
        counts = datamodule.counts()
        assert counts["data/train_skipped"] == 1 and counts["data/val_skipped"] == 0
        assert counts["data/train_images"] == 2 and counts["data/train_objects"] == 2


def _yolo(tmp_path: Path) -> list[str]:
    for split, boxes in (("train", ["0 0.5 0.5 0.5 0.5", "1 0.25 0.25 0.2 0.2"]), ("val", ["1 0.5 0.5 0.4 0.4"])):
        image(tmp_path / "images" / split / "a.jpg", 40, 20)
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / "a.txt").write_text("\n".join(boxes) + "\n")
    (tmp_path / "data.yaml").write_text("names: [car, person]\n")
    return [f"source.shared.names={tmp_path / 'data.yaml'}", f"source.train.images_dir={tmp_path / 'images/train'}",
            f"source.val.images_dir={tmp_path / 'images/val'}"]


def _udacity(tmp_path: Path) -> list[str]:
    rows = [f'{i}.jpg 2 2 {10 + i} 12 0 "{label}"' for i, label in enumerate(["car", "truck"] * 5)]
    for i in range(10):
        image(tmp_path / f"{i}.jpg", 40, 20)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return [f"source.train.csv_file={tmp_path / 'labels.csv'}", "source.holdout=0.2"]


def _mot(tmp_path: Path) -> list[str]:
    for seq in ("seq-a", "seq-b"):
        for frame in (1, 2):
            image(tmp_path / seq / "img1" / f"{frame:06d}.jpg", 40, 20)
        (tmp_path / seq / "gt").mkdir()
        rows = ["1,1,2,2,8,10,1,1,1.0", "2,1,4,2,8,10,1,1,1.0", "2,2,20,2,8,10,0,3,1"]  # the last: a car
        (tmp_path / seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    return [f"source.train.seq_dir={tmp_path / 'seq-a'}", f"source.val.seq_dir={tmp_path / 'seq-b'}"]


@pytest.mark.parametrize(
    ("name", "write", "classes", "objects"),
    [
        ("yolo", _yolo, ["car", "person"], {"train": 2, "val": 1}),
        ("udacity", _udacity, ["car", "truck"], {"train": 8, "val": 2}),
        ("mot", _mot, ["pedestrian"], {"train": 2, "val": 2}),  # the car rows are crowd regions
    ],
)
def test_each_format_config_builds_a_datamodule_that_loads_batches(tmp_path, name, write, classes, objects):
    datamodule = build(name, [*write(tmp_path), f"source.cache_dir={tmp_path / 'cache'}"])
    assert datamodule.class_names == classes
    assert {split: d.num_objects for split, d in datamodule.datasets.items()} == objects
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, Batch) and batch.images.shape[1:] == (3, 64, 64)
    assert os.path.dirname(datamodule.ann_file("val")).startswith(str(tmp_path / "cache" / f"{name}-"))
