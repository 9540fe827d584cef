"""`detlab-data`: dataset tools. `detlab-data convert` writes a VOC, YOLO, Udacity or MOT dataset as a COCO json.

    detlab-data convert --format voc VOC2007 --split trainval --out voc07_trainval.json
    detlab-data convert --format voc raccoon --ann-dir annotations --img-dir images --out raccoon.json
    detlab-data convert --format yolo coco8/images/train --names coco8/data.yaml --out train.json
    detlab-data convert --format udacity object-dataset/labels.csv --out autti.json
    detlab-data convert --format mot MOT17/train/MOT17-02-FRCNN --min-visibility 0.25 --out mot17-02.json

Each sub-command is one `_<name>` function fed by its own argparse sub-parser, so that more (`check`) can be
added beside `convert`. Bad input ends in one clear message on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from detlab.data.formats.common import ConvertedDataset
from detlab.data.formats.mot import read_mot
from detlab.data.formats.udacity import read_udacity
from detlab.data.formats.voc import read_voc
from detlab.data.formats.yolo import read_yolo

MAX_PRINTED = 20  # problem lines printed after the summary; the count says how many there are

# Which options each format takes beyond the source path (the others are rejected, not silently ignored).
FORMAT_OPTIONS = {
    "voc": ("split", "ann_dir", "img_dir", "classes"),
    "yolo": ("names", "labels"),
    "udacity": ("images", "classes"),
    "mot": ("min_visibility", "static_person"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `detlab-data`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"detlab-data {args.command}: error: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detlab-data", description="Dataset tools for detlab.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser("convert", help="write a VOC / YOLO / Udacity / MOT dataset as a COCO json")
    convert.add_argument("--format", required=True, choices=sorted(FORMAT_OPTIONS))
    convert.add_argument(
        "source",
        help="voc: the dataset root; yolo: the image folder; udacity: the labels.csv; mot: the sequence folder",
    )
    convert.add_argument("--out", required=True, help="the COCO json to write")
    convert.add_argument("--split", help="voc: a devkit split, read from ImageSets/Main/<split>.txt")
    convert.add_argument("--ann-dir", help="voc: the xml folder under the root (default Annotations)")
    convert.add_argument("--img-dir", help="voc: the image folder under the root (default JPEGImages)")
    convert.add_argument("--classes", help="voc, udacity: the class names in category order, comma-separated")
    convert.add_argument("--names", help="yolo: data.yaml or a names file (one class name a line)")
    convert.add_argument("--labels", help="yolo: the label folder (default: the image folder's 'images' -> 'labels')")
    convert.add_argument("--images", help="udacity: the image folder (default: the folder of the CSV)")
    convert.add_argument("--min-visibility", type=float, help="mot: pedestrians less visible are ignore regions")
    convert.add_argument("--static-person", action="store_true", default=None, help="mot: class 7 counts as pedestrian")
    convert.set_defaults(run=_convert)
    return parser


def _convert(args: argparse.Namespace) -> int:
    given = [key for keys in FORMAT_OPTIONS.values() for key in keys if getattr(args, key) is not None]
    wrong = [key for key in given if key not in FORMAT_OPTIONS[args.format]]
    if wrong:
        raise ValueError(f"--{wrong[0].replace('_', '-')} does not apply to --format {args.format}")
    dataset = _read(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dataset.coco, allow_nan=False))
    print(summary(dataset, f"{args.format} {args.source}", str(out)))
    for problem in dataset.problems[:MAX_PRINTED]:
        print(f"  {problem}")
    if len(dataset.problems) > MAX_PRINTED:
        print(f"  ... and {len(dataset.problems) - MAX_PRINTED} more")
    return 0


def _classes(args: argparse.Namespace) -> list[str] | None:
    return None if args.classes is None else [name.strip() for name in args.classes.split(",")]


def _read(args: argparse.Namespace) -> ConvertedDataset:
    if args.format == "voc":
        ann_dir, img_dir = args.ann_dir or "Annotations", args.img_dir or "JPEGImages"
        return read_voc(args.source, args.split, ann_dir=ann_dir, img_dir=img_dir, class_names=_classes(args))
    if args.format == "yolo":
        if args.names is None:
            raise ValueError("--format yolo needs --names (a data.yaml or a names file)")
        return read_yolo(args.source, args.names, args.labels)
    if args.format == "udacity":
        return read_udacity(args.source, args.images, _classes(args))
    return read_mot(args.source, args.min_visibility or 0.0, bool(args.static_person))


def summary(dataset: ConvertedDataset, source: str, out: str) -> str:
    """One paragraph: images, objects (ignored and crowd among them), classes with counts, problems."""
    coco = dataset.coco
    annotations = coco["annotations"]
    per_class = Counter(a["category_id"] for a in annotations if not a["iscrowd"] and not a.get("ignore", 0))
    classes = ", ".join(f"{c['name']} {per_class[c['id']]}" for c in coco["categories"])
    ignored = sum(1 for a in annotations if a.get("ignore", 0) and not a["iscrowd"])
    crowd = sum(1 for a in annotations if a["iscrowd"])
    return (
        f"Converted {source} -> {out}: {len(coco['images'])} images, {len(annotations)} objects "
        f"({ignored} difficult, kept with ignore=1; {crowd} crowd/ignore regions), {len(coco['categories'])} classes "
        f"({classes}), {len(dataset.problems)} problems. Image file names are relative to {dataset.img_dir}."
    )


if __name__ == "__main__":
    sys.exit(main())
