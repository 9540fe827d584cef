"""detlab-predict: run a detector on images and write COCO results (and, if asked, the images with their boxes).

    detlab-predict photos/ --out results.json model=tv_retinanet_r50_fpn model.weights=retinanet_coco.pth
    detlab-predict instances_val2017.json --img-dir val2017 --out results.json --run runs/2026-12-06/10-00-00
    detlab-predict a.jpg b.png --out results.json --run runs/.../checkpoints/weights.ckpt --draw drawn/

IMAGES are image files, folders of them, or one COCO json (with --img-dir): then the results carry the file's
image ids and can be scored with `detlab-eval results --ann <json> --results <out>`. For plain files the image
id is the file's index in the sorted list and each result also names its `file_name`. Category ids come from the
model's label space: the run's (--run), a preset's data.category_ids, or the COCO json's categories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from detlab.errors import CheckpointError, ConfigError, DataError, check_not_an_input, check_writable, user_errors
from detlab.files import write_text_atomically

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def predict(
    inputs: list[Path],
    out: Path,
    overrides: list[str],
    run: Path | None = None,
    img_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    draw: Path | None = None,
    draw_thresh: float = 0.3,
) -> list[dict[str, Any]]:
    """Detections of every image as COCO results, written to out; see the module's docstring."""
    from detlab.data.coco.reader import check_record_size, read_image_file  # torch and the model code load here
    from detlab.inference import Predictor, resolve_device

    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    if not 0 <= draw_thresh <= 1:
        raise ConfigError(f"--draw-thresh={draw_thresh} must be a score in [0, 1]")
    target = resolve_device(device)  # before the model loads
    _check_outputs(out, draw)  # before any image: they were first written after the last batch
    images, coco_categories, records = _image_list(inputs, img_dir)
    read = [path for path, _ in images] + ([inputs[0]] if coco_categories is not None else [])
    check_not_an_input([out], "--out", read)
    if draw is not None:  # a PNG drawn into its own folder replaced the photo
        check_not_an_input([draw / f"{path.stem}.png" for path, _ in images], "--draw", read)
    if coco_categories is None:  # plain files: the results name each by its file name (a COCO json's, by its id)
        _check_distinct([path for path, _ in images], lambda path: path.name, "results' file_name")
    if draw is not None:  # the drawings, of plain files and of a COCO json's (s1/000001.jpg, s2/000001.jpg), by stem
        _check_distinct([path for path, _ in images], lambda path: path.stem, f"drawing in {draw}")
    if run is not None:
        predictor, _ = Predictor.from_run(run, overrides)
        if coco_categories is not None:
            _check_same_categories(run, predictor.category_ids, predictor.class_names, inputs[0], coco_categories)
    else:
        from hydra.errors import HydraException

        from detlab.config import compose_train, validate

        try:
            cfg = compose_train(overrides)
        except HydraException as err:  # a misspelt key or option: Hydra's own message names it
            raise ConfigError(f"config overrides {overrides}: {err}") from None
        validate(cfg)
        category_ids = cfg.data.get("category_ids") or (sorted(coco_categories) if coco_categories else None)
        if not category_ids:
            raise ConfigError(
                "detlab-predict needs the model's label space: --run DIR (a trained run), a preset that sets "
                "data.category_ids (model=tv_retinanet_r50_fpn, ...), or a COCO json as IMAGES"
            )
        names = [coco_categories.get(c, f"unused_{c}") for c in category_ids] if coco_categories else None
        predictor = Predictor.from_config(cfg, list(category_ids), names)
    predictor.to(target)

    results: list[dict[str, Any]] = []
    outside = 0  # detections of label-space categories that the COCO json does not have
    # Batches of files: each image is read, transformed and collated into one padded batch, as in evaluation.
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = [read_image_file(path) for path, _ in chunk]
        ids = [image_id for _, image_id in chunk]
        for (path, image_id), rgb in zip(chunk, pixels):  # a COCO json's: its boxes are in the record's size
            if image_id in records:
                check_record_size(rgb, records[image_id], f"{path} (image id={image_id} of {inputs[0]})")
        detections = predictor(pixels, ids)
        found = predictor.coco_results(detections, ids)
        if coco_categories is not None:  # a results file for that json: it can only score the json's categories
            outside += sum(r["category_id"] not in coco_categories for r in found)
            found = [r for r in found if r["category_id"] in coco_categories]
        else:
            names = {image_id: path.name for path, image_id in chunk}
            for record in found:
                record["file_name"] = names[record["image_id"]]
        results += found
        if draw is not None:
            _draw(draw, chunk, pixels, detections, predictor.class_names, draw_thresh)
    if outside:
        print(f"detlab-predict: {outside} detections of categories that {inputs[0]} does not have are left out "
              "(the model's label space is wider than the file's)", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(results))
    return results


def _image_list(
    inputs: list[Path], img_dir: Path | None
) -> tuple[list[tuple[Path, int]], dict[int, str] | None, dict[int, dict]]:
    """[(image path, image id)] and, for a COCO json, its categories {id: name} and image records {id: record}."""
    if len(inputs) == 1 and inputs[0].suffix == ".json":
        return _coco_images(inputs[0], img_dir)
    if img_dir is not None:
        raise ConfigError("--img-dir goes with one COCO json as IMAGES; give image files or folders without it")
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such image file or folder")
    # one file named twice (a folder and a file in it): one image id, not two with the same detections
    files = list({path.resolve(): path for path in reversed(files)}.values())
    return [(path, i) for i, path in enumerate(sorted(files))], None, {}


def _check_outputs(out: Path, draw: Path | None) -> None:
    """A ConfigError (StorageError where the OS refuses) unless the results file and the drawings' folder can be
    written: --out not a folder, and no file where either needs a folder."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the results file's path ({out / 'results.json'})")
    for option, folder in (("--out", out.parent), ("--draw", draw)):
        if folder is None:
            continue
        existing = next(p for p in (folder, *folder.parents) if p.exists())  # "." or "/" at the latest
        if not existing.is_dir():
            raise ConfigError(f"{option} {out if option == '--out' else draw}: {existing} is a file, not a folder")
        check_writable(folder, option, f"give {option} a path in a folder you can write")


def _check_distinct(paths: list[Path], name_of, what: str) -> None:
    """A DataError naming two paths that `name_of` gives the same name (two folders' 000001.jpg; a.jpg and a.png
    drawn as a.png): one would stand for both, or overwrite the other."""
    first: dict[str, Path] = {}
    for path in paths:
        other = first.setdefault(name_of(path), path)
        if other != path:
            raise DataError(f"{other} and {path} would have the same {what} ({name_of(path)!r}); give them "
                            "one at a time (a --out and --draw each), or rename one")


def _check_same_categories(run: Path, category_ids: list[int], class_names: list[str], ann_file: Path,
                           coco_categories: dict[int, str]) -> None:
    """A CheckpointError unless the run's label space means the COCO json's categories: results carry the run's
    category ids, which the json reads by its own names (a COCO run's person, id 1, was written and scored as a
    VOC json's id 1). The json may have fewer or more categories; an id they share must have one name, and one
    id at least must be shared (else every detection was left out). The name unused_<id> is a label space's
    place for an id its training file did not have (torchvision's 91-way labels): any name fits it."""
    trained = dict(zip(category_ids, class_names))
    shared = [c for c in trained if c in coco_categories]
    differ = [f"id {c}: {trained[c]!r} in the run, {coco_categories[c]!r} in the json" for c in shared
              if trained[c] not in (coco_categories[c], f"unused_{c}")]
    if differ or not shared:
        what = (f"{len(differ)} of the category ids they share name other classes ({'; '.join(differ[:3])}"
                + (", ..." if len(differ) > 3 else "") + ")") if differ else "they share no category id"
        raise CheckpointError(
            f"{ann_file}: its categories (field 'categories') are not the ones {run} was trained on: {what}. "
            "The results would carry the run's category ids, which the json reads as its own classes; use a run "
            "trained on the json's classes"
        )


def _coco_images(ann_file: Path, img_dir: Path | None) -> tuple[list[tuple[Path, int]], dict[int, str], dict[int, dict]]:
    if img_dir is None:
        raise ConfigError(f"{ann_file} is a COCO json: give --img-dir, the folder its file_names are relative to")
    if not ann_file.is_file():
        raise DataError(f"{ann_file}: no such file")
    try:
        data = json.loads(ann_file.read_text())
        images = [(img_dir / str(img["file_name"]), int(img["id"])) for img in data["images"]]
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        records = {int(img["id"]): img for img in data["images"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{ann_file}: not a COCO json with images (id, file_name) ({type(err).__name__}: {err})") from None
    # before the model loads, as for plain files: one missing at the end stopped the run after every other image
    missing = [(path, image_id) for path, image_id in images if not path.is_file()]
    if missing:
        path, image_id = missing[0]
        raise DataError(f"{path}: no such image file (image id={image_id} of {ann_file}, field 'file_name'; "
                        f"{len(missing)} of its {len(images)} images are missing under --img-dir {img_dir})")
    return images, categories, records


def _draw(folder: Path, chunk, pixels, detections, class_names: list[str], thresh: float) -> None:
    import torch
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    folder.mkdir(parents=True, exist_ok=True)
    for (path, _), image, det in zip(chunk, pixels, detections):
        keep = det.scores >= thresh
        labels = [f"{class_names[int(l)]} {float(s):.2f}" for l, s in zip(det.labels[keep], det.scores[keep])]
        drawn = draw_bounding_boxes(torch.from_numpy(image.copy()).permute(2, 0, 1), det.boxes[keep].cpu(), labels, width=2)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(folder / f"{path.stem}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="detlab-predict", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    parser.add_argument("items", nargs="+", metavar="IMAGES|OVERRIDE",
                        help="image files, folders or one COCO json; config overrides (key=value) after them")
    parser.add_argument("--out", type=Path, required=True, help="the COCO results json to write")
    parser.add_argument("--run", type=Path, help="a trained run's directory or checkpoint, instead of a config")
    parser.add_argument("--img-dir", type=Path, help="the image folder of a COCO json")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--draw", type=Path, help="write each image with its boxes (score >= --draw-thresh) here")
    parser.add_argument("--draw-thresh", type=float, default=0.3)
    args = parser.parse_intermixed_args(argv)  # images, options and overrides in any order
    overrides = [item for item in args.items if "=" in item]
    inputs = [Path(item) for item in args.items if "=" not in item]
    if not inputs:
        parser.error("no IMAGES given (image files, folders or a COCO json)")
    with user_errors("detlab-predict"):
        results = predict(inputs, args.out, overrides, args.run, args.img_dir, args.device, args.batch_size,
                          args.draw, args.draw_thresh)
    print(f"{len(results)} detections written to {args.out}")


if __name__ == "__main__":
    main()
