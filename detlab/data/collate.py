"""Collate transformed samples into one padded `Batch` (see detlab.structures for the fields)."""

from __future__ import annotations

import math

import torch
from torch.nn.utils.rnn import pad_sequence

from detlab.data.transforms import Sample
from detlab.errors import ConfigError
from detlab.structures import Batch


def collate(samples: list[Sample], size_divisor: int = 32) -> Batch:
    """Pad images [3, h_i, w_i] bottom/right with zeros to [B, 3, H, W], H and W multiples of size_divisor
    (1 = no rounding), and targets to M = max(1, most objects in an image) with a `gt_valid` mask.
    """
    if not samples:
        raise ValueError("collate got an empty list of samples")
    if not isinstance(size_divisor, int) or size_divisor < 1:
        raise ConfigError(f"data.size_divisor={size_divisor!r} must be a positive integer (1 disables rounding)")
    heights = [s.image.shape[1] for s in samples]
    widths = [s.image.shape[2] for s in samples]
    height = math.ceil(max(heights) / size_divisor) * size_divisor
    width = math.ceil(max(widths) / size_divisor) * size_divisor
    images = samples[0].image.new_zeros((len(samples), 3, height, width))
    # Images differ in size, so each is copied once into its corner of the batch; this copy is the padding.
    for image, sample in zip(images, samples):
        image[:, : sample.image.shape[1], : sample.image.shape[2]] = sample.image

    counts = torch.tensor([len(s.labels) for s in samples])
    most = max(1, int(counts.max()))
    # A zero row of length M is appended and dropped again, so that M >= 1 even when no image has objects.
    gt_boxes = pad_sequence([s.boxes.float() for s in samples] + [torch.zeros(most, 4)], batch_first=True)[:-1]
    labels = [s.labels.long() for s in samples] + [torch.zeros(most, dtype=torch.long)]
    gt_labels = pad_sequence(labels, batch_first=True)[:-1]
    return Batch(
        images=images,
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        gt_valid=torch.arange(most)[None, :] < counts[:, None],
        image_sizes=torch.tensor([s.size for s in samples], dtype=torch.long),
        image_ids=torch.tensor([s.image_id for s in samples], dtype=torch.long),
        orig_sizes=torch.tensor([s.orig_size for s in samples], dtype=torch.long),
        scales=torch.tensor([s.scale for s in samples], dtype=torch.float32),
        offsets=torch.tensor([s.offset for s in samples], dtype=torch.float32),
    )
