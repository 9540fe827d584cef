"""Provenance: the code, software, device, data and config behind a result, so that two results can be told
apart by what made them. Written to results.json["provenance"] and the W&B run's config; detlab-report warns
when the runs of one table differ in code or data.

    {"detlab": "0.1.0", "git_sha": "629355d...", "git_dirty": false, "python": "3.11.9", "device": "...",
     "cpu": "...", "cpu_capability": "AVX2", "torch": "2.14.1", "cuda": "12.8", "cudnn": ..., "threads": 2,
     "allocator": {"MALLOC_TRIM_THRESHOLD_": "..."},
     "data_fingerprint": "sha256 hex", "config_hash": "sha256 hex"}

git_sha and git_dirty are None when detlab does not run from a git checkout of itself (installed from a wheel).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import detlab
from detlab.profile.speed import cpu_name, environment

PACKAGE_DIR = Path(detlab.__file__).resolve().parent


def provenance(config: Mapping[str, Any], data_files: Mapping[str, tuple[str, str]], device: torch.device) -> dict:
    """The provenance record of a run.

    config:     the resolved config (plain containers).
    data_files: split -> (annotation file, image folder) that the split reads.
    device:     where the run computes.
    """
    return {
        "detlab": detlab.__version__,
        **git_state(),
        "python": platform.python_version(),
        **environment(device),
        "cpu": cpu_name(),
        # The vector instructions torch's CPU kernels were chosen for (DEFAULT, AVX2, AVX512...; the environment
        # variable ATEN_CPU_CAPABILITY lowers it): with the thread count, what makes two machines' float sums differ.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "data_fingerprint": data_fingerprint(data_files),
        "config_hash": config_hash(config),
    }


def git_state(package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """{"git_sha": HEAD's sha, "git_dirty": tracked files changed} of the checkout detlab runs from.

    Both None unless package_dir is the `detlab/` folder at the top of a git work tree: an installed wheel can sit
    inside some other repository (a venv in a project), whose sha says nothing about detlab's code.
    """
    unknown = {"git_sha": None, "git_dirty": None}
    try:
        top = _git(package_dir, "rev-parse", "--show-toplevel")
        if Path(top).resolve() / "detlab" != package_dir.resolve():
            return unknown
        sha = _git(package_dir, "rev-parse", "HEAD")
        dirty = bool(_git(package_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):  # no git on the machine, or not a work tree
        return unknown
    return {"git_sha": sha, "git_dirty": dirty}


def data_fingerprint(data_files: Mapping[str, tuple[str, str]]) -> str:
    """sha256 over each split (in name order): its name, its annotation file's bytes and its image folder's
    listing (relative path and size in bytes of every file). The listing, not the pixels: hashing every
    image would read the whole dataset, while a replaced, added or removed image almost always changes it."""
    digest = hashlib.sha256()
    for split in sorted(data_files):
        ann_file, img_dir = data_files[split]
        digest.update(f"split {split}\n".encode())
        with open(ann_file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        for path, size in _listing(Path(img_dir)):
            digest.update(f"{path}\t{size}\n".encode())
    return digest.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys): equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _listing(folder: Path) -> list[tuple[str, int]]:
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            files.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return sorted(files)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
