"""Pascal VOC xml: one `<annotation>` file per image, boxes as 1-based inclusive pixel indices.

Layout: `root/<ann_dir>/*.xml` (default `Annotations`) and the images in `root/<img_dir>` (default
`JPEGImages`); with `split`, only the ids listed in `root/ImageSets/Main/<split>.txt` (a VOC devkit), or in
the file `split` names when it ends in `.txt` (one id, the xml's stem, a line).

- `<difficult>1</difficult>` objects are written with `iscrowd: 1` and `ignore: 1`. Both COCO evaluators
  (pycocotools and faster-coco-eval) replace `ignore` by `iscrowd` when they load a file, so `iscrowd` is the
  flag that makes a difficult object an ignore region: a detection on it is neither a true nor a false
  positive, as in VOC's own evaluation. The COCO reader leaves crowd boxes out of the training targets, as
  mmdetection does with VOC's difficult objects. Every other annotation carries `iscrowd: 0, ignore: 0`.
- Classes are the sorted set of `<name>`s in the files, or an explicit list (a name outside it is an error).
- Width and height come from the image file's header; a `<size>` (absent or zero: none) that disagrees with it
  leaves the image and its boxes out (a problem): the boxes were drawn on another image, or on this one resized.
- The image is `<filename>` in the image folder; where that file is missing, the one named like the xml (a
  note); where neither exists, the image and its boxes are left out (a problem).
- Boxes are in the stored pixels' frame: LabelImg and the devkit draw on the pixels as stored, whatever an
  EXIF orientation says (detlab loads the stored pixels too, so such boxes stay on their objects).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from detlab.data.formats.common import (
    IMAGE_SUFFIXES,
    CocoBuilder,
    ConvertedDataset,
    check_known_class,
    parse_number,
)
from detlab.errors import DataError


@dataclass
class _VocObject:
    name: str
    box_xyxy: tuple[float, float, float, float]
    difficult: bool
    where: str  # "file: object #k ('name')"


@dataclass
class _VocImage:
    xml: Path
    file_name: str
    file_note: str | None  # <filename> names no file, but the image named like the xml exists
    file_missing: str | None  # neither exists: the image is left out
    size: tuple[int, int] | None  # (width, height) from <size>, None where absent or zero
    objects: list[_VocObject]


def read_voc(
    root: str | Path,
    split: str | None = None,
    *,
    ann_dir: str = "Annotations",
    img_dir: str = "JPEGImages",
    class_names: Sequence[str] | None = None,
) -> ConvertedDataset:
    """Reads a VOC folder (all xml in `root/ann_dir`, or the ids of `split`) as a COCO dict."""
    root = Path(root)
    images = [_read_xml(xml, root / img_dir) for xml in _xml_files(root, split, ann_dir)]
    names_in_files = sorted({obj.name for image in images for obj in image.objects})
    if class_names is not None:
        for obj in (obj for image in images for obj in image.objects):
            check_known_class(obj.name, class_names, obj.where, "name")
    builder = CocoBuilder(names_in_files if class_names is None else class_names, root / img_dir)
    for image in images:
        _add_image(builder, image)
    return builder.result()


def _xml_files(root: Path, split: str | None, ann_dir: str) -> list[Path]:
    """The annotation files in sorted order: all of `ann_dir`, or those of the split file."""
    folder = root / ann_dir
    if not folder.is_dir():
        raise DataError(
            f"VOC annotation folder not found: {folder}; the xml files' folder under the root is "
            "data.source.shared.ann_dir (detlab-data: --ann-dir), Annotations by default"
        )
    if split is None:
        files = sorted(folder.glob("*.xml"))
        if not files:
            raise DataError(f"no .xml files in {folder}: an empty dataset")
        return files
    split_file = Path(split) if split.endswith(".txt") else root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(
            f"VOC split file not found: {split_file} (split={split!r}: data.source.train.split or data.source.val.split, "
            "detlab-data: --split); a folder of xml without ImageSets reads every xml with split=null, and holds out "
            "a val split with data.source.val=null data.source.holdout=0.2"
        )
    files = []
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        xml = folder / f"{line.split()[0]}.xml"
        if not xml.is_file():
            raise DataError(f"{split_file}: line {number}: id {line.split()[0]!r} has no annotation file {xml}")
        files.append(xml)
    if not files:
        raise DataError(f"{split_file}: lists no image ids: an empty dataset")
    return sorted(files)


def _read_xml(xml: Path, img_dir: Path) -> _VocImage:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml}: not valid XML ({err}); is the file truncated?") from None
    if root.tag != "annotation":
        raise DataError(f"{xml}: the root element is <{root.tag}>, a VOC file has <annotation>")
    objects = [_read_object(obj, f"{xml}: object #{k}") for k, obj in enumerate(root.findall("object"), start=1)]
    return _VocImage(xml, *_image_file_name(root, xml, img_dir), _read_size(root, xml), objects)


def _read_object(obj: ET.Element, where: str) -> _VocObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DataError(f"{where}: missing field 'name'")
    where = f"{where} ('{name}')"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DataError(f"{where}: missing field 'bndbox'")
    xmin, ymin, xmax, ymax = (
        parse_number(bndbox.findtext(key), where, f"bndbox/{key}") for key in ("xmin", "ymin", "xmax", "ymax")
    )
    difficult = parse_number(obj.findtext("difficult") or "0", where, "difficult", int)
    # VOC numbers pixels from 1 and its xmax/ymax are inclusive: a box over pixels 1..10 covers 10 pixels.
    # In detlab's continuous coordinates (0 at the left edge of the first pixel) that box spans 0..10, so
    # x1 = xmin - 1 and x2 = xmax (detectron2's convention), which keeps a box's width = xmax - xmin + 1.
    return _VocObject(name, (xmin - 1, ymin - 1, xmax, ymax), difficult != 0, where)


def _read_size(root: ET.Element, xml: Path) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None or size.findtext("width") is None or size.findtext("height") is None:
        return None
    width, height = (parse_number(size.findtext(key), str(xml), f"size/{key}") for key in ("width", "height"))
    for key, value in (("width", width), ("height", height)):
        if not math.isfinite(value):  # round() would stop on it with a bare ValueError or OverflowError
            raise DataError(f"{xml}: field 'size/{key}'={size.findtext(key).strip()!r} is not a finite number")
    width, height = round(width), round(height)
    return (width, height) if width > 0 and height > 0 else None


def _image_file_name(root: ET.Element, xml: Path, img_dir: Path) -> tuple[str, str | None, str | None]:
    """(`<filename>`, or the image named like the xml where `<filename>` names no file; a note or None;
    a problem where no image exists, or None)."""
    named = (root.findtext("filename") or "").strip()
    if named and (img_dir / named).is_file():
        return named, None, None
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        found = f"{xml.stem}{suffix}"
        if (img_dir / found).is_file():
            note = f"{xml}: field 'filename'={named!r} names no file in {img_dir}; using {found}, named as the xml"
            return found, note, None
    return named or f"{xml.stem}.jpg", None, f"{xml}: field 'filename'={named!r}: no such image in {img_dir}"


def _add_image(builder: CocoBuilder, image: _VocImage) -> None:
    if image.file_note is not None:
        builder.notes.append(image.file_note)
    if image.file_missing is not None:
        builder.problems.append(f"{image.file_missing}; the image and its {len(image.objects)} box(es) are left out")
        return
    where = f"{image.xml}: field 'size'"
    record = builder.add_image_from_file(image.file_name, where, len(image.objects), stated_size=image.size)
    if record is None:
        return
    for obj in image.objects:
        where = f"{obj.where}, field 'bndbox'"
        builder.add_box(record, obj.name, obj.box_xyxy, where, ignore=obj.difficult, iscrowd=obj.difficult)
