"""What DDP's ranks share outside Lightning's own collectives: one Python object from each rank."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def from_every_rank(local: Any) -> list[Any]:
    """[rank 0's local, rank 1's, ...] under DDP (a collective: every rank must call it), else [local]."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered
