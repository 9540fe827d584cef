"""DetectionDataModule as Hydra builds it from conf/data: shapes and coco give the same class and Batches."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue
from PIL import Image
from pycocotools.coco import COCO

from detlab.data.datamodule import DetectionDataModule
from detlab.data.shapes import ShapesSource
from detlab.errors import ConfigError
from detlab.structures import Batch, boxes_to_original

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
TINY = [
    "image_size=64", "batch_size=4", "num_workers=0",
    "source.num_train_images=10", "source.num_val_images=5", "source.image_size=80",
]


def build(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    return instantiate(cfg)


@pytest.fixture(scope="module")
def data_shapes(tmp_path_factory) -> DetectionDataModule:
    return build("shapes", [*TINY, f"source.cache_dir={tmp_path_factory.mktemp('cache')}"])


def test_shapes_config_builds_the_datamodule_with_its_label_map(data_shapes):
    assert type(data_shapes) is DetectionDataModule
    assert data_shapes.num_classes == 3 and data_shapes.class_names == ["circle", "square", "triangle"]
    assert data_shapes.category_ids == [1, 2, 3]
    assert len(COCO(data_shapes.ann_file("train")).getImgIds()) == 10
    assert len(COCO(data_shapes.ann_file("val")).getImgIds()) == 5
    with pytest.raises(ValueError, match="'test'"):
        data_shapes.ann_file("test")


def test_train_loader_yields_batches_over_every_image(data_shapes):
    seen = []
    for batch in data_shapes.train_dataloader():
        assert isinstance(batch, Batch) and batch.images.shape[1:] == (3, 64, 64) and len(batch) <= 4
        boxes = batch.gt_boxes[batch.gt_valid]
        assert ((boxes >= 0) & (boxes <= 64)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert ((batch.gt_labels >= 0) & (batch.gt_labels < 3)).all()
        seen += batch.image_ids.tolist()
    assert sorted(seen) == sorted(COCO(data_shapes.ann_file("train")).getImgIds())


def test_val_loader_keeps_every_image_in_order_and_maps_back_to_the_file(data_shapes):
    reference = COCO(data_shapes.ann_file("val"))
    batches = list(data_shapes.val_dataloader())
    assert torch.cat([b.image_ids for b in batches]).tolist() == sorted(reference.getImgIds())
    for batch in batches:
        back = boxes_to_original(batch.gt_boxes, batch.scales, batch.offsets)
        for i, image_id in enumerate(batch.image_ids.tolist()):
            anns = reference.imgToAnns[image_id]
            expected = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            expected[:, 2:] += expected[:, :2]
            labels = [data_shapes.category_ids.index(a["category_id"]) for a in anns]
            torch.testing.assert_close(back[i][batch.gt_valid[i]], expected, atol=1e-3, rtol=0)
            assert batch.gt_labels[i][batch.gt_valid[i]].tolist() == labels
            img = reference.imgs[image_id]
            assert batch.orig_sizes[i].tolist() == [img["height"], img["width"]]


def test_coco_config_reads_the_same_files_with_the_same_class(data_shapes):
    paths = [f"{split}.{key}={getattr(data_shapes.datasets[split], attr)}"
             for split in ("train", "val") for key, attr in (("ann_file", "ann_file"), ("img_dir", "img_dir"))]
    coco = build("coco", ["image_size=64", "batch_size=2", "num_workers=1", *paths])
    assert type(coco) is DetectionDataModule and coco.category_ids == data_shapes.category_ids
    assert coco.ann_file("val") == data_shapes.ann_file("val")
    loader = coco.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and batch.images.shape == (2, 3, 64, 64)


def test_coco_config_without_paths_stops_with_the_missing_key():
    with pytest.raises(MissingMandatoryValue, match="train.ann_file"):
        build("coco", [])


def test_coco_config_with_a_wrong_path_names_the_key(data_shapes, tmp_path):
    given = ["train.ann_file", "train.img_dir", "val.img_dir"]
    paths = [f"{key}={getattr(data_shapes.datasets[key.split('.')[0]], key.split('.')[1])}" for key in given]
    with pytest.raises(InstantiationException) as err:  # Hydra wraps what the target raises
        build("coco", [*paths, f"val.ann_file={tmp_path / 'missing.json'}"])
    assert isinstance(err.value.__cause__, ConfigError)
    assert str(err.value.__cause__) == f"data.val.ann_file={tmp_path / 'missing.json'}: no such file"



@pytest.mark.parametrize(("data", "message"), [
    ({"augment": {"hflip": "yes"}}, "data.augment.hflip='yes' must be a number >= 0"),
    ({"augment": {"min_visibility": None}}, "data.augment.min_visibility=None must be a number >= 0"),
    ({"augment": {"scale_range": 1.2}}, r"data.augment.scale_range=1.2 must be \[low, high\]"),
    ({"augment": {"scale_range": [1]}}, r"data.augment.scale_range=\[1\] must be \[low, high\]"),
    ({"mean": 0.5}, "data.mean=0.5 must be 3 finite numbers"),
])
def test_a_known_key_with_a_wrong_value_is_named_as_such(tmp_path, data, message):
    """Values of the wrong type were reported as 'an unknown key' (a TypeError read as one), or escaped as a bare
    ValueError (scale_range=[1]) or TypeError (mean=0.5) that the CLI shows as a traceback."""
    source = ShapesSource(num_train_images=2, num_val_images=1, image_size=32, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=message) as err:
        DetectionDataModule(source=source, image_size=32, **data)
    assert "unknown key" not in str(err.value)

def test_unknown_augment_key_and_bad_loader_settings_are_named(tmp_path):
    source = ShapesSource(num_train_images=2, num_val_images=1, image_size=32, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data.augment has an unknown key.*mosaic"):
        DetectionDataModule(source=source, image_size=32, augment={"mosaic": 1.0})
    with pytest.raises(ValueError, match="data.num_workers=-1"):
        DetectionDataModule(source=source, num_workers=-1)
    with pytest.raises(ValueError, match="either data.source or data.train"):
        DetectionDataModule(source=source, train={"ann_file": "a.json", "img_dir": "."})


def test_each_loader_worker_draws_its_own_augmentation(tmp_path):
    """Workers inherit one random state; unless reseeded, worker 0 and 1 repeat each other's scale jitter."""
    source = ShapesSource(num_train_images=8, num_val_images=1, image_size=80, size_jitter=0, cache_dir=str(tmp_path))
    datamodule = DetectionDataModule(
        source=source, image_size=64, batch_size=1, num_workers=2, augment={"scale_range": [0.5, 1.5]}
    )
    scales = [batch.scales[0, 0].item() for batch in datamodule.train_dataloader()]  # workers take turns
    assert scales[0::2] != scales[1::2], scales


def _coco_split(folder: Path, categories: list[dict], annotations: list[dict]) -> dict[str, str]:
    folder.mkdir()
    Image.new("RGB", (40, 30)).save(folder / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": annotations, "categories": categories}
    (folder / "ann.json").write_text(json.dumps(data))
    return {"ann_file": str(folder / "ann.json"), "img_dir": str(folder)}


BOX = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}


def test_splits_with_different_class_lists_are_an_error_naming_both_files(tmp_path):
    train = _coco_split(tmp_path / "train", [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], [BOX])
    val = _coco_split(tmp_path / "val", [{"id": 1, "name": "cat"}], [BOX])
    with pytest.raises(ValueError) as err:
        DetectionDataModule(train=train, val=val, num_workers=0)
    message = str(err.value)
    assert "the splits disagree on their categories" in message and "field 'categories'" in message
    assert f"{train['ann_file']} has [(1, 'cat'), (2, 'dog')]" in message
    assert f"{val['ann_file']} has [(1, 'cat')]" in message


def test_a_split_without_any_object_is_an_error(tmp_path):
    categories = [{"id": 1, "name": "cat"}]
    train = _coco_split(tmp_path / "train", categories, [BOX])
    val = _coco_split(tmp_path / "val", categories, [{**BOX, "iscrowd": 1}])  # only a crowd region
    with pytest.raises(ValueError, match=rf"data.val: {val['ann_file']} has no object to learn from or score against"):
        DetectionDataModule(train=train, val=val, num_workers=0)


def test_counts_for_the_logger(tmp_path):
    categories = [{"id": 1, "name": "cat"}]
    outside = {**BOX, "id": 2, "bbox": [34, 20, 20, 20]}  # partly outside: clipped to 6 x 10, a note
    bad = {**BOX, "id": 3, "bbox": [5, 5, 0, 4]}  # zero width: skipped
    train = _coco_split(tmp_path / "train", categories, [BOX, outside, bad])
    val = _coco_split(tmp_path / "val", categories, [BOX])
    datamodule = DetectionDataModule(train=train, val=val, num_workers=0, on_invalid="skip", image_size=40,
                                     augment={"min_box_size": 9})  # at scale 1 the clipped box is dropped
    for _ in datamodule.train_dataloader():
        pass
    assert datamodule.counts() == {
        "data/train_images": 1, "data/train_objects": 2, "data/train_skipped": 1, "data/train_notes": 1,
        "data/train_transform_boxes": 2, "data/train_transform_dropped": 1,
        "data/val_images": 1, "data/val_objects": 1, "data/val_skipped": 0, "data/val_notes": 0,
        "data/val_transform_boxes": 0, "data/val_transform_dropped": 0,
    }
    assert "annotation id=3" in datamodule.problems["train"][0] and "annotation id=2" in datamodule.notes["train"][0]


def _rank_scales(tmp_path, rank: int, world_size: int, seed: int = 0) -> list[float]:
    """The scale jitter one rank of a DDP run without loader workers draws for the 8 train images (its setup as
    Lightning calls it once the process group is up; every rank starts from the same seed)."""
    torch.manual_seed(seed)
    source = ShapesSource(num_train_images=8, num_val_images=1, image_size=80, size_jitter=0, cache_dir=str(tmp_path))
    datamodule = DetectionDataModule(source=source, image_size=64, num_workers=0, augment={"scale_range": [0.5, 1.5]})
    datamodule.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    return [dataset[i].scale[0] for i in range(len(dataset))]


def test_each_ddp_rank_draws_its_own_augmentation_without_workers(tmp_path):
    """Each rank loads other images, but with one seed they drew the same jitter step for step."""
    rank0, rank1 = (_rank_scales(tmp_path, rank, 2) for rank in (0, 1))
    assert rank0 != rank1
    assert rank0 == _rank_scales(tmp_path, 0, 1)  # rank 0 keeps the single-process stream
    # and the runs of two seeds share no stream (seed + rank gave rank 1 of seed 0 rank 0's of seed 1)
    assert rank1 != _rank_scales(tmp_path, 0, 2, seed=1)


def test_transform_counts_are_summed_over_ddp_ranks(data_shapes, monkeypatch):
    """Each rank transforms its share of the images: results.json had rank 0's share of the boxes (half, on 2)."""
    import detlab.distributed as distributed

    data_shapes.datasets["train"][0]
    mine = data_shapes.counts()
    other = {"train": {"boxes": 5, "dropped": 2}, "val": {"boxes": 0, "dropped": 0}}  # the pretend rank 1's

    def all_gather_object(out, obj):
        out[:] = [obj, other]

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_gather_object", all_gather_object)
    both = data_shapes.counts()
    assert both["data/train_transform_boxes"] == mine["data/train_transform_boxes"] + 5
    assert both["data/train_transform_dropped"] == mine["data/train_transform_dropped"] + 2
    assert {k: v for k, v in both.items() if "transform" not in k} == {k: v for k, v in mine.items() if "transform" not in k}
