"""detlab-eval: score a trained detector, or any COCO results file, with detlab's COCO evaluator.

    detlab-eval run runs/2026-11-25/10-00-00                       # its final weights, its own val split
    detlab-eval run runs/.../checkpoints/last.ckpt data.val.ann_file=... data.val.img_dir=...
    detlab-eval results --ann instances_val2017.json --results detections.json [--backend pycocotools]
    detlab-eval speed runs/2026-11-25/10-00-00 [--image img.jpg] [--batch-size 8] [--device cuda] [data.image_size=512]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Only what `detlab-eval results` needs is imported here (no torch, Lightning, Hydra or model code: it would
# add seconds to scoring a file and to --help); the run and speed commands import theirs where they start.
from detlab.errors import ConfigError, check_not_an_input, check_writable, user_errors, writing
from detlab.evaluation.backends import BACKENDS, DEFAULT_BACKEND
from detlab.evaluation.coco_table import format_table
from detlab.evaluation.results_file import evaluate_results_file
from detlab.files import write_text_atomically


def evaluate_run(path: Path, overrides: list[str], backend: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Score a run directory's final weights (or a checkpoint) on its val split: the detector rebuilt from the saved
    config (plus overrides) by Predictor.from_run, every val batch through Predictor.predict_batch, as validation."""
    from hydra.utils import instantiate
    from tqdm import tqdm

    from detlab.evaluation.coco_evaluator import CocoEvaluator
    from detlab.inference import Predictor
    from detlab.training.checkpoint import check_classes

    predictor, cfg = Predictor.from_run(path, overrides)
    datamodule = instantiate(cfg.data)
    # from_run loads the run's weights through model.weights: that is the checkpoint's path
    check_classes(cfg.model.weights, predictor.class_names, predictor.category_ids, datamodule.class_names,
                  datamodule.category_ids)
    evaluator = CocoEvaluator(datamodule.ann_file("val"), predictor.category_ids, predictor.class_names,
                              backend=backend or cfg.eval.backend)
    predictor.to(device)
    for batch in tqdm(datamodule.val_dataloader(), desc="detlab-eval", unit="batch"):
        evaluator.update(predictor.predict_batch(predictor.on_device(batch)), batch.image_ids)
    return evaluator.compute()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="detlab-eval", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="score a checkpoint (or a run directory's final weights) on its val split")
    run.add_argument("path", type=Path)
    run.add_argument("overrides", nargs="*", help="config overrides, e.g. data.val.ann_file=...")
    run.add_argument("--backend", choices=BACKENDS)
    run.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1")
    run.add_argument("--output", type=Path, help="write the result as JSON here")
    res = commands.add_parser("results", help="score a COCO results json against a COCO annotation file")
    res.add_argument("--ann", type=Path, required=True)
    res.add_argument("--results", type=Path, required=True)
    res.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    res.add_argument("--output", type=Path, help="write the result as JSON here")
    speed = commands.add_parser("speed", help="time a checkpoint's detector under the speed protocol")
    speed.add_argument("path", type=Path)
    speed.add_argument("overrides", nargs="*", help="config overrides, e.g. data.image_size=512")
    speed.add_argument("--image", type=Path, help="an image file to pre-process (default: a synthetic one)")
    speed.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1")
    speed.add_argument("--batch-size", type=int, default=8, help="images per call for the throughput")
    speed.add_argument("--warmup", type=int, default=10)
    speed.add_argument("--repeats", type=int, default=50)
    speed.add_argument("--precision", help="32-true, 16-mixed or bf16-mixed (default: the run's)")
    speed.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    with user_errors("detlab-eval"):
        if args.output:  # before the work, which can take minutes, not after it
            check_output(args.output)
            check_not_an_input([args.output], "--output", [path for path in _inputs(args) if path])
        if args.command == "run":
            result = evaluate_run(args.path, args.overrides, args.backend, args.device)
        elif args.command == "speed":
            from detlab.profile.speed import format_speed, run_speed

            protocol = {"batch_size": args.batch_size, "warmup": args.warmup, "repeats": args.repeats}
            if args.precision:
                protocol["precision"] = args.precision
            result = run_speed(args.path, args.overrides, args.image, args.device, **protocol)
        else:
            result = evaluate_results_file(str(args.ann), str(args.results), backend=args.backend)
    print(format_speed(result) if args.command == "speed" else format_table(result))
    if args.output:
        with user_errors("detlab-eval"), writing(args.output, "--output", OUTPUT_FIX):
            write_text_atomically(args.output, json.dumps(result, indent=2))


def _inputs(args: argparse.Namespace) -> list[Path | None]:
    """The files a command reads that --output could name: a run directory is read as its checkpoint file."""
    if args.command == "results":
        return [args.ann, args.results]
    from detlab.inference import checkpoint_of  # run and speed load the model code next anyway

    return [checkpoint_of(args.path), getattr(args, "image", None)]


OUTPUT_FIX = "give --output a file path in a folder you can write to"


def check_output(path: Path) -> None:
    """--output's folder made and writable, and the path not a folder: else one message, before any work."""
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; {OUTPUT_FIX} (e.g. {path / 'eval.json'})")
    check_writable(path.parent, "--output", OUTPUT_FIX)


if __name__ == "__main__":
    main()
