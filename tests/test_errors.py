"""detlab.errors: which failures are the user's (one message, exit 2) and which are bugs (a traceback)."""

import errno

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from torch.utils.data import DataLoader, Dataset

from detlab.errors import (
    ConfigError, DataError, StorageError, check_non_negative, check_writable, user_errors, user_message,
)


class BadImage(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DataError(f"cannot decode image /data/{index}.jpg (image id={index} of ann.json)")


def test_a_worker_error_keeps_only_the_workers_message():
    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(BadImage(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what torch re-raises: the worker's whole traceback
    assert user_message(caught.value) == "cannot decode image /data/0.jpg (image id=0 of ann.json)"


def test_what_is_the_users_and_what_is_a_bug():
    assert user_message(ConfigError("optim.optimizer.lr='abc'")) == "optim.optimizer.lr='abc'"
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = ConfigError("data.augment.hflip=2")  # a component's own check, through hydra's instantiate
    assert user_message(wrapped) == "data.augment.hflip=2"
    # A ValueError that is not one of detlab's types is a bug, wherever it comes from: torch's, from a head whose
    # outputs do not fit its loss, used to be printed as the user's one-line error, without its traceback.
    with pytest.raises(ValueError) as torch_error:
        F.binary_cross_entropy_with_logits(torch.zeros(2, 3), torch.zeros(2, 4))
    assert user_message(torch_error.value) is None
    assert user_message(FileNotFoundError(2, "No such file or directory", "/tmp/x")) is None
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.csv")
    assert user_message(full).startswith("cannot use /runs/x/metrics.csv: no space left on the device;")
    assert user_message(TypeError("unsupported operand")) is None
    assert user_message(KeyError("area")) is None
    assert user_message(OSError(errno.EIO, "I/O error", "/dev/sda")) is None  # not something a user fixes


def test_user_errors_exits_2_with_one_line_and_lets_bugs_through(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info, user_errors("detlab-x"):
        raise DataError("ann.json: image id=3: missing field 'area'")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("detlab-x: error: ann.json: image id=3: missing field 'area'\n")
    with pytest.raises(ZeroDivisionError), user_errors("detlab-x"):
        1 / 0


def test_check_writable_names_the_key(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    check_writable(tmp_path / "new", "hydra.run.dir", "set hydra.run.dir")
    assert list((tmp_path / "new").iterdir()) == []  # the probe is gone
    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    with pytest.raises(StorageError, match=r"cannot write .*/other \(hydra.run.dir\): permission denied; set hydra"):
        check_writable(tmp_path / "other", "hydra.run.dir", "set hydra.run.dir")


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), True, "2", None])
def test_check_non_negative_takes_finite_numbers_only(value):
    """One rule for the config's weights, sizes and probabilities (data.augment's too): an infinite min_box_size or
    colour jitter, a bool (YAML's true) or a string is refused naming the key."""
    with pytest.raises(ConfigError, match=r"^data\.augment\.min_box_size=.* must be a number >= 0$"):
        check_non_negative("data.augment", min_box_size=value)
    check_non_negative("data.augment", min_box_size=0, color_jitter=0.4)
