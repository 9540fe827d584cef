"""Suite-wide settings: W&B never reaches the network, caches live in the test's temp space, few threads."""

import os

import pytest
import torch

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated datasets go to one session-wide temp cache, never to ~/.cache of the machine."""
    monkeypatch.setenv("DETLAB_CACHE", str(tmp_path_factory.getbasetemp() / "detlab-cache"))
