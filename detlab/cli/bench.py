"""make bench: detlab against torchvision's own implementations of the same algorithm, timed in one run (the rows
and what each measures: detlab.profile.bench).

    python -m detlab.cli.bench [--device cuda] [--batch-sizes 2 8] [--image-size 512] [--repeats 10] [--json PATH]
    python -m detlab.cli.bench --quick             # a look in a few minutes on a 2-core CPU
    python -m detlab.cli.bench --table PATH        # the README's markdown table of a --json file
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detlab.errors import ConfigError, user_errors
from detlab.inference import resolve_device
from detlab.profile import bench


def at_least(least: int):
    """An argparse type: an integer >= least (a count of 0 repeats or images would fail minutes later, deep in
    numpy or torch)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
        return value
    parse.__name__ = f"integer >= {least}"
    return parse


def read_rows(path: Path) -> list[dict]:
    """The rows of a --json file, or a ConfigError naming it."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--table {path}: cannot read it as JSON ({err})") from None
    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) and "ratio" in r for r in rows)):
        raise ConfigError(f"--table {path}: not the rows a --json run of this command writes")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m detlab.cli.bench", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1")
    parser.add_argument("--quick", action="store_true", help=f"fewer batches and repeats: {bench.QUICK}")
    parser.add_argument("--batch-sizes", type=at_least(1), nargs="+", default=[2, 8],
                        help="the parts' batches (the forward row at the first only: the same convolutions)")
    parser.add_argument("--image-size", type=at_least(1), default=512, help="the parts' square input")
    parser.add_argument("--warmup", type=at_least(0), default=2)
    parser.add_argument("--repeats", type=at_least(1), default=10)
    parser.add_argument("--eval-images", type=at_least(1), default=500)
    parser.add_argument("--eval-repeats", type=at_least(1), default=3)
    parser.add_argument("--presets", nargs="*", default=list(bench.PRESETS), choices=list(bench.PRESETS),
                        help="whole-step rows for these presets (none: no whole-step rows)")
    parser.add_argument("--step-batch-sizes", type=at_least(1), nargs="+", default=[2, 8])
    parser.add_argument("--step-image-size", type=at_least(1), default=320, help="the presets' shorter side")
    parser.add_argument("--step-max-size", type=at_least(1), default=512, help="the presets' longer side at most")
    parser.add_argument("--step-warmup", type=at_least(0), default=1)
    parser.add_argument("--step-repeats", type=at_least(1), default=5)
    parser.add_argument("--loader-batches", type=at_least(0), default=60, help="the loader row's timed batches (0: no row)")
    parser.add_argument("--loader-repeats", type=at_least(1), default=5, help="the loader row's timed training steps")
    parser.add_argument("--loader-overrides", nargs="*", default=[],
                        help="the loader row's run (none: the default run, data=shapes)")
    parser.add_argument("--json", type=Path, help="write every row with its conditions here")
    parser.add_argument("--table", type=Path, help="only print the markdown table of this --json file")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**bench.QUICK)
        args = parser.parse_args(argv)
    if args.table:
        rows = read_rows(args.table)
        print(bench.table(rows))
        return rows
    device = resolve_device(args.device)
    rows = []
    for i, batch_size in enumerate(args.batch_sizes):
        rows += bench.part_rows(device, batch_size, args.image_size, args.warmup, args.repeats, forward=i == 0)
    rows += bench.coco_eval_rows(args.eval_images, args.eval_repeats)
    if args.loader_batches:
        rows.append(bench.loader_row(args.loader_overrides, args.loader_batches, args.loader_repeats, device))
    bench.save(rows, args.json)
    for row in bench.step_rows(device, args.presets, args.step_batch_sizes, args.step_image_size, args.step_max_size,
                         args.step_warmup, args.step_repeats):
        rows.append(row)
        bench.save(rows, args.json)  # a CPU run takes many minutes: what it measured survives an interruption
        print(f"{row['what']}, {row['model']}, batch {row['batch']}: detlab {row['detlab_ms']:.0f} ms, torchvision "
              f"{row['reference_ms']:.0f} ms", flush=True)
    print(bench.table(rows))
    print("reference: torchvision (forward, loss, postprocess, train step, inference), pycocotools (COCO eval), the "
          "default run's training step (data loading: how many times the loader is ahead)")
    if args.json:
        print(f"rows: {args.json}")
    return rows


if __name__ == "__main__":
    with user_errors("python -m detlab.cli.bench"):
        main()
