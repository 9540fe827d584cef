"""The W&B mode rule shared by training runs and report runs: WANDB_MODE wins, else online only with credentials
on this machine (never asking the network)."""

import pytest

from detlab.tracking import wandb_mode


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_offline_without_credentials(home):
    assert wandb_mode() == "offline"


def test_online_with_a_netrc_entry_or_an_api_key(home, monkeypatch):
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (home / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    (home / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_mode() == "online"


def test_wandb_mode_in_the_environment_wins(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
