"""FormatSource: a VOC, YOLO, Udacity or MOT dataset, converted once into COCO files in the cache.

`data=voc|yolo|udacity|mot` hand the DataModule such a source; its `splits()` (the SplitSource contract of
detlab.data.datamodule) returns one COCO file per split, which the DataModule then reads exactly as
`data=coco` reads any COCO file. So every format trains, and is evaluated, through one code path.

- A split is one reader call (`read_<format>(**arguments)`) or a list of them merged into one split
  (VOC2007 + VOC2012 trainval, several MOT sequences). `shared` holds the arguments common to every call;
  a split's own keys win.
- Classes: those the first train part gives (its explicit list, or the sorted names in its files). Every
  other part is read with that list, so a class the train split lacks is an error naming the record, and
  the splits cannot disagree.
- Holdout (for a dataset without a val split, like raccoon): `val: null, holdout: f` moves round(f * N) of
  the train images to val, those whose sha256(file_name) sorts first. It depends on the file names only
  (not on their order or a seed), so every run, rank and machine makes the same split.
- Cache: `<cache>/<format>-<key>/{train,val}.json`, where the key is the sha256 of the format, the reader
  arguments (paths made absolute), the bytes of every annotation file and the name and byte size of every
  image file. Editing, adding or removing any of them converts again; an unchanged source is read from the
  cache. The folder is written under a temporary name and renamed, so DDP ranks converting at once are safe.
- What the readers left out (problems) and repaired (notes) is kept beside the files (`meta.json`) and
  handed on in CocoFiles, so a cached conversion reports exactly what the first one did. With a holdout,
  they all count against the train split.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from detlab.data.coco.reader import CocoFiles, default_cache_dir, write_cache_folder
from detlab.data.formats.common import ConvertedDataset, check_class_names, find_images
from detlab.data.formats.mot import read_mot
from detlab.data.formats.udacity import read_udacity
from detlab.data.formats.voc import read_voc
from detlab.data.formats.yolo import default_labels_dir, read_yolo
from detlab.errors import ConfigError, DataError

READERS: dict[str, Callable[..., ConvertedDataset]] = {
    "voc": read_voc,
    "yolo": read_yolo,
    "udacity": read_udacity,
    "mot": read_mot,
}
# Reader arguments that are paths (made absolute; the others are relative to them or not paths at all).
PATH_ARGUMENTS = ("root", "images_dir", "labels_dir", "csv_file", "seq_dir")
SPLITS = ("train", "val")
# Bump when a reader's output changes, so that caches written by older code are not reused.
CONVERTER_VERSION = 2


class FormatSource:
    """Converts a dataset in `format` into COCO files, once per content (see the module's docstring).

    format:    voc | yolo | udacity | mot.
    train:     the reader arguments of the train split: a mapping, or a list of mappings merged into one split.
    val:       the same for val; None with holdout > 0.
    shared:    reader arguments common to every part of every split.
    holdout:   fraction of the train images held out as val when val is None.
    cache_dir: root of the cache; None = $DETLAB_CACHE or ~/.cache/detlab.
    """

    def __init__(
        self,
        format: str,
        train: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        val: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        shared: Mapping[str, Any] | None = None,
        holdout: float = 0.0,
        cache_dir: str | None = None,
    ) -> None:
        if format not in READERS:
            raise ConfigError(f"data.source.format={format!r}: use one of {sorted(READERS)}")
        if not 0.0 <= holdout < 1.0:
            raise ConfigError(f"data.source.holdout={holdout}: a fraction of the train images in [0, 1)")
        if (val is None) == (holdout == 0.0):
            raise ConfigError(
                "give data.source.val (the val split's reader arguments) or data.source.holdout > 0 with "
                f"data.source.val=null (hold out part of train), not {'both' if val is not None else 'neither'}"
            )
        self.format, self.holdout, self.cache_dir = format, float(holdout), cache_dir
        reader = READERS[format]
        shared = _plain(shared or {})
        given = {"train": train, "val": val}
        self.parts = {
            split: [_arguments(reader, {**shared, **part}, f"data.source.{split}") for part in _as_list(given[split])]
            for split in SPLITS
            if given[split] is not None
        }
        for split in self.parts:  # a class list written in the config is checked now, naming its key
            for part in _as_list(given[split]):
                for name in ("class_names", "names"):
                    owner, listed = (f"data.source.{split}", part[name]) if name in part else \
                        ("data.source.shared", shared.get(name))
                    if isinstance(listed, list):
                        check_class_names(listed, f"{owner}.{name}")

    @property
    def directory(self) -> Path:
        """The cache folder of exactly this source's content and arguments."""
        return Path(self.cache_dir or default_cache_dir()) / f"{self.format}-{self._key()[:16]}"

    def splits(self) -> dict[str, CocoFiles]:
        """Convert the source unless its cache folder exists; return {"train": files, "val": files}."""
        root = self.directory
        if not root.is_dir():
            write_cache_folder(root, self._convert)
        meta = json.loads((root / "meta.json").read_text())
        return {
            split: CocoFiles(
                ann_file=str(root / f"{split}.json"),
                img_dir=meta[split]["img_dir"],
                problems=tuple(meta[split]["problems"]),
                notes=tuple(meta[split]["notes"]),
            )
            for split in SPLITS
        }

    def read(self) -> dict[str, ConvertedDataset]:
        """Read every split from the source (no cache): {"train": dataset, "val": dataset}."""
        train = _merge(self._read_parts(self.parts["train"], None), "data.source.train")
        train.check_not_empty("data.source.train")
        class_names = [c["name"] for c in train.coco["categories"]]
        if self.holdout > 0:
            return dict(zip(SPLITS, hold_out(train, self.holdout)))
        val = _merge(self._read_parts(self.parts["val"], class_names), "data.source.val")
        val.check_not_empty("data.source.val")
        return {"train": train, "val": val}

    def _read_parts(self, parts: list[dict[str, Any]], class_names: list[str] | None) -> list[ConvertedDataset]:
        read = []
        for arguments in parts:
            if class_names is not None and "class_names" in arguments and arguments["class_names"] is None:
                arguments = {**arguments, "class_names": class_names}
            read.append(READERS[self.format](**arguments))
            class_names = [c["name"] for c in read[-1].coco["categories"]]
        return read

    def _convert(self, folder: Path) -> None:
        meta = {}
        for split, dataset in self.read().items():
            coco = {**dataset.coco, "info": {"description": f"detlab: {self.format} {split}, converted"}}
            (folder / f"{split}.json").write_text(json.dumps(coco, allow_nan=False))
            meta[split] = {"img_dir": dataset.img_dir, "problems": dataset.problems, "notes": dataset.notes}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    def _key(self) -> str:
        digest = hashlib.sha256()
        identity = {"format": self.format, "parts": self.parts, "holdout": self.holdout, "version": CONVERTER_VERSION}
        digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
        for parts in self.parts.values():
            for arguments in parts:
                annotation_files, image_dirs = _inputs(self.format, arguments)
                for path in annotation_files:
                    digest.update(f"\0{path}\0".encode())
                    digest.update(path.read_bytes())
                for folder in image_dirs:
                    for path in find_images(folder) if folder.is_dir() else []:
                        digest.update(f"\0{path}\0{path.stat().st_size}".encode())
        return digest.hexdigest()


def hold_out(dataset: ConvertedDataset, fraction: float) -> tuple[ConvertedDataset, ConvertedDataset]:
    """(train, val): val holds the round(fraction * N) images whose sha256(file_name) sorts first.

    Image and annotation ids are kept (each stays unique in its split); problems and notes stay with train.
    """
    images = dataset.coco["images"]
    count = round(fraction * len(images))
    if not 1 <= count < len(images):
        raise ConfigError(
            f"data.source.holdout={fraction} of {len(images)} images holds out {count}; "
            "at least one image must be in each split"
        )
    order = sorted(images, key=lambda img: hashlib.sha256(img["file_name"].encode()).hexdigest())
    val_ids = {img["id"] for img in order[:count]}

    def subset(keep: Callable[[int], bool]) -> dict[str, Any]:
        return {
            **dataset.coco,
            "images": [img for img in images if keep(img["id"])],
            "annotations": [a for a in dataset.coco["annotations"] if keep(a["image_id"])],
        }

    train = ConvertedDataset(subset(lambda i: i not in val_ids), dataset.problems, dataset.img_dir, dataset.notes)
    val = ConvertedDataset(subset(lambda i: i in val_ids), [], dataset.img_dir, [])
    return train, val


def _merge(parts: list[ConvertedDataset], key: str) -> ConvertedDataset:
    """One dataset from several read with the same classes: file names relative to the parts' common folder,
    image and annotation ids counted from 1 again."""
    if len(parts) == 1:
        return parts[0]
    categories = parts[0].coco["categories"]
    root = Path(os.path.commonpath([part.img_dir for part in parts]))
    images, annotations, problems, notes = [], [], [], []
    for number, part in enumerate(parts):
        if part.coco["categories"] != categories:
            raise DataError(f"{key}: part #{number} has categories {part.coco['categories']}, part #0 {categories}")
        prefix = Path(part.img_dir).relative_to(root)
        new_id = {}
        for img in part.coco["images"]:
            new_id[img["id"]] = len(images) + 1
            images.append({**img, "id": new_id[img["id"]], "file_name": (prefix / img["file_name"]).as_posix()})
        for ann in part.coco["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": new_id[ann["image_id"]]})
        problems += part.problems
        notes += part.notes
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return ConvertedDataset(coco, problems, str(root), notes)


def _inputs(format: str, arguments: dict[str, Any]) -> tuple[list[Path], list[Path]]:
    """(annotation files, hashed by their bytes; image folders, hashed by file names and sizes) of one call."""
    def existing(paths: list[Path]) -> list[Path]:
        return [p for p in paths if p.is_file()]  # what is missing, the reader reports itself

    if format == "voc":
        root, split = Path(arguments["root"]), arguments["split"]
        files = sorted((root / arguments["ann_dir"]).glob("*.xml"))
        if split is not None:
            files.append(Path(split) if split.endswith(".txt") else root / "ImageSets" / "Main" / f"{split}.txt")
        return existing(files), [root / arguments["img_dir"]]
    if format == "yolo":
        images_dir, names = Path(arguments["images_dir"]), arguments["names"]
        labels_dir = arguments["labels_dir"]
        if labels_dir is None:
            try:
                labels_dir = default_labels_dir(images_dir)
            except ValueError:
                labels_dir = images_dir  # the reader raises its own error for this
        files = sorted(Path(labels_dir).rglob("*.txt"))
        return existing(files + ([Path(names)] if isinstance(names, str) else [])), [images_dir]
    if format == "udacity":
        csv_file = Path(arguments["csv_file"])
        return existing([csv_file]), [Path(arguments["images_dir"] or csv_file.parent)]
    seq_dir = Path(arguments["seq_dir"])
    return existing([seq_dir / "gt" / "gt.txt"]), [seq_dir / arguments["img_dir"]]


def _arguments(reader: Callable[..., Any], given: dict[str, Any], key: str) -> dict[str, Any]:
    """Every argument of the reader (defaults filled in), paths absolute; a ValueError names a wrong key."""
    parameters = inspect.signature(reader).parameters
    try:
        bound = inspect.signature(reader).bind(**given)
    except TypeError as err:
        raise ConfigError(f"{key}: {err} (the {reader.__name__} arguments are {list(parameters)})") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name in PATH_ARGUMENTS:
        if arguments.get(name) is not None:
            arguments[name] = str(Path(arguments[name]).resolve())
    if isinstance(arguments.get("names"), str):
        arguments["names"] = str(Path(arguments["names"]).resolve())
    return arguments


def _as_list(split: Any) -> list[dict[str, Any]]:
    split = _plain(split)
    return [dict(part) for part in split] if isinstance(split, list) else [dict(split)]


def _plain(value: Any) -> Any:
    """Hydra hands nested nodes over as DictConfig / ListConfig: plain dicts and lists hash and compare simply."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    return value

