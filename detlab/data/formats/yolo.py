"""YOLO txt: one label file per image, one line `class cx cy w h` per box, all four normalised by the image size.

Layout (Ultralytics'): images under `images_dir` (searched recursively), the label of `images_dir/a/b.jpg` at
`labels_dir/a/b.txt`; by default `labels_dir` is `images_dir` with its last `images` folder named `labels`.
An image without a label file is an image without objects (the YOLO convention); a label file without an
image is a problem line. Image sizes come from the image files' headers (pixels are not decoded).

EXIF orientation: Ultralytics applies a JPEG's EXIF orientation before it normalises a label (its
`exif_size`, and OpenCV's imread, which rotates), so YOLO labels are fractions of the image as a viewer shows
it. detlab loads the stored pixels, so each box is mapped back to them (`display_to_stored`), and the
image gets a note.

Class names come from a `data.yaml` (`names:` as a list, or as a dict {index: name} with indices 0..K-1),
from a names file (one name a line, as darknet's `obj.names`), or from a list; class index i becomes
category id i + 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from detlab.data.formats.common import (
    CocoBuilder,
    ConvertedDataset,
    check_class_names,
    display_size,
    display_to_stored,
    find_images,
    parse_number,
)
from detlab.errors import DataError

BOX_FIELDS = ("cx", "cy", "w", "h")


def read_yolo(
    images_dir: str | Path,
    names: str | Path | Sequence[str],
    labels_dir: str | Path | None = None,
) -> ConvertedDataset:
    """Reads YOLO labels as a COCO dict; `names` is a data.yaml, a names file or the list of class names."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"YOLO image folder not found: {images_dir}")
    labels_dir = Path(labels_dir) if labels_dir is not None else default_labels_dir(images_dir)
    if not labels_dir.is_dir():
        raise DataError(f"YOLO label folder not found: {labels_dir} (the labels of {images_dir})")
    class_names = read_names(names) if isinstance(names, (str, Path)) else list(names)
    images = find_images(images_dir)
    if not images:
        raise DataError(f"no image files under {images_dir}: an empty dataset")
    builder = CocoBuilder(class_names, images_dir)
    for image_path in images:
        file_name = image_path.relative_to(images_dir).as_posix()
        label_file = labels_dir / Path(file_name).with_suffix(".txt")
        lines = _read_label_file(label_file, class_names) if label_file.is_file() else []
        record = builder.add_image_from_file(file_name, str(label_file), len(lines), labels_frame="display")
        if record is None:
            continue
        orientation = builder.orientations.get(record["id"])
        shown_width, shown_height = display_size(orientation, record["width"], record["height"])
        for number, class_index, (cx, cy, w, h) in lines:
            box_shown = _to_pixels(cx, cy, w, h, shown_width, shown_height)
            box_xyxy = display_to_stored(box_shown, orientation, record["width"], record["height"])
            where = f"{label_file}: line {number}, fields 'cx cy w h'"
            builder.add_box(record, class_names[class_index], box_xyxy, where)
    builder.problems.extend(_orphan_label_files(labels_dir, images_dir, images, names))
    return builder.result()


def read_names(source: str | Path) -> list[str]:
    """Class names from a data.yaml (`names:` list or {index: name} dict) or a names file (one a line)."""
    path = Path(source)
    if not path.is_file():
        raise DataError(f"class names file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (class names come from a data.yaml or a names file)") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        names = _names_from_yaml(path, text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: no class names (a names file holds one name a line)")
    try:
        return check_class_names(names)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def _names_from_yaml(path: Path, text: str) -> list[Any]:
    """The entries of `names:` as YAML wrote them (read_names checks them as class names)."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: field 'names' has keys {sorted(names)}; class indices must be 0..K-1")
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: field 'names' must be a non-empty list of class names or a dict {{index: name}}")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{path}: field 'nc'={data['nc']!r} but field 'names' lists {len(names)} classes")
    return names


def default_labels_dir(images_dir: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`."""
    parts = images_dir.parts
    if "images" not in parts:
        raise DataError(f"{images_dir} has no folder named 'images' to find the labels beside; pass labels_dir")
    last = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:last], "labels", *parts[last + 1 :])


def _read_label_file(label_file: Path, class_names: list[str]) -> list[tuple[int, int, tuple[float, ...]]]:
    """(line number, class index, (cx, cy, w, h)) per box line; a malformed line is a ValueError."""
    try:
        text = label_file.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{label_file}: not a text file") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        where = f"{label_file}: line {number}"
        if len(values) != 5:
            raise DataError(f"{where}: {len(values)} values; a YOLO box line is `class cx cy w h` (5 values)")
        class_index = parse_number(values[0], where, "class", int)
        if not 0 <= class_index < len(class_names):
            raise DataError(
                f"{where}: field 'class'={class_index} is not a class index; "
                f"the names list {len(class_names)} classes (0..{len(class_names) - 1})"
            )
        box = tuple(parse_number(value, where, key) for key, value in zip(BOX_FIELDS, values[1:]))
        rows.append((number, class_index, box))
    return rows


def _to_pixels(cx: float, cy: float, w: float, h: float, width: int, height: int) -> tuple[float, ...]:
    """Normalised centre and size -> (x1, y1, x2, y2) in pixels."""
    return ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)


def _orphan_label_files(labels_dir: Path, images_dir: Path, images: list[Path], names: Any) -> list[str]:
    """One problem line per label file that belongs to no image (its boxes cannot be placed)."""
    expected = {(labels_dir / p.relative_to(images_dir)).with_suffix(".txt") for p in images}
    names_file = Path(names).resolve() if isinstance(names, (str, Path)) else None
    problems = []
    for label_file in sorted(labels_dir.rglob("*.txt")):
        if label_file in expected or label_file.resolve() == names_file:
            continue
        count = sum(1 for line in label_file.read_text(errors="replace").splitlines() if line.strip())
        problems.append(f"{label_file}: no image of this name under {images_dir}; its {count} box line(s) are left out")
    return problems
