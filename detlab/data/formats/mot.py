"""A MOT challenge sequence (MOT16/17/20): `gt/gt.txt` over the frames `img1/000001.jpg`, ... as images.

gt.txt has one row per box and frame: `frame,id,bb_left,bb_top,bb_width,bb_height,conf,class,visibility`,
frames counted from 1. `conf` is the benchmark's "consider" flag (0: the row is not evaluated) and `class`
follows the MOT16/17 class table (Milan et al., "MOT16: A Benchmark for Multi-Object Tracking", 2016; MOT20
adds 13):

    1 pedestrian          5 motorbike               9 occluder                  13 crowd (MOT20)
    2 person on vehicle   6 non-motorized vehicle  10 occluder on the ground
    3 car                 7 static person          11 occluder full
    4 bicycle             8 distractor             12 reflection

Only pedestrians are objects to detect; the dataset becomes one category, `pedestrian`:
- a row of class 1 with conf != 0 is a pedestrian box (with `static_person=True` also every class-7 row,
  whatever its conf: MOT17 marks static persons conf 0, yet for a detector a standing person is a person);
- every other row (conf 0, or any other class, or a pedestrian less visible than `min_visibility`) is kept as
  an ignore region (`iscrowd: 1`, `ignore: 1`), so that a detection there is neither rewarded nor punished.
  The benchmark's own evaluation drops these rows and removes predictions matched to distractor classes
  (2, 7, 8, 12); as crowd regions, COCO evaluation also forgives unmatched detections that lie on a car or
  an occluder.

Box coordinates are used as written, like the benchmark's devkit and the usual MOT-to-COCO converters; MOT
draws a person cut by the image border beyond it, so such boxes are clipped to the frame without a problem
line (a box wholly outside is still one). Image sizes come from the frames' headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from detlab.data.formats.common import CocoBuilder, ConvertedDataset, find_images, parse_number
from detlab.errors import ConfigError, DataError

COLUMNS = ("frame", "id", "bb_left", "bb_top", "bb_width", "bb_height", "conf", "class", "visibility")
CLASSES = range(1, 14)
PEDESTRIAN, STATIC_PERSON = 1, 7
CATEGORY = "pedestrian"


@dataclass
class _Row:
    frame: int
    box_xyxy: tuple[float, float, float, float]
    is_target: bool  # a pedestrian to detect; otherwise an ignore region
    where: str  # "gt.txt: line n"


def read_mot(
    seq_dir: str | Path,
    min_visibility: float = 0.0,
    static_person: bool = False,
    img_dir: str = "img1",
) -> ConvertedDataset:
    """Reads one MOT sequence folder (`gt/gt.txt` and `img1/`) as a COCO dict with file names `img1/000001.jpg`."""
    seq_dir = Path(seq_dir)
    if not 0.0 <= min_visibility <= 1.0:
        raise ConfigError(f"min_visibility={min_visibility}: a visibility is a fraction in [0, 1]")
    rows = _read_gt(seq_dir / "gt" / "gt.txt", min_visibility, static_person)
    frames = _frames(seq_dir / img_dir)
    builder = CocoBuilder([CATEGORY], seq_dir)
    by_frame: dict[int, list[_Row]] = {}
    for row in rows:
        by_frame.setdefault(row.frame, []).append(row)
    for frame, image_path in sorted(frames.items()):
        frame_rows = by_frame.get(frame, [])
        file_name = image_path.relative_to(seq_dir).as_posix()
        record = builder.add_image_from_file(file_name, f"{image_path} (frame {frame})", len(frame_rows))
        if record is None:
            continue
        for row in frame_rows:
            where, ignored = f"{row.where}, fields 'bb_left bb_top bb_width bb_height'", not row.is_target
            # report_clipping=False: MOT draws a person cut by the border beyond it on purpose
            builder.add_box(
                record, CATEGORY, row.box_xyxy, where, ignore=ignored, iscrowd=ignored, report_clipping=False
            )
    for frame in sorted(set(by_frame) - set(frames)):
        for row in by_frame[frame]:
            where = f"{row.where}: field 'frame'={frame}"
            builder.problems.append(f"{where} has no image in {seq_dir / img_dir}; row left out")
    return builder.result()


def _frames(folder: Path) -> dict[int, Path]:
    """frame number -> image file, from names like 000001.jpg."""
    if not folder.is_dir():
        raise DataError(f"MOT image folder not found: {folder}")
    frames: dict[int, Path] = {}
    for path in find_images(folder):
        if not path.stem.isdigit():
            raise DataError(f"{path}: a MOT frame is named by its number (000001.jpg), got {path.name!r}")
        if int(path.stem) in frames:
            raise DataError(f"{path} and {frames[int(path.stem)]} are both frame {int(path.stem)}")
        frames[int(path.stem)] = path
    if not frames:
        raise DataError(f"no frames in {folder}: an empty sequence")
    return frames


def _read_gt(gt_file: Path, min_visibility: float, static_person: bool) -> list[_Row]:
    try:
        lines = gt_file.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"MOT ground truth not found: {gt_file}") from None
    except UnicodeDecodeError:
        raise DataError(f"{gt_file}: not a text file") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append(_read_row(line, f"{gt_file}: line {number}", min_visibility, static_person))
    return rows


def _read_row(line: str, where: str, min_visibility: float, static_person: bool) -> _Row:
    values = line.split(",")
    if len(values) != len(COLUMNS):
        raise DataError(f"{where}: {len(values)} columns; a MOT gt row is {','.join(COLUMNS)} ({len(COLUMNS)})")
    frame, _, left, top, width, height, conf, cls, visibility = (
        parse_number(value, where, key, int if key in ("frame", "id", "class") else float)
        for key, value in zip(COLUMNS, values)
    )
    if frame < 1:
        raise DataError(f"{where}: field 'frame'={frame}; MOT frames count from 1")
    if cls not in CLASSES:
        raise DataError(f"{where}: field 'class'={cls} is not in the MOT class table (1..{CLASSES[-1]})")
    if not math.isfinite(conf):  # nan != 0: a NaN flag made the row a pedestrian
        raise DataError(f"{where}: field 'conf'={conf} must be a finite number (0: the row is not evaluated)")
    if not 0.0 <= visibility <= 1.0:  # a NaN one was below every min_visibility: an ignore region without a word
        raise DataError(f"{where}: field 'visibility'={visibility} must be a fraction in [0, 1]")
    person = (cls == PEDESTRIAN and conf != 0) or (static_person and cls == STATIC_PERSON)
    is_target = person and visibility >= min_visibility
    return _Row(frame, (left, top, left + width, top + height), is_target, where)
