"""detlab.training.checkpoint: a write that fails leaves the previous file whole; a bad file is a named error."""

import errno

import pytest
import torch

import detlab.training.checkpoint
from detlab.training.checkpoint import AtomicCheckpointIO, check_resumable, read_checkpoint
from detlab.errors import CheckpointError, StorageError


def checkpoint(step: int) -> dict:
    return {"state_dict": {"w": torch.full((1000,), float(step))}, "hyper_parameters": {"cfg": {}}, "global_step": step}


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(3), path)
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)  # most of the bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(detlab.training.checkpoint.torch, "save", full_disk)
    with pytest.raises(StorageError, match=r"last.ckpt .*no space left.*the previous checkpoint there is kept"):
        io.save_checkpoint(checkpoint(6), path)
    assert read_checkpoint(path)["global_step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left

    def killed(obj, file, *args, **kwargs):  # a kill mid-write: the process stops inside torch.save
        file.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(detlab.training.checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(checkpoint(9), path)
    assert read_checkpoint(path)["global_step"] == 3


def test_bad_files_are_named(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save(checkpoint(3), good)
    cases = {
        "missing.ckpt": (None, "no checkpoint at"),  # never written
        "run_dir": (None, "is a folder, not a checkpoint file: .* checkpoints/last.ckpt"),  # ckpt_path=<run dir>
        "truncated.ckpt": (good.read_bytes()[:200], "cannot be read as a checkpoint"),
        "garbage.ckpt": (b"\x00" * 64, "cannot be read as a checkpoint"),
        "foreign.ckpt": (None, "not a checkpoint written by detlab-train"),  # a torch file, not Lightning's
    }
    torch.save({"model": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    (tmp_path / "run_dir").mkdir()
    for name, (content, says) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=says) as caught:
            read_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    assert read_checkpoint(good)["global_step"] == 3


def test_a_resume_continues_only_what_the_checkpoint_holds():
    """The weights fit the checkpoint's model, and its optimizer state restores its own lr over optim.*: a change
    there crashed deep in torch (a head of another width, SGD over AdamW's state) or was recorded and never used
    (the lr). A weights file has no state to resume, and a finished run nothing left to train."""
    trained = {"model": {"head": {"width": 16, "depth": 1}}, "loss": {"gamma": 2.0},
               "optim": {"optimizer": {"lr": 0.001}}, "data": {"image_size": 64}, "trainer": {"max_epochs": 1}}
    full = {"hyper_parameters": {"cfg": trained}, "global_step": 3, "optimizer_states": [{}],
            "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 1}}}}}
    longer = {**trained, "trainer": {"max_epochs": 3}}
    check_resumable("last.ckpt", full, {**longer, "data": {"image_size": 96}})  # more epochs, other data: continues
    changed = {**longer, "model": {"head": {"width": 32, "depth": 1}}, "optim": {"optimizer": {"lr": 0.5}}}
    with pytest.raises(CheckpointError, match=r"model.head.width=32 \(the checkpoint's: 16\); "
                                              r"optim.optimizer.lr=0.5 \(the checkpoint's: 0.001\)"):
        check_resumable("last.ckpt", full, changed)
    with pytest.raises(CheckpointError, match=r"last.ckpt has finished: .* stops at trainer.max_epochs=1"):
        check_resumable("last.ckpt", full, trained)
    with pytest.raises(CheckpointError, match=r"stops at trainer.max_steps=3"):
        check_resumable("last.ckpt", full, {**trained, "trainer": {"max_epochs": 3, "max_steps": 3}})
    weights = {k: v for k, v in full.items() if k not in ("optimizer_states", "loops")}
    with pytest.raises(CheckpointError, match=r"weights.ckpt holds weights only .* model.weights=weights.ckpt"):
        check_resumable("weights.ckpt", weights, longer)


def test_a_ddp_resume_continues_each_ranks_own_augmentation(tmp_path):
    """The checkpoint keeps every rank's augmentation stream (augment_by_rank); rank 1 continues its own, not
    rank 0's, which would make the two ranks draw the same jitter again after a resume."""
    from types import SimpleNamespace

    from detlab.data.datamodule import DetectionDataModule
    from detlab.data.shapes import ShapesSource
    from detlab.training.checkpoint import RandomState, _augmentation_steps

    source = ShapesSource(num_train_images=2, num_val_images=1, image_size=48, cache_dir=str(tmp_path))
    datamodule = DetectionDataModule(source=source, image_size=32, num_workers=0, augment={"scale_range": [0.5, 1.5]})
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=1, world_size=2)
    callback, checkpoint = RandomState(), {}
    callback.on_save_checkpoint(trainer, None, checkpoint)  # no process group: this rank's stream only
    state = checkpoint["random_state"]
    rank1 = [(py, {**np_state, "state": {"state": 7, "inc": 9}}) for py, np_state in state["augment"]]
    state["augment_by_rank"] = [state["augment"], rank1]
    callback.on_load_checkpoint(trainer, None, checkpoint)
    assert [step.random_generator.bit_generator.state for step in _augmentation_steps(trainer)] == [s for _, s in rank1]
