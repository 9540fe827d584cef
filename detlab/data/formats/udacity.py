"""The Udacity self-driving-car CSVs (github.com/udacity/self-driving-car, `annotations/`), both layouts:

- CrowdAI (`object-detection-crowdai/labels.csv`): comma-separated, a header line, then
  `xmin,ymin,xmax,ymax,Frame,Label[,Preview URL]`. The published header names the first four columns
  `xmin,xmax,ymin,ymax`, but the values are in the README's order xmin, ymin, xmax, ymax (the converters
  that train on it read them so), so the columns are read by position whatever the header calls them.
- Autti (`object-dataset/labels.csv`): space-separated, no header,
  `frame xmin ymin xmax ymax occluded label ["attribute"]`, the label and the attribute quoted
  (`"trafficLight" "Red"`: the class is the label; the attribute, a light's colour, is not a class).

The layout is told from the file: a comma on the first line means CrowdAI. Coordinates are pixel
coordinates used as they are (x2 = xmax). The images are the frames the CSV names, in sorted order, in the
folder of the CSV unless `images_dir` says otherwise; their sizes come from the files' headers. Classes are
the sorted set of labels, or an explicit list (a label outside it is an error). `occluded` is parsed
(it must be an integer) but not kept: the box is the same box either way.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from detlab.data.formats.common import CocoBuilder, ConvertedDataset, check_known_class, parse_number
from detlab.errors import DataError

CROWDAI_COLUMNS = ("xmin", "ymin", "xmax", "ymax", "Frame", "Label")  # then an optional Preview URL
AUTTI_COLUMNS = ("frame", "xmin", "ymin", "xmax", "ymax", "occluded", "label")  # then an optional attribute


@dataclass
class _Row:
    frame: str
    label: str
    box_xyxy: tuple[float, ...]
    where: str  # "file: line n"


def read_udacity(
    csv_file: str | Path,
    images_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
) -> ConvertedDataset:
    """Reads a Udacity labels.csv (either layout) as a COCO dict."""
    csv_file = Path(csv_file)
    rows = _read_rows(csv_file)
    labels = sorted({row.label for row in rows})
    if class_names is not None:
        for row in rows:
            check_known_class(row.label, class_names, row.where, "label")
    builder = CocoBuilder(labels if class_names is None else class_names, images_dir or csv_file.parent)
    by_frame: dict[str, list[_Row]] = {}
    for row in rows:
        by_frame.setdefault(row.frame, []).append(row)
    for frame in sorted(by_frame):
        frame_rows = by_frame[frame]
        record = builder.add_image_from_file(frame, f"{frame_rows[0].where}, field 'frame'", len(frame_rows))
        if record is None:
            continue
        for row in frame_rows:
            builder.add_box(record, row.label, row.box_xyxy, f"{row.where}, fields 'xmin ymin xmax ymax'")
    return builder.result()


def _read_rows(csv_file: Path) -> list[_Row]:
    try:
        lines = csv_file.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"Udacity CSV not found: {csv_file}") from None
    except IsADirectoryError:
        raise DataError(f"{csv_file} is a folder; give the labels.csv inside it") from None
    except UnicodeDecodeError:
        raise DataError(f"{csv_file}: not a text file") from None
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError(f"{csv_file}: no rows: an empty dataset")
    crowdai = "," in numbered[0][1]
    if crowdai and _is_header(numbered[0][1]):
        numbered = numbered[1:]
    read_row = _crowdai_row if crowdai else _autti_row
    rows = [read_row(_split(line, crowdai), f"{csv_file}: line {number}") for number, line in numbered]
    if not rows:
        raise DataError(f"{csv_file}: a header but no rows: an empty dataset")
    return rows


def _is_header(line: str) -> bool:
    return line.split(",")[0].strip().lower() == "xmin"


def _split(line: str, crowdai: bool) -> list[str]:
    if crowdai:
        return next(csv.reader([line]))
    return next(csv.reader([line], delimiter=" ", quotechar='"', skipinitialspace=True))


def _crowdai_row(values: list[str], where: str) -> _Row:
    if len(values) not in (6, 7):
        raise DataError(
            f"{where}: {len(values)} columns; a CrowdAI row is {','.join(CROWDAI_COLUMNS)}[,Preview URL] (6 or 7)"
        )
    box = tuple(parse_number(value, where, key) for key, value in zip(CROWDAI_COLUMNS, values[:4]))
    return _Row(_text(values[4], where, "Frame"), _text(values[5], where, "Label"), box, where)


def _autti_row(values: list[str], where: str) -> _Row:
    if len(values) not in (7, 8):
        raise DataError(
            f"{where}: {len(values)} columns; an Autti row is `{' '.join(AUTTI_COLUMNS)} [attribute]` (7 or 8)"
        )
    box = tuple(parse_number(value, where, key) for key, value in zip(AUTTI_COLUMNS[1:5], values[1:5]))
    parse_number(values[5], where, "occluded", int)
    return _Row(_text(values[0], where, "frame"), _text(values[6], where, "label"), box, where)


def _text(value: str, where: str, field_name: str) -> str:
    if not value.strip():
        raise DataError(f"{where}: field '{field_name}' is empty")
    return value.strip()
