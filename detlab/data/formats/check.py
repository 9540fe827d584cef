"""What `detlab-data check` tells a researcher about one split before training, and the image check.

The statistics are read from the COCO dict that `detlab.data.coco.checker.check_coco` kept, so the check and the
training see the same data: images, objects (training targets: not crowd, not ignored), crowd/ignore regions,
objects per class, object sizes in COCO's small / medium / large (by the annotation's `area`, as COCOeval's
APs/APm/APl are), objects per image, and every problem and note, each naming the file, the image and the field.

`check_images` opens every image the way training does (`detlab.data.coco.reader.read_rgb`):
- problems (training would stop): a missing file, a file that does not decode (corrupt or truncated), stored
  pixels whose size is not the record's `width` x `height`;
- notes (loaded fine, said once): grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images, which load
  as 8-bit RGB, and an EXIF orientation, which is not applied (boxes are in the stored pixels' frame).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from detlab.data.coco.reader import IMAGE_ERRORS, SIXTEEN_BIT_MODES, read_rgb
from detlab.data.formats.common import EXIF_ORIENTATION, size_hint

SMALL, LARGE = 32**2, 96**2  # COCO's area ranges (pycocotools' areaRng)
PER_IMAGE_BINS = ((0, 0), (1, 1), (2, 4), (5, 9), (10, 19), (20, None))  # objects per image, inclusive
MODE_NOTES = {
    "L": "grayscale; loaded as RGB",
    "LA": "grayscale with alpha; loaded as RGB, alpha dropped",
    "P": "a palette image; loaded as RGB",
    "PA": "a palette image with alpha; loaded as RGB, alpha dropped",
    "RGBA": "RGBA; loaded as RGB, alpha dropped",
    "CMYK": "CMYK; loaded as RGB",
    "1": "1-bit; loaded as RGB",
}


@dataclass
class SplitReport:
    """One split's numbers (see the module's docstring); `format()` gives the printout."""

    name: str
    images: int
    objects: int
    crowd: int
    per_class: dict[str, int]
    sizes: dict[str, int]
    per_image: dict[str, int]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self, max_listed: int) -> str:
        classes = ", ".join(f"{name} {count}" for name, count in self.per_class.items())
        lines = [
            f"{self.name}",
            f"  images {self.images}, objects {self.objects} (+ {self.crowd} crowd/ignore regions, not trained on), "
            f"classes {len(self.per_class)}",
            f"  objects per class: {classes}",
            "  object sizes (COCO area): " + ", ".join(f"{k} {v}" for k, v in self.sizes.items()),
            "  objects per image: " + ", ".join(f"{k}: {v}" for k, v in self.per_image.items()),
        ]
        for kind, found in (("problems", self.problems), ("notes", self.notes)):
            lines.append(f"  {kind}: {len(found)}")
            lines += [f"    {line}" for line in found[:max_listed]]
            if len(found) > max_listed:
                lines.append(f"    ... and {len(found) - max_listed} more")
        return "\n".join(lines)


def split_report(name: str, coco: dict[str, Any], problems: list[str], notes: list[str]) -> SplitReport:
    """The numbers of a checked COCO dict (`CheckedCoco.data`) and its problem and note lines."""
    names = {c["id"]: str(c["name"]) for c in coco["categories"]}
    targets = [a for a in coco["annotations"] if not a.get("iscrowd", 0) and not a.get("ignore", 0)]
    per_class = Counter(names[a["category_id"]] for a in targets)
    areas = [a["area"] for a in targets]  # every kept annotation has one (check_coco)
    per_image = Counter(a["image_id"] for a in targets)
    counts = [per_image.get(img["id"], 0) for img in coco["images"]]
    return SplitReport(
        name=name,
        images=len(coco["images"]),
        objects=len(targets),
        crowd=len(coco["annotations"]) - len(targets),
        per_class={names[c]: per_class[names[c]] for c in sorted(names)},
        sizes={
            "small (< 32^2)": sum(1 for a in areas if a < SMALL),
            "medium": sum(1 for a in areas if SMALL <= a < LARGE),
            "large (>= 96^2)": sum(1 for a in areas if a >= LARGE),
        },
        per_image={_bin_name(low, high): sum(1 for n in counts if n >= low and (high is None or n <= high))
                   for low, high in PER_IMAGE_BINS},
        problems=list(problems),
        notes=list(notes),
    )


def check_images(coco: dict[str, Any], img_dir: str | Path, name: str) -> tuple[list[str], list[str]]:
    """(problems, notes) from opening and decoding every image of a COCO dict (a loop over files: I/O bound)."""
    problems, notes = [], []
    for img in coco["images"]:
        path = Path(img_dir) / img["file_name"]
        where = f"{name}: image id={img['id']}, field 'file_name'={img['file_name']!r} ({path})"
        try:
            with Image.open(path) as opened:
                mode, orientation = opened.mode, opened.getexif().get(EXIF_ORIENTATION)
            rgb = read_rgb(path)
        except FileNotFoundError:
            problems.append(f"{where}: image file not found")
            continue
        except IMAGE_ERRORS as err:
            problems.append(f"{where}: cannot decode the image ({err}); is it corrupt or truncated?")
            continue
        stored_h, stored_w = rgb.shape[:2]
        if (stored_w, stored_h) != (img["width"], img["height"]):
            hint = size_hint((img["width"], img["height"]), (stored_w, stored_h), orientation)
            problems.append(
                f"{where}: the stored pixels are {stored_w}x{stored_h} (w x h) but fields 'width'={img['width']}, "
                f"'height'={img['height']}{hint}"
            )
        elif orientation not in (None, 1):
            notes.append(f"{where}: EXIF Orientation={orientation}: loaded as stored (not rotated), the frame of "
                         "its boxes")
        if mode in MODE_NOTES or mode in SIXTEEN_BIT_MODES:
            notes.append(f"{where}: {MODE_NOTES.get(mode, f'16-bit ({mode}); loaded as 8-bit RGB (high byte)')}")
    return problems, notes


def _bin_name(low: int, high: int | None) -> str:
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"
