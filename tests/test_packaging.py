"""The wheel: conf/ ships inside it as detlab/conf, and an installed (not editable) detlab trains from any folder."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("detlab", "conf", "pyproject.toml", "setup.py", "README.md")  # what the build reads


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline (no build isolation: this environment's setuptools) from a copy of the sources,
    so that the build's build/ and egg-info folders stay out of the checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", *offline, "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=300)
    [built] = out.glob("detlab-*.whl")
    return built


def test_the_wheel_holds_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"detlab/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert "detlab/conf/train.yaml" in configs and "detlab/conf/model/backbone/resnet18.yaml" in configs
    assert configs <= names, sorted(configs - names)
    assert "detlab/cli/train.py" in names and "detlab/py.typed" in names


def call(*command, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """command in cwd, without PYTHONPATH (which would load the checkout's detlab instead of the installed one)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (not editable); the dependencies (torch, Lightning, ...) come from
    this environment through a .pth file rather than a download (`--system-site-packages` would see the base
    interpreter's packages, not those of the venv that runs the tests)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = call(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: this environment's own detlab (an editable install) is seen but never touched
    proc = call(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel), cwd=venv)
    assert proc.returncode == 0, proc.stderr
    return venv


@pytest.mark.slow
def test_installed_wheel_composes_trains_and_takes_a_users_config_folder(installed, tmp_path):
    python, train = installed / "bin" / "python", installed / "bin" / "detlab-train"
    where = call(python, "-c", "import detlab; print(detlab.__file__)", cwd=tmp_path).stdout
    assert Path(where).is_relative_to(installed)

    job = call(train, "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "_target_: detlab.models.build." in job.stdout  # conf/model/*.yaml, from the wheel

    # A user's own folder extends the tree: a data config of theirs beside the shipped ones.
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "mine.yaml").write_text("defaults:\n  - shapes\n  - _self_\nimage_size: 96\n")
    job = call(train, "hydra.searchpath=[file://my_conf]", "data=mine", "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "image_size: 96" in job.stdout

    overrides = [o.replace("num_train_images=12", "num_train_images=8") for o in TINY]  # 8 images, batch 4: 2 steps
    proc = call(train, *overrides, "logger=csv", "speed.enabled=false", "hydra.run.dir=run", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["global_step"] == 2 and isinstance(results["metrics"]["AP"], float)
