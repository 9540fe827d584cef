"""`detlab-data`: dataset tools.

`detlab-data convert` writes a VOC, YOLO, Udacity or MOT dataset as a COCO json:

    detlab-data convert --format voc VOC2007 --split trainval --out voc07_trainval.json
    detlab-data convert --format voc raccoon --ann-dir annotations --img-dir images --out raccoon.json
    detlab-data convert --format yolo coco8/images/train --names coco8/data.yaml --out train.json
    detlab-data convert --format udacity object-dataset/labels.csv --out autti.json
    detlab-data convert --format mot MOT17/train/MOT17-02-FRCNN --min-visibility 0.25 --out mot17-02.json

`detlab-data check` says what a dataset holds and what is wrong with it, before any training:

    detlab-data check instances_val2017.json --img-dir val2017 --image-check      # a COCO file
    detlab-data check --format voc raccoon --ann-dir annotations --img-dir images   # a source folder
    detlab-data check voc data.source.shared.root=VOC2007                           # a data config + overrides

It prints, per split, images, objects, classes with counts, object sizes in COCO's small/medium/large,
objects per image, and every problem (something training leaves out or stops on) and note (repaired without
loss), each naming the file, the image and the field. `--image-check` also opens every image (missing,
corrupt, grayscale/RGBA/16-bit, EXIF-rotated). It uses the COCO reader's own checks (detlab.data.coco.checker), so it
reports exactly what training would meet. Exit status 0: no problem; 1: problems, or a COCO file that cannot be
used at all (printed as a problem on stdout).

Each sub-command is one `_<name>` function fed by its own argparse sub-parser. Any other bad input (wrong
options, a missing path, a source file its reader cannot parse) ends in one message on stderr and exit status 2
(detlab.errors), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import OmegaConfBaseException

from detlab.config import CONF_DIR
from detlab.data.coco.checker import CheckedCoco, check_coco, check_coco_dict, empty_problem
from detlab.errors import ConfigError, DataError, user_errors
from detlab.files import write_text_atomically

if TYPE_CHECKING:  # the readers and the image check bring torch: imported where a command uses them, after --help
    from detlab.data.coco.reader import CocoFiles
    from detlab.data.formats.check import SplitReport
    from detlab.data.formats.common import ConvertedDataset

MAX_PRINTED = 20  # problem lines printed per split; the count says how many there are
DATA_CONF = Path(CONF_DIR) / "data"

# Which options each format takes beyond the source path (the others are rejected, not silently ignored).
FORMAT_OPTIONS = {
    "voc": ("split", "ann_dir", "img_dir", "classes"),
    "yolo": ("names", "labels"),
    "udacity": ("images", "classes"),
    "mot": ("min_visibility", "static_person"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `detlab-data`; returns the exit status (a user's error exits 2 itself, detlab.errors)."""
    args = _parser().parse_args(argv)
    with user_errors(f"detlab-data {args.command}"):
        return args.run(args)


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
    _add_format_options(convert)
    convert.set_defaults(run=_convert)

    check = commands.add_parser("check", help="what a dataset holds and what is wrong with it")
    check.add_argument(
        "target",
        help="a COCO json; a source folder or file with --format; or a data config name (voc, coco, ...) or "
        "a path to a data config .yaml",
    )
    check.add_argument("overrides", nargs="*", help="config overrides, e.g. data.source.shared.root=VOC2007")
    check.add_argument("--format", choices=sorted(FORMAT_OPTIONS), help="read target as this format")
    check.add_argument("--image-check", action="store_true", help="open and decode every image")
    _add_format_options(check)
    check.set_defaults(run=_check)
    return parser


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", help="voc: a devkit split (ImageSets/Main/<split>.txt) or a list file (.txt)")
    parser.add_argument("--ann-dir", help="voc: the xml folder under the root (default Annotations)")
    parser.add_argument(
        "--img-dir", help="voc: the image folder under the root (default JPEGImages); a COCO json: its image folder"
    )
    parser.add_argument("--classes", help="voc, udacity: the class names in category order, comma-separated")
    parser.add_argument("--names", help="yolo: data.yaml or a names file (one class name a line)")
    parser.add_argument("--labels", help="yolo: the label folder (default: the image folder's 'images' -> 'labels')")
    parser.add_argument("--images", help="udacity: the image folder (default: the folder of the CSV)")
    parser.add_argument("--min-visibility", type=float, help="mot: pedestrians less visible are ignore regions")
    parser.add_argument("--static-person", action="store_true", default=None, help="mot: class 7 is a pedestrian")


def _convert(args: argparse.Namespace) -> int:
    _check_format_options(args, args.format)
    out = Path(args.out)
    if out.is_dir():  # the rename onto it would stop with a bare IsADirectoryError, after the whole conversion
        raise ConfigError(f"--out {out} is a folder; give the path of the COCO .json to write")
    dataset = _read(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(dataset.coco, allow_nan=False))
    print(summary(dataset, f"{args.format} {args.source}", str(out)))
    for kind, lines in (("problems", dataset.problems), ("notes", dataset.notes)):
        if lines:
            print(f"{kind}:")
            _print_lines(lines)
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        reports = _check_reports(args)
    except DataError as err:  # the file as a whole cannot be used (training stops on it the same way): a problem
        print(f"problem: {err}\nchecked: the data cannot be used: 1 problem(s)")
        return 1
    for report in reports:
        print(report.format(MAX_PRINTED))
    problems = sum(len(report.problems) for report in reports)
    notes = sum(len(report.notes) for report in reports)
    images = "; every image opened" if args.image_check else " (add --image-check to open every image)"
    print(f"checked {len(reports)} split(s): {problems} problem(s), {notes} note(s){images}")
    return 1 if problems else 0


def _check_reports(args: argparse.Namespace) -> list[SplitReport]:
    """One report per split: of a source read with --format, of a COCO json, or of a data config's splits."""
    if args.format is not None:
        _check_format_options(args, args.format, overrides=args.overrides)
        _check_exists(args.target)
        args.source = args.target
        dataset = _read(args)
        name = f"{args.format} {args.target}"
        checked = check_coco_dict(dataset.coco, name, dataset.img_dir)
        return [_report(name, checked, dataset.img_dir, args.image_check, dataset.problems, dataset.notes)]
    if args.target.endswith(".json"):
        _check_format_options(args, "coco", overrides=args.overrides)
        if args.image_check and args.img_dir is None:
            raise ConfigError("--image-check of a COCO json needs --img-dir (the folder its file_names are in)")
        _check_exists(args.target)
        if args.img_dir is not None:  # else every image is a problem "not found" (status 1) where training says one line
            _check_exists(args.img_dir, "--img-dir ")
        return [_report(args.target, check_coco(args.target, args.img_dir), args.img_dir, args.image_check)]
    _check_format_options(args, "config")
    return [
        _report(f"{args.target}: {split} split ({files.ann_file})", check_coco(files.ann_file, files.img_dir),
                files.img_dir, args.image_check, files.problems, files.notes)
        for split, files in _config_splits(args.target, args.overrides).items()
    ]


def _check_exists(target: str, option: str = "") -> None:
    """A path that is not there was mistyped (a user's error, status 2), not a finding about the data (status 1)."""
    if not Path(target).exists():
        raise ConfigError(f"{option}{target}: no such file or folder")


def _report(
    name: str,
    checked: CheckedCoco,
    img_dir: str | None,
    image_check: bool,
    problems: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> SplitReport:
    """The COCO reader's findings after the source's own lines, and those of opening every image."""
    from detlab.data.formats.check import split_report

    empty = empty_problem(name, checked.data)  # training stops on it (DetectionDataModule)
    report = split_report(name, checked.data, [*problems, *checked.problems, *([empty] if empty else [])],
                          [*notes, *checked.notes])
    if image_check and img_dir is not None:
        _add_image_check(report, checked.data, img_dir, name)
    return report


def _add_image_check(report: SplitReport, coco: dict, img_dir: str, name: str) -> None:
    from detlab.data.formats.check import check_images

    problems, notes = check_images(coco, img_dir, name)
    report.problems += problems
    report.notes += notes


def _config_splits(target: str, overrides: list[str]) -> dict[str, CocoFiles]:
    """The COCO files of a data config's splits (a source converts or generates them first)."""
    from detlab.data.coco.reader import CocoFiles

    path = Path(target)
    conf_dir, name = (path.resolve().parent, path.stem) if path.suffix in (".yaml", ".yml") else (DATA_CONF, target)
    if not (conf_dir / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in DATA_CONF.glob("*.yaml"))
        raise ConfigError(f"{target!r} is not a .json, a data config ({', '.join(known)}) or a path to a .yaml; "
                         "use --format for a source folder")
    # The keys are written as in detlab-train (data.source...), or relative to the data config.
    relative = [o[len("data."):] if o.startswith("data.") else o for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(name, overrides=relative)
        if "source" in cfg:
            return instantiate(cfg.source).splits()
        return {split: CocoFiles(ann_file=cfg[split].ann_file, img_dir=cfg[split].img_dir) for split in ("train", "val")}
    except (HydraException, OmegaConfBaseException) as err:
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__  # what the source's constructor or splits() said
        if isinstance(err, (HydraException, OmegaConfBaseException)):  # a wrong or missing key of the data config
            raise ConfigError(str(err)) from err
        raise err from None


def _check_format_options(args: argparse.Namespace, target: str, overrides: Sequence[str] = ()) -> None:
    """Reject options that do not apply to what is read (target: a format, "coco" or "config")."""
    allowed = {"coco": ("img_dir",), "config": ()}[target] if target not in FORMAT_OPTIONS else FORMAT_OPTIONS[target]
    given = [key for key in dict.fromkeys(k for keys in FORMAT_OPTIONS.values() for k in keys)
             if getattr(args, key) is not None]
    wrong = [key for key in given if key not in allowed]
    if wrong:
        what = f"--format {target}" if target in FORMAT_OPTIONS else ("a COCO json" if target == "coco" else
                                                                      "a data config (use overrides)")
        raise ConfigError(f"--{wrong[0].replace('_', '-')} does not apply to {what}")
    if overrides:
        raise ConfigError(f"overrides ({' '.join(overrides)}) apply to a data config only, not to {args.target}")


def _classes(args: argparse.Namespace) -> list[str] | None:
    return None if args.classes is None else [name.strip() for name in args.classes.split(",")]


def _read(args: argparse.Namespace) -> ConvertedDataset:
    dataset = _read_format(args)
    dataset.check_not_empty(f"{args.format} {args.source}")
    return dataset


def _read_format(args: argparse.Namespace) -> ConvertedDataset:
    from detlab.data.formats.source import READERS

    read = READERS[args.format]
    if args.format == "voc":
        ann_dir, img_dir = args.ann_dir or "Annotations", args.img_dir or "JPEGImages"
        return read(args.source, args.split, ann_dir=ann_dir, img_dir=img_dir, class_names=_classes(args))
    if args.format == "yolo":
        if args.names is None:
            raise ConfigError("--format yolo needs --names (a data.yaml or a names file)")
        return read(args.source, args.names, args.labels)
    if args.format == "udacity":
        return read(args.source, args.images, _classes(args))
    return read(args.source, args.min_visibility or 0.0, bool(args.static_person))


def summary(dataset: ConvertedDataset, source: str, out: str) -> str:
    """One paragraph: images, objects (crowd/ignore regions among them), classes with counts, problems, notes."""
    coco = dataset.coco
    annotations = coco["annotations"]
    per_class = Counter(a["category_id"] for a in annotations if not a["iscrowd"] and not a.get("ignore", 0))
    classes = ", ".join(f"{c['name']} {per_class[c['id']]}" for c in coco["categories"])
    crowd = sum(1 for a in annotations if a["iscrowd"] or a.get("ignore", 0))
    return (
        f"Converted {source} -> {out}: {len(coco['images'])} images, {len(annotations)} objects ({crowd} of them "
        f"crowd/ignore regions: VOC difficult, MOT ignored rows), {len(coco['categories'])} classes ({classes}), "
        f"{len(dataset.problems)} problems (left out), {len(dataset.notes)} notes (repaired). "
        f"Image file names are relative to {dataset.img_dir}."
    )


def _print_lines(lines: list[str]) -> None:
    for line in lines[:MAX_PRINTED]:
        print(f"  {line}")
    if len(lines) > MAX_PRINTED:
        print(f"  ... and {len(lines) - MAX_PRINTED} more")


if __name__ == "__main__":
    sys.exit(main())
