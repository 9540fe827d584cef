"""detlab-eval results starts fast: scoring a file imports no torch, Lightning, Hydra or model code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning", "lightning_fabric", "hydra", "omegaconf", "wandb",
         "detlab.models", "detlab.training", "detlab.inference", "detlab.data", "detlab.losses")


def test_results_command_imports_no_torch_lightning_or_model_code(tmp_path):
    write_perfect_case(tmp_path)
    modules = tmp_path / "modules.json"
    script = Path(sys.executable).parent / "detlab-eval"  # the installed console script, as a user runs it
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(modules)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = ['detlab-eval', 'results', '--ann', 'gt.json', '--results', 'dets.json']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "AP    Average Precision" in proc.stdout and "= 1.000" in proc.stdout
    loaded = json.loads(modules.read_text())
    assert "detlab.evaluation.results_file" in loaded and "hotcoco" in loaded  # it did score, with the default
    # the annotation file's check is the one training runs: light (json, math), no torch behind it
    light = {"detlab.data", "detlab.data.coco", "detlab.data.coco.checker"}
    heavy = [m for m in loaded if (m.split(".")[0] in HEAVY or m.startswith(HEAVY)) and m not in light]
    assert not heavy, heavy


def write_perfect_case(folder: Path) -> tuple[str, str]:
    box = [10.0, 20.0, 30.0, 40.0]
    (folder / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": box, "area": 1200.0, "iscrowd": 0}],
    }))
    (folder / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": box, "score": 0.9}]))
    return str(folder / "gt.json"), str(folder / "dets.json")


def test_output_in_a_new_folder_is_written(tmp_path):
    """--output results/eval.json where results/ does not exist yet: made, as detlab-predict makes its --out's."""
    from detlab.cli.eval import main

    ann, dets = write_perfect_case(tmp_path)
    out = tmp_path / "new" / "eval.json"
    main(["results", "--ann", ann, "--results", dets, "--output", str(out)])
    assert json.loads(out.read_text())["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)  # one exact box: AP 1


def test_output_that_is_a_folder_is_one_message_before_scoring(tmp_path, capsys):
    from detlab.cli.eval import main

    ann, dets = write_perfect_case(tmp_path)
    try:
        main(["results", "--ann", ann, "--results", dets, "--output", str(tmp_path)])
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("detlab-eval wrote over a folder")
    captured = capsys.readouterr()
    assert f"detlab-eval: error: --output {tmp_path} is a folder" in captured.err
    assert "COCO box evaluation" not in captured.out  # refused before the work


def test_a_folder_as_the_annotation_file_is_one_message(tmp_path, capsys):
    """--ann naming the dataset's folder stopped with a bare IsADirectoryError from the annotation file's check."""
    from detlab.cli.eval import main

    _, dets = write_perfect_case(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["results", "--ann", str(tmp_path), "--results", dets])
    assert stop.value.code == 2
    assert f"detlab-eval: error: {tmp_path}: is a folder; give the COCO annotation json file" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["--ann", "--results"])
def test_output_that_is_an_input_is_one_message_and_leaves_it_whole(tmp_path, capsys, which):
    """--output naming the results (or annotation) file wrote the evaluation over it."""
    from detlab.cli.eval import main

    ann, dets = write_perfect_case(tmp_path)
    target = ann if which == "--ann" else dets
    before = Path(target).read_bytes()
    with pytest.raises(SystemExit) as stop:
        main(["results", "--ann", ann, "--results", dets, "--output", target])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert f"--output: writing {target} would replace {target}, which this command reads" in captured.err
    assert "COCO box evaluation" not in captured.out and Path(target).read_bytes() == before


@pytest.mark.parametrize("command", ["run", "speed"])
def test_output_that_is_a_run_directorys_checkpoint_is_one_message_and_leaves_it_whole(tmp_path, capsys, command):
    """A run directory is read as its checkpoints/weights.ckpt: --output naming that file wrote the JSON over the
    run's weights (the check compared --output with the directory, which it never is)."""
    from detlab.cli.eval import main

    weights = tmp_path / "run" / "checkpoints" / "weights.ckpt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"the run's weights")
    with pytest.raises(SystemExit) as stop:
        main([command, str(tmp_path / "run"), "--output", str(weights)])
    assert stop.value.code == 2
    assert f"--output: writing {weights} would replace {weights}, which this command reads" in capsys.readouterr().err
    assert weights.read_bytes() == b"the run's weights"
