"""Suite-wide settings: W&B never reaches the network, caches live in the test's temp space, few threads; the
real-data tier's one way to find its data: $DETLAB_REAL_DATA, with a clear failure when it is not there; and the
one factory of hand-made batches (`from tests.conftest import make_batch`); the tiny run's overrides and the
runner of the real entry points (`from tests.conftest import TINY, run`); an offline W&B run file's records
(wandb_records); tiny image files (make_image);
a run's LightningModule on a tiny annotation file (detection_module); pycocotools' evaluation of a results file,
the evaluation tests' reference (pycocotools_eval)."""

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor

from detlab.structures import Batch

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
REAL_DATASETS = ("raccoon", "coco128")


# A model and data small enough for seconds on a CPU; the same override list serves every test here.
TINY = [
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.source.num_train_images=12",
    "data.source.num_val_images=6",
    "data.source.image_size=96",
    "model.neck.out_channels=16",
    "model.head.width=16",
    "model.head.depth=1",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "eval.num_log_images=2",
    "speed.batch_size=2",
    "speed.warmup=1",
    "speed.repeats=2",
]


def run(entry: str, *args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a module (`detlab.cli.train`) or an installed console script (`detlab-train`, as the README does)."""
    command = [str(Path(sys.executable).parent / entry)] if entry.startswith("detlab-") else [sys.executable, "-m", entry]
    proc = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{entry} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wandb_records(run_file: Path) -> list:
    """The records (wandb_internal_pb2.Record: the run's name and group, its config, history rows) of an offline W&B
    run file, in order.

    The file is a LevelDB-style log (W&B's own reader ships in its Go core, not in Python): a 7-byte header,
    then 32 KiB blocks of records [crc32 (4), length (2), type (1), data], type 1 whole, 2..4 first/middle/last.
    """
    from wandb.proto import wandb_internal_pb2

    raw, records, pos, pending = run_file.read_bytes(), [], 7, b""
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """make_image(path, width, height): writes a small black RGB image (any suffix PIL can write)."""

    def make(path: Path, width: int, height: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height)).save(path)
        return path

    return make


def make_batch(
    gt_boxes: Tensor | None = None,
    gt_labels: Tensor | None = None,
    gt_valid: Tensor | None = None,
    *,
    images: Tensor | None = None,
    size: int | tuple[int, int] = 64,
    num_images: int | None = None,
    seed: int | None = None,
    **fields: Tensor,
) -> Batch:
    """A Batch as the collate makes it, from the targets a test cares about.

    gt_boxes [B, M, 4] xyxy input pixels (None: no object, M = 1 invalid row); gt_labels [B, M] (default 0);
    gt_valid [B, M] (default all True). Rows that are not valid are zeroed, as the collate pads them.
    images [B, 3, H, W], else zeros of size (H, W) (one int: square), or N(0, 1) drawn from `seed`; B from the
    boxes, the images or num_images. Every image's content fills it (image_sizes = orig_sizes = (H, W)), ids
    0..B-1, scale 1 and offset 0; `fields` replaces any of those (image_sizes, image_ids, orig_sizes, scales,
    offsets).
    """
    num = len(gt_boxes) if gt_boxes is not None else len(images) if images is not None else num_images
    if images is None:
        height, width = (size, size) if isinstance(size, int) else size
        shape = (num, 3, height, width)
        images = torch.zeros(shape) if seed is None else torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if gt_boxes is None:
        gt_boxes, gt_valid = torch.zeros(num, 1, 4), torch.zeros(num, 1, dtype=torch.bool)
    if gt_valid is None:
        gt_valid = torch.ones(gt_boxes.shape[:2], dtype=torch.bool)
    if gt_labels is None:
        gt_labels = torch.zeros(gt_boxes.shape[:2], dtype=torch.int64)
    content = torch.tensor([images.shape[-2:]] * num)
    defaults = {"image_sizes": content, "image_ids": torch.arange(num), "orig_sizes": content,
                "scales": torch.ones(num, 2), "offsets": torch.zeros(num, 2)}
    return Batch(
        images=images,
        gt_boxes=torch.where(gt_valid[..., None], gt_boxes, 0.0),
        gt_labels=torch.where(gt_valid, gt_labels, 0),
        gt_valid=gt_valid,
        **{**defaults, **fields},
    )


def detection_module(tmp_path: Path, overrides: list[str]):
    """The LightningModule of a run composed from overrides, in eval mode, for three classes (category ids 1, 2, 3)
    and an annotation file of one 64 x 96 image without objects (the evaluator reads and checks it; nothing is
    scored); weights drawn from torch's seed 0."""
    import json

    from omegaconf import OmegaConf

    from detlab.config import compose_train
    from detlab.training.module import DetectionModule

    cfg = compose_train(overrides)
    image = {"id": 1, "file_name": "a.png", "width": 96, "height": 64}
    ann = {"images": [image], "annotations": [], "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]}
    (tmp_path / "val.json").write_text(json.dumps(ann))
    torch.manual_seed(0)
    module_cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["model", "loss", "optim", "eval", "data"]), resolve=True)
    return DetectionModule(module_cfg, 3, [1, 2, 3], ["c1", "c2", "c3"], str(tmp_path / "val.json")).eval()


def pytest_configure(config):
    """Each pytest-xdist worker (`make test` runs one per core) gets its share of the cores, at most 2 threads, and
    so does every run a test starts (OMP_NUM_THREADS is inherited): two workers that each spin two OpenMP threads
    on two cores make the suite 2x slower than one process. Set here, not at import: the worker learns how many
    workers there are from xdist after this module is imported."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    threads = max(1, min(2, (os.cpu_count() or 1) // workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated datasets go to one session-wide temp cache, never to ~/.cache of the machine."""
    monkeypatch.setenv("DETLAB_CACHE", str(tmp_path_factory.getbasetemp() / "detlab-cache"))



@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder that holds raccoon/ (VOC xml) and coco128/ (COCO json): ../shared/data beside the project."""
    root = os.environ.get("DETLAB_REAL_DATA")
    if not root:
        pytest.fail("DETLAB_REAL_DATA is not set: point it at the shared data folder (`make test` does when "
                    "../shared/data exists), or leave this tier out with -m 'not realdata'")
    for name in REAL_DATASETS:
        if not (Path(root) / name).is_dir():
            pytest.fail(f"DETLAB_REAL_DATA={root} but {Path(root) / name} does not exist; fix the variable or "
                        "fetch the data (see ../shared/data/README.md)")
    return Path(root)


@pytest.fixture(scope="session")
def tv_retinanet(tmp_path_factory):
    """torchvision's retinanet_resnet50_fpn as it is built for its published COCO weights (frozen BN, P6/P7 from
    P5, 91 classes), at a CPU-sized input (shorter side 304, longer at most 512), in eval mode, with seeded random
    weights: the frozen BN statistics spread, and the heads' last layers scaled so that the box deltas stay
    sensible and the class scores spread across the 0.05 threshold (the threshold, the top-1000 per level, NMS
    and the 300 per image all act). Returns (model, the path of its state dict saved as the hub cache holds it).
    """
    from torchvision.models import resnet50
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = RetinaNet(backbone, num_classes=91, min_size=304, max_size=512)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.head.classification_head.cls_logits.weight.mul_(0.3)
        model.head.classification_head.cls_logits.bias.normal_(-4.0, 1.0)
        model.head.regression_head.bbox_reg.weight.mul_(0.02)
    path = tmp_path_factory.mktemp("torchvision") / "retinanet_resnet50_fpn_coco.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


TV_PHOTOS = {9: "000000000009.jpg", 36: "000000000036.jpg", 49: "000000000049.jpg"}  # landscape and portraits


@pytest.fixture(scope="session")
def tv_retinanet_on_coco128(tv_retinanet, real_data):
    """Three coco128 photographs (640x480, 481x640, 381x500) as RGB arrays {image id: array}, and torchvision's
    own detections of them, run as one batch (`model.eval()(images)`: boxes in original pixels, label = COCO id)."""
    from detlab.data.coco.reader import read_rgb

    photos = {i: read_rgb(real_data / "coco128" / "train2017" / name) for i, name in TV_PHOTOS.items()}
    with torch.no_grad():
        detections = tv_retinanet[0]([torch.from_numpy(p.copy()).permute(2, 0, 1).float().div(255) for p in photos.values()])
    return photos, detections


@pytest.fixture(scope="session")
def canonical():
    """(boxes [N, 4], scores [N], labels [N]) -> the same by decreasing score, equal scores by label, then x1: a
    comparison of two implementations' detections must not depend on the order of tied scores (flat image regions
    and float32 softmaxes tie now and then), which NMS may return either way."""

    def in_canonical_order(boxes, scores, labels):
        order = torch.arange(len(scores))
        for key, descending in ((boxes[:, 0], False), (labels, False), (scores, True)):  # least significant first
            order = order[torch.sort(key[order], descending=descending, stable=True).indices]
        return boxes[order], scores[order], labels[order]

    return in_canonical_order


def pycocotools_eval(ann_file: str | Path, results_file: str | Path):
    """pycocotools' COCOeval of a COCO results file against an annotation file, evaluated, accumulated and
    summarised (its stats, eval["precision"], evalImgs), its printing silenced: the reference every evaluation
    test compares detlab's engines with."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        reference = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference
