"""What the model tests share: a detector built from the configs learns one fixed batch; torchvision weights
files written where its loader looks, so that loading by name runs with no network; YOLO's tiny grid of priors
and darknet's decoding (test_yolo, test_box_coder and test_assigners import them from tests.models.conftest)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from detlab.models.build import DetectorParts
from detlab.models.priors import YoloAnchorGenerator
from detlab.structures import Batch, Detections


def _fits_fixed_batch(
    parts: DetectorParts,
    batch: Batch,
    num_classes: int,
    steps: int = 6,
    check: Callable[[object, object, dict], None] | None = None,
) -> list[Detections]:
    """Adam (lr 1e-3) on the trainable parameters of parts.model, `steps` steps on batch, through the four objects
    as the LightningModule wires them: every total finite, the last below 0.8 of the first. Then the
    post-processing in evaluation: one Detections per image, labels 0..K-1 whatever the output layout, at most
    max_per_image each. check(outputs, priors, losses) runs after every training forward."""
    model, assigner, criterion, postprocess = parts
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(steps):
        outputs, priors = model(batch.images, targets=batch)
        losses = criterion(outputs, priors, assigner(outputs, priors, batch), batch)
        if check is not None:
            check(outputs, priors, losses)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert all(math.isfinite(t) for t in totals) and totals[-1] < 0.8 * totals[0], totals
    model.eval()
    with torch.no_grad():
        detections = postprocess(*model(batch.images), batch)
    assert len(detections) == len(batch)
    assert all(len(d.boxes) <= postprocess.max_per_image and d.boxes.shape[1:] == (4,) for d in detections)
    assert all(((d.labels >= 0) & (d.labels < num_classes)).all() for d in detections)
    return detections


@pytest.fixture
def fits_fixed_batch():
    """The function above: fits_fixed_batch(parts, batch, num_classes, steps=6, check=None) -> detections."""
    return _fits_fixed_batch


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """save(state, *weights_entries): `state` written as each entry's file in <TORCH_HOME>/hub/checkpoints,
    where torchvision's weights API looks before downloading; TORCH_HOME is this test's tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)

    def save(state: dict, *entries) -> None:
        for entry in entries:
            torch.save(state, checkpoints / entry.url.rsplit("/", 1)[-1])

    return save


@pytest.fixture
def random_bn_state():
    """state(model) -> its state dict with random BatchNorm statistics, so that a buffer left unloaded shows."""

    def state(model: torch.nn.Module) -> dict:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
        return model.state_dict()

    return state


@pytest.fixture
def assert_loaded():
    """check(ours, expected, frozen_bn): `ours` (a backbone's state dict) holds every entry of `expected` (a
    torchvision state dict) but its classifier, equal; FrozenBatchNorm2d keeps no `num_batches_tracked`."""

    def check(ours: dict, expected: dict, frozen_bn: bool, classifier: str) -> None:
        wanted = {k for k in expected if not k.startswith(classifier)}
        if frozen_bn:
            wanted = {k for k in wanted if not k.endswith("num_batches_tracked")}
        assert set(ours) == wanted
        for key in wanted:
            assert torch.equal(ours[key], expected[key]), key

    return check


# A 64 px input with anchors given for it: levels of 8x8, 4x4 and 2x2 cells at strides 8, 16, 32.
ANCHORS = [[[4, 4], [8, 4], [4, 8]], [[12, 12], [20, 10], [10, 20]], [[32, 32], [48, 24], [24, 48]]]
STRIDES = (8, 16, 32)
GRIDS = ((8, 8), (4, 4), (2, 2))
LEVEL_STARTS = (0, 192, 240)  # 8 * 8 * 3, then + 4 * 4 * 3
NUM_PRIORS = 252


def tiny_priors():
    return YoloAnchorGenerator(ANCHORS, image_size=64, anchor_image_size=64)(GRIDS, STRIDES, "cpu")


def cxcywh(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def darknet_decode(box_reg: torch.Tensor, level: int, y: int, x: int, k: int) -> torch.Tensor:
    """darknet's get_yolo_box for one prediction: (sigmoid(t) + cell) * stride, anchor * exp(t)."""
    stride, (pw, ph) = STRIDES[level], ANCHORS[level][k]
    bx = (torch.sigmoid(box_reg[0]) + x) * stride
    by = (torch.sigmoid(box_reg[1]) + y) * stride
    bw, bh = pw * torch.exp(box_reg[2]), ph * torch.exp(box_reg[3])
    return torch.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2])


def prior_cells():
    """(level, y, x, k) of every prior, in the order the heads flatten their outputs."""
    return [
        (level, y, x, k)
        for level, (h, w) in enumerate(GRIDS)
        for y in range(h)
        for x in range(w)
        for k in range(len(ANCHORS[level]))
    ]


def prior_index(level, y, x, k):
    return LEVEL_STARTS[level] + (y * GRIDS[level][1] + x) * 3 + k
