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
# add seconds to scoring a file); the run and speed commands import theirs where they start.
from detlab.errors import user_errors
from detlab.evaluation.backends import BACKENDS, DEFAULT_BACKEND
from detlab.evaluation.coco_table import format_table
from detlab.evaluation.results_file import evaluate_results_file


def evaluate_checkpoint(checkpoint: Path, overrides: list[str], backend: str | None = None) -> dict[str, Any]:
    """Rebuild the run from the config saved in the checkpoint (plus overrides) and score its val split."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from detlab.console import quiet_library_noise
    from detlab.module import DetectionModule, check_classes, load_hparams

    quiet_library_noise()  # before the Trainer, which prints one of them
    saved = load_hparams(checkpoint)
    cfg = OmegaConf.merge(OmegaConf.create(saved["cfg"]), OmegaConf.from_dotlist(overrides))
    if backend:
        cfg.eval.backend = backend
    cfg.model.weights = None  # the checkpoint's own weights replace what the run started from (that file may be gone)
    datamodule = instantiate(cfg.data)
    check_classes(saved, checkpoint, list(datamodule.class_names), list(datamodule.category_ids))
    module = DetectionModule.load_from_checkpoint(
        str(checkpoint),
        map_location="cpu",
        cfg=OmegaConf.to_container(cfg, resolve=True),
        val_ann_file=str(datamodule.ann_file("val")),
    )
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return module.last_eval


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="detlab-eval", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="score a checkpoint (or a run directory's final weights) on its val split")
    run.add_argument("path", type=Path)
    run.add_argument("overrides", nargs="*", help="config overrides, e.g. data.val.ann_file=...")
    run.add_argument("--backend", choices=BACKENDS)
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
        if args.command in ("run", "speed"):
            from detlab.inference import checkpoint_of

            checkpoint = checkpoint_of(args.path)
        if args.command == "run":
            result = evaluate_checkpoint(checkpoint, args.overrides, args.backend)
        elif args.command == "speed":
            from detlab.profile.speed import checkpoint_speed, format_speed

            protocol = {"batch_size": args.batch_size, "warmup": args.warmup, "repeats": args.repeats}
            if args.precision:
                protocol["precision"] = args.precision
            result = checkpoint_speed(checkpoint, args.overrides, args.image, args.device, **protocol)
        else:
            result = evaluate_results_file(str(args.ann), str(args.results), backend=args.backend)
    print(format_speed(result) if args.command == "speed" else format_table(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
