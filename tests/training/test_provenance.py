"""Provenance: the git state of detlab's own checkout only, a data fingerprint that follows the files' content
and listing (not their place), a config hash that ignores key order."""

import json
import shutil
import subprocess
from pathlib import Path

import torch

import detlab
from detlab.training.provenance import config_hash, data_fingerprint, git_state, provenance


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_git_state_of_a_checkout_and_of_an_installed_copy(tmp_path):
    repo = tmp_path / "repo"
    (repo / "detlab").mkdir(parents=True)
    (repo / "detlab" / "__init__.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    sha = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "detlab") == {"git_sha": sha, "git_dirty": False}
    (repo / "untracked.txt").write_text("runs, notes")  # not code: the checkout stays clean
    assert git_state(repo / "detlab")["git_dirty"] is False
    (repo / "detlab" / "__init__.py").write_text("x = 2\n")
    assert git_state(repo / "detlab") == {"git_sha": sha, "git_dirty": True}
    # A wheel's copy inside some other repository (a venv in a project): that repository's sha is not detlab's.
    installed = repo / "venv" / "site-packages" / "detlab"
    installed.mkdir(parents=True)
    assert git_state(installed) == {"git_sha": None, "git_dirty": None}
    outside = tmp_path / "site-packages" / "detlab"
    shutil.copytree(repo / "detlab", outside)
    assert git_state(outside) == {"git_sha": None, "git_dirty": None}


def write_split(folder: Path, sizes: dict[str, int]) -> tuple[str, str]:
    (folder / "images").mkdir(parents=True)
    for name, size in sizes.items():
        (folder / "images" / name).write_bytes(b"x" * size)
    ann = folder / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(sizes)]}))
    return str(ann), str(folder / "images")


def test_data_fingerprint_follows_content_and_listing_not_place(tmp_path):
    a = {"val": write_split(tmp_path / "a", {"1.jpg": 10, "2.jpg": 20})}
    b = {"val": write_split(tmp_path / "b", {"1.jpg": 10, "2.jpg": 20})}  # the same data elsewhere
    assert data_fingerprint(a) == data_fingerprint(b)
    assert data_fingerprint({"train": b["val"]}) != data_fingerprint(a)  # the split's role is part of the data
    (Path(b["val"][1]) / "2.jpg").write_bytes(b"x" * 21)  # an image replaced by another
    assert data_fingerprint(a) != data_fingerprint(b)
    c = {"val": write_split(tmp_path / "c", {"1.jpg": 10, "2.jpg": 20, "3.jpg": 5})}  # an image added
    assert data_fingerprint(c) != data_fingerprint(a)
    d = {"val": write_split(tmp_path / "d", {"1.jpg": 10, "2.jpg": 20})}
    Path(d["val"][0]).write_text(Path(d["val"][0]).read_text() + " ")  # the annotation file edited
    assert data_fingerprint(d) != data_fingerprint(a)


def test_config_hash_ignores_key_order_only():
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) != config_hash({"a": 1, "b": {"c": 2, "d": 4}})


def test_provenance_record(tmp_path):
    files = {"val": write_split(tmp_path, {"1.jpg": 3})}
    record = provenance({"seed": 0}, files, torch.device("cpu"))
    assert record["detlab"] == detlab.__version__
    assert record["torch"] == torch.__version__ and record["cuda"] == torch.version.cuda
    assert record["device"].startswith("cpu: ") and record["cpu"] in record["device"]
    assert record["cpu_capability"] in {"DEFAULT", "VSX", "ZVECTOR", "AVX2", "AVX512", "SVE256", "SVE128"}
    assert record["data_fingerprint"] == data_fingerprint(files) and record["config_hash"] == config_hash({"seed": 0})
    checkout = Path(detlab.__file__).resolve().parent.parent  # the suite runs from a checkout: its HEAD
    assert record["git_sha"] == git(checkout, "rev-parse", "HEAD")
