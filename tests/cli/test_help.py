"""Every command answers --help (and detlab-train its TAB completion, Hydra's) without importing torch, Lightning, scipy
or the model code: those take seconds to import, which a user would wait for at each TAB (#16). Asserted on
what is imported, never on a time: the times are in the README (What a run prints)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning", "lightning_fabric", "wandb", "albumentations",
         "cv2", "pycocotools", "matplotlib", "scipy", "detlab.models", "detlab.losses", "detlab.training", "detlab.inference")

COMMANDS = {
    "detlab-train --help": ["detlab-train", "--help"],
    "detlab-train TAB": ["detlab-train", "-sc", "query=bash"],
    "detlab-eval --help": ["detlab-eval", "--help"],
    "detlab-eval run --help": ["detlab-eval", "run", "--help"],
    "detlab-data --help": ["detlab-data", "--help"],
    "detlab-data check --help": ["detlab-data", "check", "--help"],
    "detlab-report --help": ["detlab-report", "--help"],
    "detlab-predict --help": ["detlab-predict", "--help"],
}


def imported_by(argv: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """(stdout, the modules loaded) of an installed console script run as a user runs it."""
    modules = tmp_path / "modules.json"
    script = Path(sys.executable).parent / argv[0]
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(modules)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(modules.read_text())


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_and_completion_import_no_torch(name, tmp_path):
    env = {"COMP_LINE": "detlab-train mod", "COMP_POINT": "16"} if "TAB" in name else None
    out, loaded = imported_by(COMMANDS[name], tmp_path, env)
    assert ("model" in out.split()) if "TAB" in name else ("usage" in out.lower() or "powered by Hydra" in out)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    assert not heavy, heavy


CLI_MODULES = sorted(p.stem for p in (Path(__file__).parents[2] / "detlab" / "cli").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_command_module_runs_with_python_m(module, tmp_path):
    """`python -m detlab.cli.<command>` is the README's way to time and run each command (make bench and gpu-check
    use it too): a module without its `__main__` guard exits 0 having done nothing."""
    proc = subprocess.run([sys.executable, "-m", f"detlab.cli.{module}", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower() or "powered by Hydra" in proc.stdout, (module, proc.stdout, proc.stderr)
