"""detlab.training.checkpoint: a write that fails leaves the previous file whole; a bad file is a named error."""

import errno

import pytest
import torch

import detlab.training.checkpoint
from detlab.training.checkpoint import AtomicCheckpointIO, read_checkpoint
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
        "truncated.ckpt": (good.read_bytes()[:200], "cannot be read as a checkpoint"),
        "garbage.ckpt": (b"\x00" * 64, "cannot be read as a checkpoint"),
        "foreign.ckpt": (None, "not a checkpoint written by detlab-train"),  # a torch file, not Lightning's
    }
    torch.save({"model": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    for name, (content, says) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=says) as caught:
            read_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    assert read_checkpoint(good)["global_step"] == 3
