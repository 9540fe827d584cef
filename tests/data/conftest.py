"""The real-data tier's one way to find its data: $DETLAB_REAL_DATA, with a clear failure when it is not there."""

import os
from pathlib import Path

import pytest

REAL_DATASETS = ("raccoon", "coco128")


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
