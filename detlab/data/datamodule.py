"""DetectionDataModule: the COCO splits of a run, their transforms and loaders, built by Hydra from conf/data.

`data=coco` names the files (`train.ann_file`, `train.img_dir`, `val.*`); `data=shapes` gives a `source`
that writes them first (the built-in generator). Either way the same class reads them, so everything after
this point (labels, evaluation against `ann_file(split)`) is one code path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, get_worker_info

from detlab.data.coco import CocoDetection, CocoFiles
from detlab.data.collate import collate
from detlab.data.transforms import DetectionTransform

SPLITS = ("train", "val")


class SplitSource(Protocol):
    """Something that materialises COCO files (e.g. detlab.data.shapes.ShapesSource)."""

    def splits(self) -> dict[str, CocoFiles]: ...


class DetectionDataModule(pl.LightningDataModule):
    """Train and val loaders of padded `Batch`es over two COCO splits.

    train, val:   {"ann_file": ..., "img_dir": ...} per split; or
    source:       a SplitSource that writes them (then train/val are not given).
    image_size:   side of the square letterboxed input.
    augment:      DetectionTransform's augmentation arguments for the train split (hflip, scale_range,
                  color_jitter, min_visibility, min_box_size); val uses none of them but min_box_size.
    on_invalid:   "error" or "skip" for invalid annotations (see detlab.data.coco).

    num_classes, class_names, category_ids (label -> the file's category id) and `ann_file(split)` are
    available as soon as the object exists: the files are generated (shapes) and checked here.
    """

    def __init__(
        self,
        train: Mapping[str, str] | None = None,
        val: Mapping[str, str] | None = None,
        source: SplitSource | None = None,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 2,
        size_divisor: int = 32,
        augment: Mapping[str, Any] | None = None,
        on_invalid: str = "error",
    ) -> None:
        super().__init__()
        _check_loader_args(batch_size, num_workers, size_divisor)
        self.batch_size, self.num_workers, self.size_divisor = batch_size, num_workers, size_divisor
        if source is not None and (train is not None or val is not None):
            raise ValueError("give either data.source or data.train/data.val, not both")
        files = source.splits() if source is not None else _given_files(train, val)
        augment = dict(augment or {})
        # Seeded from torch so that seed_everything makes single-process (num_workers=0) runs repeatable.
        transforms = {
            "train": _transform(image_size, augment, seed=torch.initial_seed() % 2**32),
            "val": _transform(image_size, {k: v for k, v in augment.items() if k == "min_box_size"}),
        }
        self.datasets = {
            split: CocoDetection(files[split].ann_file, files[split].img_dir, transforms[split], on_invalid)
            for split in SPLITS
        }
        train_set, val_set = self.datasets["train"], self.datasets["val"]
        if (train_set.category_ids, train_set.class_names) != (val_set.category_ids, val_set.class_names):
            raise ValueError(
                f"the splits disagree on their categories: {train_set.ann_file} has "
                f"{list(zip(train_set.category_ids, train_set.class_names))}, {val_set.ann_file} has "
                f"{list(zip(val_set.category_ids, val_set.class_names))}; field 'categories' must be the same"
            )
        self.category_ids: list[int] = train_set.category_ids
        self.class_names: list[str] = train_set.class_names
        self.num_classes: int = len(self.category_ids)

    def ann_file(self, split: str) -> str:
        """The annotation file the evaluator scores `split` against."""
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        return self.datasets[split].eval_ann_file

    @property
    def problems(self) -> dict[str, list[str]]:
        """Annotations skipped under on_invalid=skip, per split (one line each, for the log)."""
        return {split: dataset.problems for split, dataset in self.datasets.items()}

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], shuffle=False)

    def _loader(self, dataset: CocoDetection, shuffle: bool) -> DataLoader:
        workers = self.num_workers > 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate, size_divisor=self.size_divisor),
            persistent_workers=workers,
            worker_init_fn=_reseed_worker if workers else None,
            drop_last=False,
        )


def _reseed_worker(worker_id: int) -> None:
    """Seed a loader worker per worker and per DDP rank (Lightning's recipe), then its augmentation stream from
    that: albumentations keeps its own random state, which every worker would otherwise inherit and repeat.
    """
    pl_worker_init_function(worker_id)
    get_worker_info().dataset.transform.reseed(torch.initial_seed() % 2**32)


def _given_files(train: Mapping | None, val: Mapping | None) -> dict[str, CocoFiles]:
    files = {}
    for split, given in zip(SPLITS, (train, val)):
        if given is None:
            raise ValueError(f"data.{split} is not set: give data.{split}.ann_file and data.{split}.img_dir "
                             "(or use data=shapes)")
        ann_file, img_dir = given.get("ann_file"), given.get("img_dir")
        if ann_file is None or not Path(ann_file).is_file():
            raise FileNotFoundError(f"data.{split}.ann_file={ann_file}: no such file")
        if img_dir is None or not Path(img_dir).is_dir():
            raise FileNotFoundError(f"data.{split}.img_dir={img_dir}: no such folder")
        files[split] = CocoFiles(ann_file=str(ann_file), img_dir=str(img_dir))
    return files


def _transform(image_size: int, augment: dict[str, Any], seed: int | None = None) -> DetectionTransform:
    try:
        return DetectionTransform(image_size, **augment, seed=seed)
    except TypeError as err:
        raise ValueError(f"data.augment has an unknown key ({err}); known: hflip, scale_range, color_jitter, "
                         "min_visibility, min_box_size") from None


def _check_loader_args(batch_size: int, num_workers: int, size_divisor: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"data.batch_size={batch_size!r} must be a positive integer")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"data.num_workers={num_workers!r} must be an integer >= 0")
    if not isinstance(size_divisor, int) or size_divisor < 1:
        raise ValueError(f"data.size_divisor={size_divisor!r} must be a positive integer (1 disables rounding)")
