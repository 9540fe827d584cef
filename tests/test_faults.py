"""The fault tier (marker `faults`, `make test-faults`): every failure a user can cause or meet ends in one named
message and exit status 2, and a run survives kill -9 and a full disk. The real entry points, tiny runs."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.training.checkpoint import read_checkpoint
from tests.conftest import TINY, run, wandb_records

pytestmark = pytest.mark.faults

MODEL = [o for o in TINY if not o.startswith("data.source.")]  # the tiny model, for data=coco runs
STEPS_PER_EPOCH = 3  # 12 train images at batch 4


def script(tmp_path: Path, name: str, patch: str) -> Path:
    """A file that applies `patch` in the process, then runs detlab-train with its own arguments."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(patch) + "\nimport sys\nfrom detlab.cli.train import main\nsys.argv[0] = 'detlab-train'\nmain()\n")
    return path


def train_with(tmp_path: Path, patch_file: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(patch_file), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{patch_file.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_named_error(proc: subprocess.CompletedProcess, *named: str) -> None:
    """Exit status 2, and one message (no traceback, no Lightning or worker noise) naming every `named`."""
    assert proc.returncode == 2, f"status {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    for name in named:
        assert name in proc.stderr, (name, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Caught " not in proc.stderr, proc.stderr[-3000:]


# ---------------------------------------------------------------- kill -9, resume, W&B id, full disk


KILL_AT_STEP = """
import os, signal
from detlab.training.module import DetectionModule
step = DetectionModule.training_step
def training_step(self, batch, batch_idx):
    if self.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, batch_idx)
DetectionModule.training_step = training_step
"""


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict[str, Path]:
    """A 3-epoch run killed (SIGKILL) in the middle of its second epoch, then resumed from its last.ckpt in the
    same folder; and the same run never stopped. Deterministic mode, the default (offline) W&B logger."""
    root = tmp_path_factory.mktemp("faults")
    args = [*TINY, "trainer.max_epochs=3", "trainer.deterministic=true", "speed.enabled=false"]
    run("detlab.cli.train", *args, f"hydra.run.dir={root / 'straight'}", cwd=root)
    killer = script(root, "kill", KILL_AT_STEP.format(step=STEPS_PER_EPOCH + 1))
    proc = train_with(root, killer, *args, f"hydra.run.dir={root / 'killed'}", check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    (root / "killed_id_before").write_text((root / "killed" / "wandb_run_id").read_text())
    proc = run("detlab.cli.train", *args, f"ckpt_path={root / 'killed' / 'checkpoints' / 'last.ckpt'}",
               f"hydra.run.dir={root / 'killed'}", cwd=root)
    (root / "resumed_stdout").write_text(proc.stdout)
    return {"root": root, "straight": root / "straight", "resumed": root / "killed"}


def test_kill_and_resume_reaches_the_same_step_and_weights_bit_for_bit(killed_and_resumed):
    straight = read_checkpoint(killed_and_resumed["straight"] / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(killed_and_resumed["resumed"] / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 3 * STEPS_PER_EPOCH
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    differ = [k for k, v in straight["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ, differ
    results = [json.loads((killed_and_resumed[k] / "results.json").read_text()) for k in ("straight", "resumed")]
    assert results[0]["metrics"] == results[1]["metrics"]


def wandb_history(run_file: Path) -> tuple[str, list[int]]:
    """(run id, trainer/global_step of each history row) of an offline W&B run file."""
    run_id, steps = None, []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "run":
            run_id = record.run.run_id
        elif record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if "trainer/global_step" in items:
                steps.append(int(float(items["trainer/global_step"])))
    return run_id, steps


def test_resume_continues_the_same_wandb_run_from_the_checkpoint_step(killed_and_resumed):
    folder = killed_and_resumed["resumed"]
    run_id = (folder / "wandb_run_id").read_text().strip()
    assert run_id == (killed_and_resumed["root"] / "killed_id_before").read_text().strip()
    files = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2, files  # the killed process's and the resumed one's: one W&B run id across both
    (killed_id, killed_steps), (resumed_id, resumed_steps) = (wandb_history(f) for f in files)
    assert killed_id == resumed_id == run_id
    assert killed_steps and max(killed_steps) <= STEPS_PER_EPOCH + 1  # killed in epoch 2 (history up to there kept)
    assert min(resumed_steps) >= STEPS_PER_EPOCH and max(resumed_steps) == 3 * STEPS_PER_EPOCH
    assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["wandb_id"] == run_id
    # the upload command the run prints sends both parts (it named only the resumed process's folder)
    upload = [line for line in (killed_and_resumed["root"] / "resumed_stdout").read_text().splitlines()
              if line.startswith("upload ")]
    assert upload == ["upload       wandb sync " + " ".join(str(f.parent) for f in files)]


FULL_DISK_AFTER_TWO_SAVES = """
import errno, torch
saves = [0]
real_save = torch.save
def save(obj, f, *args, **kwargs):
    saves[0] += 1
    if saves[0] > 2:  # epoch 1's best.ckpt and last.ckpt are written; then the disk is full mid-file
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_file(tmp_path):
    patch = script(tmp_path, "full_disk", FULL_DISK_AFTER_TWO_SAVES)
    folder = tmp_path / "run"
    proc = train_with(tmp_path, patch, *TINY, "trainer.max_epochs=2", "logger=none", "speed.enabled=false",
                      "checkpoint.save_top_k=1", f"hydra.run.dir={folder}", check=False)
    assert_named_error(proc, str(folder / "checkpoints"), "no space left", "the previous checkpoint there is kept")
    assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp file


SIGTERM_AT_STEP = KILL_AT_STEP.replace("SIGKILL", "SIGTERM")


def test_sigterm_exits_unfinished_with_the_resume_command(tmp_path):
    """A scheduler's pre-emption or `kill` sends SIGTERM: Lightning stopped with a SystemExit without a status, so
    the run exited 0 (a finished run, to a shell, a scheduler or a sweep) without results.json or a word."""
    folder = tmp_path / "run"
    proc = train_with(tmp_path, script(tmp_path, "term", SIGTERM_AT_STEP.format(step=STEPS_PER_EPOCH)), *TINY,
                      "trainer.max_epochs=2", "logger=csv", "speed.enabled=false", f"hydra.run.dir={folder}",
                      check=False)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert f"stopped by SIGTERM at step {STEPS_PER_EPOCH + 1}" in proc.stderr
    assert f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'} hydra.run.dir={folder}" in proc.stderr
    assert not (folder / "results.json").exists()
    assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH


# ---------------------------------------------------------------- deterministic mode


def test_deterministic_mode_gives_identical_metrics_twice(killed_and_resumed, tmp_path):
    args = [*TINY, "trainer.max_epochs=3", "trainer.deterministic=true", "speed.enabled=false"]
    run("detlab.cli.train", *args, f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    first = json.loads((killed_and_resumed["straight"] / "results.json").read_text())
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["metrics"] == first["metrics"] and again["per_class_AP"] == first["per_class_AP"]
    # 9 steps score next to nothing, and equal zeros would prove little: the weights must be equal too.
    weights = [read_checkpoint(folder / "checkpoints" / "last.ckpt")["state_dict"]
               for folder in (killed_and_resumed["straight"], tmp_path / "again")]
    assert all(torch.equal(value, weights[1][key]) for key, value in weights[0].items())


# ---------------------------------------------------------------- every user error: exit 2, one named message


def coco_dataset(root: Path, edit=None) -> list[str]:
    """A 4-image COCO dataset (train = val) with one box each; edit(coco) changes the val file. Overrides."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 16], "area": 320, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / "train.json").write_text(json.dumps(coco))
    if edit:
        edit(coco)
    (root / "val.json").write_text(json.dumps(coco))
    return ["data=coco", f"data.train.ann_file={root / 'train.json'}", f"data.train.img_dir={root / 'img'}",
            f"data.val.ann_file={root / 'val.json'}", f"data.val.img_dir={root / 'img'}", *MODEL,
            "data.batch_size=2", "logger=none", "speed.enabled=false"]


def _string_ids(coco):
    coco["images"][0]["id"] = "img86"
    coco["annotations"][0]["image_id"] = "img86"


def _duplicate_ann_ids(coco):
    coco["annotations"][1]["id"] = coco["annotations"][0]["id"]


def _no_area(coco):
    for ann in coco["annotations"]:
        del ann["area"]


def _empty(coco):
    coco["annotations"] = []


def _boolean_box(coco):
    coco["annotations"][0]["bbox"] = [True, True, True, True]


def _text_box(coco):
    coco["annotations"][0]["bbox"] = ["8", 8, 20, 16]


DATA_CASES = {  # val file edit, what the message must name
    "string image ids": (_string_ids, "field 'id'='img86' must be an integer"),
    "duplicate annotation ids": (_duplicate_ann_ids, "duplicate annotation id (field 'id'=1)"),
    "no area (pycocotools)": (_no_area, "missing field 'area'"),
    "empty annotation list": (_empty, "has no object to learn from or score against"),
    "boolean box": (_boolean_box, "field 'bbox'=[True, True, True, True] must be 4 numbers"),
    "text box": (_text_box, "field 'bbox'=['8', 8, 20, 16] must be 4 numbers"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_stops_training_and_fails_the_check_the_same_way(tmp_path, case):
    edit, says = DATA_CASES[case]
    overrides = coco_dataset(tmp_path, edit)
    proc = run("detlab-train", *overrides, "eval.backend=pycocotools", f"hydra.run.dir={tmp_path / 'r'}",
               cwd=tmp_path, check=False)
    assert_named_error(proc, says, str(tmp_path / "val.json"))
    assert "Epoch" not in proc.stderr  # before any training
    check = run("detlab-data", "check", str(tmp_path / "val.json"), cwd=tmp_path, check=False)
    assert check.returncode == 1 and says in check.stdout, check.stdout + check.stderr


CORRUPT_CHECKPOINTS = {
    "random bytes": lambda good: os.urandom(4096),
    "truncated": lambda good: good[: len(good) // 3],
    "not Lightning's": None,  # torch.save of a plain dict
}


@pytest.fixture(scope="module")
def good_checkpoint(killed_and_resumed) -> bytes:
    return (killed_and_resumed["straight"] / "checkpoints" / "last.ckpt").read_bytes()


@pytest.mark.parametrize("kind", CORRUPT_CHECKPOINTS)
@pytest.mark.parametrize("entry", ["detlab-train ckpt_path", "detlab-eval run"])
def test_a_bad_checkpoint_is_named(tmp_path, good_checkpoint, kind, entry):
    ckpt = tmp_path / "bad.ckpt"
    if CORRUPT_CHECKPOINTS[kind] is None:
        torch.save({"weights": torch.zeros(2)}, ckpt)
    else:
        ckpt.write_bytes(CORRUPT_CHECKPOINTS[kind](good_checkpoint))
    if entry.startswith("detlab-train"):
        proc = run("detlab-train", *TINY, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path,
                   check=False)
    else:
        proc = run("detlab-eval", "run", str(ckpt), cwd=tmp_path, check=False)
    assert_named_error(proc, str(ckpt), "not a checkpoint written by detlab-train" if CORRUPT_CHECKPOINTS[kind] is None
                       else "cannot be read as a checkpoint")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["optim.optimizer.lr=abc"], "optim.optimizer.lr='abc'"),
        (["optim.optimizer.lr=1e4"], "loss terms {'cls': "),  # in training or at the first validation
        (["optim.optimizer.lr=1e12"], "non-finite training loss terms {'cls': "),  # at the second step
    ],
)
def test_config_and_divergence_errors_are_named(tmp_path, overrides, says):
    proc = run("detlab-train", *TINY, "logger=none", *overrides, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path,
               check=False)
    assert_named_error(proc, says, "optim.optimizer.lr")
    if "optim.optimizer.lr=1e" in overrides[0]:
        assert "non-finite" in proc.stderr and " at step " in proc.stderr
        assert "requires_grad=True to a scalar" not in proc.stderr  # torch's warning, from the message's own numbers


NAN_AT_VALIDATION = """
from detlab.training.module import DetectionModule
real_step = DetectionModule.validation_step
def validation_step(self, batch, batch_idx):  # what optim.optimizer.lr=1e2 did in 6 epochs: NaN class outputs
    forward = self.model.forward
    def nan_forward(*args, **kwargs):
        outputs, priors = forward(*args, **kwargs)
        outputs.cls_logits = outputs.cls_logits * float("nan")
        return outputs, priors
    self.model.forward = nan_forward
    try:
        return real_step(self, batch, batch_idx)
    finally:
        del self.model.forward
DetectionModule.validation_step = validation_step
"""


def test_non_finite_validation_outputs_stop_the_run(tmp_path):
    """NaN class outputs score no detection at all: the run used to end with AP 0 and exit 0."""
    patch = script(tmp_path, "nan_val", NAN_AT_VALIDATION)
    proc = train_with(tmp_path, patch, *TINY, "logger=none", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert_named_error(proc, "non-finite validation loss terms", "head outputs ['cls_logits']", " at step 3 ",
                       "optim.optimizer.lr (now 0.001)")
    assert not (tmp_path / "r" / "results.json").exists()


def test_a_corrupt_image_in_a_loader_worker_is_one_line(tmp_path):
    overrides = coco_dataset(tmp_path)
    (tmp_path / "img" / "3.png").write_bytes((tmp_path / "img" / "3.png").read_bytes()[:100])
    proc = run("detlab-train", *overrides, "data.num_workers=2", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path,
               check=False)
    assert_named_error(proc, f"cannot decode image {tmp_path / 'img' / '3.png'} (image id=3 of {tmp_path / 'train.json'}")


@pytest.mark.parametrize("rank", [0, 1])
def test_a_data_error_on_one_ddp_rank_is_one_line_and_status_2(tmp_path, rank):
    """A val image that one rank alone reads is corrupt: that rank prints the message and exits 2; the other one lost
    its peer in a collective and printed torch's traceback about the connection (rank 0 then exited 1)."""

    def corrupt_val_image(coco):  # val index `rank`: a distributed sampler deals indices 0, 2 and 1, 3 to ranks 0, 1
        coco["images"][rank]["file_name"] = "bad.png"

    overrides = coco_dataset(tmp_path, corrupt_val_image)
    image = tmp_path / "img" / "bad.png"  # not a train image
    image.write_bytes((tmp_path / "img" / "1.png").read_bytes()[:100])
    proc = run("detlab-train", *overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert_named_error(proc, f"cannot decode image {image}")
    assert f"rank {1 - rank} stops: another process of this DDP run stopped first" in proc.stderr


def as_other_user() -> list[str]:
    """A permission is only refused to someone who is not root: run as nobody when the tests run as root."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.fixture
def shared_tmp():
    """A temp folder that another user can enter (pytest's own temp root is private to its user)."""
    root = Path(tempfile.mkdtemp(prefix="detlab-faults-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("folder", ["DETLAB_CACHE", "hydra.run.dir", "the W&B run's files"])
def test_a_read_only_folder_is_named(shared_tmp, folder):
    """The W&B case: a run folder whose wandb/ refuses stopped when W&B started, after the data was read, with its
    traceback (a PermissionError without an errno) and status 1."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("the tests run as root without setpriv: a read-only folder cannot be made to refuse a write")
    writable = {name: shared_tmp / name for name in ("home", "cache", "run")}
    for path in writable.values():
        path.mkdir()
        path.chmod(0o777)
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    env = {**os.environ, "HOME": str(writable["home"]), "DETLAB_CACHE": str(writable["cache"])}
    run_dir = writable["run"] / "r"
    logger = "logger=none"
    if folder == "DETLAB_CACHE":
        env["DETLAB_CACHE"] = str(locked / "cache")
    elif folder == "hydra.run.dir":
        run_dir = locked / "run"
    else:  # a run folder that takes files, but not its wandb/
        run_dir.mkdir()
        run_dir.chmod(0o777)
        locked = run_dir / "wandb"
        locked.mkdir()
        locked.chmod(0o555)
        logger = "logger=wandb"
    command = [*as_other_user(), sys.executable, "-m", "detlab.cli.train", *TINY, logger, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(command, cwd=writable["home"], env=env, capture_output=True, text=True, timeout=600)
    assert_named_error(proc, str(locked), folder, "permission denied")
