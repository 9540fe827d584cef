"""Suite-wide settings: W&B never reaches the network, caches live in the test's temp space, few threads; the
real-data tier's one way to find its data."""

import os
from pathlib import Path

import pytest
import torch

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REAL_DATASETS = ("raccoon", "coco128")


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
