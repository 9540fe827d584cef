"""DetectionDataModule: the COCO splits of a run, their transforms and loaders, built by Hydra from conf/data.

`data=coco` names the files (`train.ann_file`, `train.img_dir`, `val.*`); `data=shapes` gives a `source`
that writes them first (the built-in generator), and `data=voc|yolo|udacity|mot` a source that converts its
format into them once (detlab.data.formats.source). Either way the same class reads them, so everything
after this point (labels, evaluation against `ann_file(split)`) is one code path.

Nothing is lost without a word: what a source left out and what the COCO reader rejects are `problems`
(`on_invalid=error` stops on them, `skip` trains without them), what was repaired is `notes`, and the boxes
the train transform dropped are counted; `counts()` gathers all of it for the logger and results.json.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, get_worker_info

from detlab.data.coco.checker import MAX_LISTED, problem_report
from detlab.data.coco.reader import CocoDetection, CocoFiles
from detlab.data.collate import collate
from detlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform
from detlab.distributed import from_every_rank
from detlab.errors import ConfigError, DataError, check_count, check_positive

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


class SplitSource(Protocol):
    """Something that materialises COCO files (detlab.data.shapes.ShapesSource, detlab.data.formats.source
    .FormatSource); a CocoFiles' `problems` and `notes` say what it left out or repaired on the way."""

    def splits(self) -> dict[str, CocoFiles]: ...


class DetectionDataModule(pl.LightningDataModule):
    """Train and val loaders of padded `Batch`es over two COCO splits.

    train, val:   {"ann_file": ..., "img_dir": ...} per split; or
    source:       a SplitSource that writes them (then train/val are not given).
    image_size:   side of the square letterboxed input (resize=letterbox, stretch) or the shorter side
                  (resize=keep_ratio).
    resize, max_size, mean, std: the input's resize policy and normalisation (DetectionTransform's), the same
                  for both splits.
    category_ids: the label space, label k = category_ids[k]; None: the train file's categories in id order.
                  A torchvision preset gives its 91-way COCO labels (label = COCO category id), with ids that no
                  file has; every category of the files must be in it.
    augment:      DetectionTransform's augmentation arguments for the train split (hflip, scale_range,
                  color_jitter, photometric, expand_ratio, min_iou_crop, min_visibility, min_box_size); val
                  uses none of them but min_box_size.
    on_invalid:   "error" or "skip" for invalid annotations and images, the source's and the file's.

    num_classes, class_names, category_ids (label -> the file's category id), `ann_file(split)`, `problems`
    and `notes` are available as soon as the object exists: the files are generated or converted, and
    checked, here. A split without any object to learn from is an error.
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
        resize: str = "letterbox",
        max_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_loader_args(batch_size, num_workers, size_divisor)
        self.batch_size, self.num_workers, self.size_divisor = batch_size, num_workers, size_divisor
        if source is not None and (train is not None or val is not None):
            raise ConfigError("give either data.source or data.train/data.val, not both")
        files = source.splits() if source is not None else _given_files(train, val)
        if on_invalid == "error":
            _stop_on_source_problems(files)
        self.files = files
        augment = dict(augment or {})
        geometry = {"resize": resize, "max_size": max_size, "mean": mean, "std": std}  # checked by the transform
        # Seeded from torch so that seed_everything makes single-process (num_workers=0) runs repeatable.
        self.seed = torch.initial_seed() % 2**32
        transforms = {
            "train": _transform(image_size, {**augment, **geometry}, seed=self.seed),
            "val": _transform(image_size, {**{k: v for k, v in augment.items() if k == "min_box_size"}, **geometry}),
        }
        labels = None if category_ids is None else [int(c) for c in category_ids]
        self.datasets = {
            split: CocoDetection(files[split].ann_file, files[split].img_dir, transforms[split], on_invalid, labels)
            for split in SPLITS
        }
        _check_splits(self.datasets)
        self.category_ids: list[int] = self.datasets["train"].category_ids
        self.class_names: list[str] = self.datasets["train"].class_names
        self.num_classes: int = len(self.category_ids)
        _log_summary(self.problems, self.notes)

    def ann_file(self, split: str) -> str:
        """The annotation file the evaluator scores `split` against."""
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        return self.datasets[split].eval_ann_file

    @property
    def problems(self) -> dict[str, list[str]]:
        """What was left out under on_invalid=skip, per split: the source's lines, then the COCO reader's."""
        return {split: [*self.files[split].problems, *self.datasets[split].problems] for split in SPLITS}

    @property
    def notes(self) -> dict[str, list[str]]:
        """What was repaired without loss (boxes clipped to their image, EXIF-rotated images), per split."""
        return {split: [*self.files[split].notes, *self.datasets[split].notes] for split in SPLITS}

    def counts(self) -> dict[str, int]:
        """Numbers to log and to write into results.json, `data/<split>_<what>`:

        images, objects (training targets), skipped (annotations and images left out, as listed in
        `problems`), notes, transform_boxes and transform_dropped (boxes given to the transform so far, and
        those it dropped as cut below min_visibility or smaller than min_box_size; they grow every epoch; under
        DDP summed over the ranks, a collective once the process group is up: every rank calls it together).
        """
        counts = {}
        all_transformed = _summed_over_ranks({split: ds.transform_counts() for split, ds in self.datasets.items()})
        for split, dataset in self.datasets.items():
            transformed = all_transformed[split]
            counts.update({
                f"data/{split}_images": len(dataset),
                f"data/{split}_objects": dataset.num_objects,
                f"data/{split}_skipped": len(self.problems[split]),
                f"data/{split}_notes": len(self.notes[split]),
                f"data/{split}_transform_boxes": transformed["boxes"],
                f"data/{split}_transform_dropped": transformed["dropped"],
            })
        return counts

    def setup(self, stage: str) -> None:
        """Under DDP without loader workers, each rank augments with a stream of its own (rank_seed): every rank
        starts from the same seed, so each would draw the same flips and scales as the others, step for step.
        Loader workers are seeded per rank and per worker by _reseed_worker."""
        if stage == "fit" and self.num_workers == 0 and self.trainer is not None and self.trainer.world_size > 1:
            self.datasets["train"].transform.reseed(rank_seed(self.seed, self.trainer.global_rank))

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


def _stop_on_source_problems(files: dict[str, CocoFiles]) -> None:
    """on_invalid=error: what a source left out (a dropped box, an unreadable image) stops the run, listed."""
    for split in SPLITS:
        if files[split].problems:
            raise DataError(problem_report(f"the {split} split's source", list(files[split].problems)))


def _check_splits(datasets: dict[str, CocoDetection]) -> None:
    """The splits share their categories, and each has at least one object to learn from or score against."""
    train_set, val_set = datasets["train"], datasets["val"]
    if (train_set.category_ids, train_set.class_names) != (val_set.category_ids, val_set.class_names):
        raise DataError(
            f"the splits disagree on their categories: {train_set.ann_file} has "
            f"{list(zip(train_set.category_ids, train_set.class_names))}, {val_set.ann_file} has "
            f"{list(zip(val_set.category_ids, val_set.class_names))}; field 'categories' must be the same"
        )
    for split, dataset in datasets.items():
        if dataset.empty:
            raise DataError(f"data.{split}: {dataset.empty}")


def _log_summary(problems: dict[str, list[str]], notes: dict[str, list[str]]) -> None:
    """One warning per split with something skipped or repaired, quoting the first lines."""
    for split in SPLITS:
        for kind, lines in (("skipped (data.on_invalid=skip)", problems[split]), ("repaired", notes[split])):
            if lines:
                listed = "\n  ".join(lines[:MAX_LISTED])
                more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
                log.warning("data.%s: %d %s:\n  %s%s", split, len(lines), kind, listed, more)


def _summed_over_ranks(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Each rank's {split: {name: count}}, summed over the DDP ranks (as is when there is one process)."""
    ranks = from_every_rank(counts)
    return {split: {name: sum(rank[split][name] for rank in ranks) for name in named} for split, named in counts.items()}


def rank_seed(seed: int, rank: int) -> int:
    """The augmentation seed of one DDP rank of the run seeded `seed`: rank 0's is the seed (a single process's
    stream), the others' are drawn from numpy's SeedSequence of both (as Lightning seeds loader workers). seed + rank
    gave rank 1 of seed 0 the stream of rank 0 of seed 1: the runs of a multi-seed study shared augmentations."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


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
            raise ConfigError(f"data.{split} is not set: give data.{split}.ann_file and data.{split}.img_dir "
                             "(or use data=shapes)")
        ann_file, img_dir = given.get("ann_file"), given.get("img_dir")
        if ann_file is None or not Path(ann_file).is_file():
            raise ConfigError(f"data.{split}.ann_file={ann_file}: no such file")
        if img_dir is None or not Path(img_dir).is_dir():
            raise ConfigError(f"data.{split}.img_dir={img_dir}: no such folder")
        files[split] = CocoFiles(ann_file=str(ann_file), img_dir=str(img_dir))
    return files


def eval_transform(data: Mapping[str, Any]) -> DetectionTransform:
    """The val split's transform of a data config (data.image_size, resize, max_size, mean, std): what
    evaluation, prediction and the speed protocol pre-process an image with."""
    keys = ("resize", "max_size", "mean", "std")
    geometry = {k: data[k] for k in keys if data.get(k) is not None}
    min_box = {"min_box_size": data["augment"]["min_box_size"]} if "min_box_size" in data.get("augment", {}) else {}
    return _transform(data["image_size"], {**min_box, **geometry})


def _transform(image_size: int, augment: dict[str, Any], seed: int | None = None) -> DetectionTransform:
    # Unknown keys by name: a TypeError from inside the transform is a wrong value (its checks name the key) or a bug
    known = [name for name in inspect.signature(DetectionTransform).parameters if name not in ("image_size", "seed")]
    unknown = sorted(set(augment) - set(known))
    if unknown:
        raise ConfigError(f"data.augment has an unknown key ({', '.join(unknown)}); known: {', '.join(known)}")
    return DetectionTransform(image_size, **augment, seed=seed)


def _check_loader_args(batch_size: int, num_workers: int, size_divisor: int) -> None:
    check_positive("data", batch_size=batch_size)
    check_count("data", num_workers=num_workers)
    if not isinstance(size_divisor, int) or size_divisor < 1:
        raise ConfigError(f"data.size_divisor={size_divisor!r} must be a positive integer (1 disables rounding)")
