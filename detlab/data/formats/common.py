"""What the format readers share: the result type, the COCO dict they build, box checks and image sizes.

Every reader turns its records into boxes xyxy in pixels and hands them to `CocoBuilder.add_box`, so that the
four formats treat a bad box the same way: a non-finite box, a box with x2 < x1 (or y2 < y1), a box of zero
width or height and a box wholly outside its image are dropped; a box partly outside is clipped to the image.
Each of these is one line that names the file, the record and the field, in one of two lists:

- `problems`: something was left out (a box, an image and its boxes, a row). `data.on_invalid=error` stops
  on these; `skip` trains without them and counts them.
- `notes`: something was repaired and nothing is lost (a box clipped to its image, an EXIF-rotated image, a
  `<filename>` that names no file but an image named like the xml exists). They are printed and logged only.

EXIF orientation: detlab always loads the stored pixels (it never rotates an image), so every box ends up in
the stored pixels' frame. Readers whose tools label the image as it is shown (YOLO: Ultralytics applies the
EXIF rotation before it normalises a label) say so with `labels_frame="display"`, and their boxes are mapped
back with `display_to_stored`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from detlab.data.coco.checker import problem_report
from detlab.data.coco.reader import IMAGE_ERRORS
from detlab.errors import DataError

# The image files the readers look for (lower case; YOLO's and VOC's usual ones).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 (or absent) means the stored pixels are shown as they are


@dataclass
class ConvertedDataset:
    """A dataset read from some format: a complete COCO instances dict and what was wrong with the source.

    coco:     {"images": [{id, file_name, width, height}], "annotations": [{id, image_id, category_id,
              bbox [x, y, w, h] in pixels, area, iscrowd, (ignore)}], "categories": [{id, name}]}
    problems: one line per thing left out (a box, an image, a row), naming the source file, the record and
              the field.
    img_dir:  the folder the images' `file_name`s are relative to.
    notes:    one line per thing repaired without loss (a clipped box, an EXIF-rotated image, ...).
    """

    coco: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    img_dir: str = ""
    notes: list[str] = field(default_factory=list)

    def check_not_empty(self, name: str) -> None:
        """A DataError listing the problems where they left every image out (a resized or unreadable image set,
        the wrong image folder): without it the only message was the COCO checker's "field 'images' is empty",
        or the holdout's "0 images", which name neither a file nor a reason. `name` names the source."""
        if not self.coco["images"]:
            raise DataError(problem_report(name, self.problems, fix="every image was left out: nothing is left to "
                                                                    "train on or to check; fix these"))


class CocoBuilder:
    """Collects images and boxes into one COCO dict; ids count from 1 in the order things are added.

    Readers add images in sorted file order and take class names in their class order, so that the same
    source always gives the same ids.
    """

    def __init__(self, class_names: Sequence[str], img_dir: str | Path) -> None:
        self.class_names = check_class_names(class_names)
        self.category_ids = {name: index + 1 for index, name in enumerate(self.class_names)}
        self.img_dir = Path(img_dir)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.orientations: dict[int, int] = {}  # image id -> EXIF orientation, where it is not 1

    def add_image(self, file_name: str, width: int, height: int) -> dict[str, Any]:
        """Adds an image record of the given size and returns it (boxes are added against it)."""
        image = {"id": len(self.images) + 1, "file_name": file_name, "width": int(width), "height": int(height)}
        self.images.append(image)
        return image

    def add_image_from_file(
        self,
        file_name: str,
        where: str,
        num_boxes: int,
        labels_frame: str = "stored",
        stated_size: tuple[int, int] | None = None,
    ) -> dict[str, Any] | None:
        """Adds an image whose size (stored pixels) comes from its file's header (`img_dir / file_name`).

        An image that cannot be read is left out with its `num_boxes` boxes, and that is a problem line; so is
        one whose stored size is not the `stated_size` (width, height) its annotation gives (VOC's <size>):
        its boxes were drawn on some other image, or on this one resized or rotated.
        labels_frame: "stored" (the boxes are in the stored pixels' frame) or "display" (in the frame a viewer
        shows after applying the EXIF orientation; the reader maps them with `display_to_stored`). An
        image with an EXIF orientation other than 1 is a note that says which.
        """
        path = self.img_dir / file_name
        try:
            width, height, orientation = image_header(path)
        except ValueError as err:
            self.problems.append(f"{where}: {err}; the image and its {num_boxes} box(es) are left out")
            return None
        if stated_size is not None and tuple(stated_size) != (width, height):
            self.problems.append(
                f"{where}: says {stated_size[0]}x{stated_size[1]} (w x h) but image {path} is {width}x{height}"
                f"{size_hint(stated_size, (width, height), orientation)}; the image and its {num_boxes} box(es) "
                "are left out"
            )
            return None
        record = self.add_image(file_name, width, height)
        if orientation not in (None, 1):
            self.orientations[record["id"]] = orientation
            frame = (
                "its labels are read in the frame a viewer shows and mapped to the stored pixels"
                if labels_frame == "display"
                else "its boxes are taken in the stored pixels' frame"
            )
            self.notes.append(
                f"{where}: image {path} has EXIF Orientation={orientation} (viewers show it rotated or flipped); "
                f"{frame}, which is the frame detlab loads"
            )
        return record

    def add_box(
        self,
        image: dict[str, Any],
        class_name: str,
        box_xyxy: Sequence[float],
        where: str,
        *,
        ignore: bool | None = None,
        iscrowd: bool = False,
        report_clipping: bool = True,
    ) -> None:
        """Checks one box (x1, y1, x2, y2 in the image's pixels) and adds it, clipped, or records why not.

        where: the source file, the record and the field, e.g. "a.xml: object #2 ('dog'), field 'bndbox'".
        ignore: written as the annotation's `ignore` flag (0/1) unless None (formats without such a flag).
        report_clipping: False where the format draws boxes beyond the image on purpose (MOT).
        """
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
        given = f"(x1, y1, x2, y2)=({x1:g}, {y1:g}, {x2:g}, {y2:g})"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            self.problems.append(f"{where}: box {given} is not finite; box dropped")
            return
        if x2 < x1 or y2 < y1:
            which = "x2 < x1" if x2 < x1 else "y2 < y1"
            self.problems.append(f"{where}: box {given} has {which}; box dropped")
            return
        if x2 == x1 or y2 == y1:
            self.problems.append(f"{where}: box {given} has zero area; box dropped")
            return
        width, height = image["width"], image["height"]
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
        if cx2 <= cx1 or cy2 <= cy1:
            self.problems.append(f"{where}: box {given} lies wholly outside the {width}x{height} image; box dropped")
            return
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2) and report_clipping:
            self.notes.append(
                f"{where}: box {given} lies partly outside the {width}x{height} image; "
                f"clipped to ({cx1:g}, {cy1:g}, {cx2:g}, {cy2:g})"
            )
        bbox_xywh = [cx1, cy1, cx2 - cx1, cy2 - cy1]
        annotation: dict[str, Any] = {
            "id": len(self.annotations) + 1,
            "image_id": image["id"],
            "category_id": self.category_ids[class_name],
            "bbox": bbox_xywh,
            "area": bbox_xywh[2] * bbox_xywh[3],
            "iscrowd": int(iscrowd),
        }
        if ignore is not None:
            annotation["ignore"] = int(ignore)
        self.annotations.append(annotation)

    def result(self) -> ConvertedDataset:
        categories = [{"id": self.category_ids[name], "name": name} for name in self.class_names]
        coco = {"images": self.images, "annotations": self.annotations, "categories": categories}
        return ConvertedDataset(coco=coco, problems=self.problems, img_dir=str(self.img_dir), notes=self.notes)


def check_class_names(class_names: Sequence[str], where: str = "class names") -> list[str]:
    """The class names as a list of non-empty, distinct strings (a DataError, beginning with `where`, says which
    one is not); a number is taken as its text (YAML's `names: [1, 2]`, as Ultralytics takes it), a null or a
    list is no name."""
    for position, name in enumerate(class_names):
        if not isinstance(name, (str, int, float)):  # str() made a null "None": a class of that name
            raise DataError(f"{where}: entry #{position} is {name!r}, not a name (an empty YAML entry reads as null)")
    names = [str(name) for name in class_names]
    for position, name in enumerate(names):
        if not name.strip():
            raise DataError(f"{where}: entry #{position} is empty")
        if name in names[:position]:
            raise DataError(f"{where}: {name!r} appears twice (entries #{names.index(name)} and #{position})")
    return names


def check_known_class(name: str, class_names: Sequence[str], where: str, field_name: str) -> None:
    """A ValueError naming the record and the field where a class name is not in an explicit class list."""
    if name not in class_names:
        raise DataError(f"{where}: field '{field_name}'={name!r} is not one of the classes {list(class_names)}")


def image_header(path: Path) -> tuple[int, int, int | None]:
    """(width, height, EXIF orientation or None) from the image file's header; the pixels are not decoded."""
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION)
            return img.width, img.height, orientation
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except IMAGE_ERRORS as err:
        raise DataError(f"cannot read the header of image {path} ({err})") from None


def size_hint(stated: tuple[int, int], stored: tuple[int, int], orientation: int | None) -> str:
    """Why an annotation's size (width, height) may differ from the stored pixels': "" or "; ..." naming an EXIF
    rotation whose shown size it is (a tool that drew the boxes on the rotated image)."""
    if orientation in (5, 6, 7, 8) and tuple(stated) == tuple(stored)[::-1]:
        return (f"; it is the size shown after EXIF Orientation={orientation}: were the boxes drawn on the "
                "rotated image?")
    return ""


def display_size(orientation: int | None, width: int, height: int) -> tuple[int, int]:
    """(width, height) of an image as a viewer shows it: orientations 5 to 8 swap the sides."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def display_to_stored(
    box_xyxy: Sequence[float], orientation: int | None, width: int, height: int
) -> tuple[float, float, float, float]:
    """A box (x1, y1, x2, y2) in the frame a viewer shows, mapped to the stored pixels (width x height).

    The viewer shows the stored pixels transposed as PIL's ImageOps.exif_transpose does (EXIF 2.3, tag 274);
    each case below is the inverse of that transpose for one point (u, v), applied to two opposite corners.
    """
    W, H = float(width), float(height)
    inverse = {
        2: lambda u, v: (W - u, v),  # mirrored left-right
        3: lambda u, v: (W - u, H - v),  # rotated 180
        4: lambda u, v: (u, H - v),  # mirrored top-bottom
        5: lambda u, v: (v, u),  # transposed
        6: lambda u, v: (v, H - u),  # rotated 90 clockwise to be shown
        7: lambda u, v: (W - v, H - u),  # transversed
        8: lambda u, v: (W - v, u),  # rotated 90 counter-clockwise to be shown
    }.get(orientation or 1)
    if inverse is None:
        return tuple(float(v) for v in box_xyxy)  # type: ignore[return-value]
    (ax, ay), (bx, by) = inverse(*box_xyxy[:2]), inverse(*box_xyxy[2:])
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def find_images(folder: Path) -> list[Path]:
    """The image files under `folder` (recursively), sorted by their path relative to it."""
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def parse_number(text: str | None, where: str, field_name: str, kind: type = float) -> Any:
    """`kind(text)` (float or int), or a ValueError naming the record and the field."""
    if text is None:
        raise DataError(f"{where}: missing field '{field_name}'")
    try:
        return kind(text.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise DataError(f"{where}: field '{field_name}'={text.strip()!r} is not {what}") from None
