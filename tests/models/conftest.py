"""What the model tests share: a detector built from the configs learns one fixed batch."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from detlab.models.build import DetectorParts
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
