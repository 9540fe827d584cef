"""detlab.training.run's rules around the fit: what each DDP rank does when another stops (with a fake trainer), and
what every setting does before it."""

import copy
import subprocess
import sys
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from detlab.config import compose_train
from detlab.errors import user_message
from detlab.training.run import _ranks_stop_together
from tests.conftest import TINY
from tests.test_config import numeric_keys

LOST = "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:21888. This is typically caused by..."


def _trainer(rank: int, world_size: int, child_statuses: list[int]) -> SimpleNamespace:
    """A trainer whose launcher started children exiting with child_statuses (-9: killed by SIGKILL)."""
    ends = {status: f"raise SystemExit({status})" if status >= 0 else f"import os; os.kill(os.getpid(), {-status})"
            for status in child_statuses}
    procs = [subprocess.Popen([sys.executable, "-c", ends[status]]) for status in child_statuses]
    return SimpleNamespace(world_size=world_size, global_rank=rank, strategy=SimpleNamespace(launcher=SimpleNamespace(procs=procs)))


@pytest.mark.parametrize("rank, children, status", [(0, [2], 2), (0, [-9, 1], 1), (1, [], 1)])
def test_a_rank_that_lost_its_peer_says_so_in_one_line(capsys, rank, children, status):
    """Rank 0 (the command's process) exits with the status of the child that stopped first (a user's error: 2; a
    killed child is not that one); the line names torch's error instead of its traceback."""
    trainer = _trainer(rank, 2, children)
    with pytest.raises(SystemExit) as stop, _ranks_stop_together(trainer):
        raise RuntimeError(LOST)
    assert stop.value.code == status
    assert capsys.readouterr().err == (f"detlab-train: rank {rank} stops: another process of this DDP run stopped "
                                       f"first (killed, or its error is above), and this one lost it: {LOST}\n")


@pytest.mark.parametrize("world_size, message", [(2, "a bug of this rank's own"), (1, LOST)])
def test_any_other_error_keeps_its_traceback(world_size, message):
    with pytest.raises(RuntimeError, match="bug|Connection"), _ranks_stop_together(_trainer(0, world_size, [])):
        raise RuntimeError(message)


def test_sigterm_is_told_once_by_rank_zero(tmp_path, capsys):
    """Lightning passes SIGTERM on to every DDP rank, and each printed the same stop and resume line."""
    from detlab.training.run import _exit_stopped

    for says in (False, True):
        with pytest.raises(SystemExit) as stop:
            _exit_stopped(tmp_path, 5, says)
        assert stop.value.code == 143
    assert capsys.readouterr().err == ("detlab-train: stopped by SIGTERM at step 5, before results.json; no last.ckpt "
                                       "was written yet\n")


class _Built(Exception):
    """train() built every part of the run from the settings: it would now record the provenance and fit."""


def _builds(cfg, run_dir) -> bool:
    """Whether train(cfg) builds every part of the run; False where a setting stops it with detlab's message (what
    detlab-train prints before exiting 2). Anything else (a traceback from torch or Lightning) fails."""
    from detlab.training.run import train

    try:
        train(cfg, run_dir)
    except _Built:
        return True
    except Exception as err:  # noqa: BLE001 - sorted below: ours, or a bug of the settings' checks
        if user_message(err) is None:
            raise AssertionError(f"not one line naming the key, but {type(err).__name__}: {err}") from err
        return False
    raise AssertionError("train() returned without building the run")


# What -1, 0 or 1.5 means where it is taken (a key alone: every value): any other value tried below must stop the run
# before any work.
SETTING_MEANS = {
    "callbacks.early_stopping.min_delta": "Lightning's EarlyStopping: its arguments are Lightning's to define",
    "callbacks.early_stopping.patience": "the same",
    "checkpoint.save_top_k=-1": "every validation's checkpoint (Lightning's)",
    "checkpoint.save_top_k=0": "no best-k checkpoints (the default: last.ckpt and weights.ckpt only)",
    "data.augment.color_jitter=0": "no colour jitter",
    "data.augment.color_jitter=1.5": "a strength: brightness, contrast, saturation factors in [0, 2.5]",
    "data.augment.expand_ratio=1.5": "zoom out to at most 1.5x the side",
    "data.augment.hflip=0": "no flip",
    "data.augment.min_box_size=1.5": "pixels",
    "data.augment.min_visibility=0": "keep a cropped box however little of it is left",
    "data.num_workers=0": "load in the main process",
    "data.source.long_tail=0": "uniform classes",
    "data.source.long_tail=1.5": "class k drawn with weight (k + 1)^-1.5",
    "data.source.seed=0": "a seed",
    "data.source.size_jitter=0": "every image at data.source.image_size",
    "eval.num_log_images=0": "draw none",
    "optim.optimizer.lr=0": "no update (torch's): the starting model through the loop",
    "optim.optimizer.lr=1.5": "a learning rate",
    "optim.optimizer.weight_decay=0": "none",
    "optim.optimizer.weight_decay=1.5": "a weight decay",
    "optim.scheduler.warmup_factor=0": "the warm-up starts from lr 0",
    "optim.scheduler.warmup_steps=0": "no warm-up",
    "prune.warmup_epochs=0": "judged from the first epoch",
    "seed=0": "a seed",
    "speed.warmup=0": "no untimed iterations (results.json records the warm-up with the numbers)",
    "trainer.gradient_clip_val=0": "no clipping (Lightning's)",
    "trainer.gradient_clip_val=1.5": "a norm",
    "trainer.log_every_n_steps=0": "no step logged (Lightning's)",
    "trainer.num_sanity_val_steps=-1": "the whole val set before training (Lightning's)",
    "trainer.num_sanity_val_steps=0": "no sanity check",
}


def test_every_numeric_setting_outside_the_model_is_refused_before_work_or_means_something(tmp_path, monkeypatch):
    """The probe that found a negative gradient clip, 0 epochs between validations, and a prune rule that divided
    nothing by zero after an epoch, kept: every numeric key outside the model (whose keys test_config sweeps), with
    the optional parts switched on (pruning, EMA, early stopping), at -1, 0 and 1.5, through train() up to the fit (0.3 s a value).
    A setting added without a check fails here, or joins SETTING_MEANS with what it means."""
    def built(*args, **kwargs):
        raise _Built

    monkeypatch.setattr("detlab.training.run.provenance", built)  # right after the last part is built
    base = compose_train([*TINY, "model/backbone=darknet_tiny", "logger=csv", "speed.enabled=true", "prune.enabled=true",
                          "callbacks=[default,ema,early_stopping]", "trainer.enable_progress_bar=false"])
    run_cfg = OmegaConf.masked_copy(base, [k for k in base if k != "hydra"])  # what a run gets: no hydra node
    settings = OmegaConf.to_container(OmegaConf.masked_copy(run_cfg, [k for k in run_cfg if k not in ("model", "loss")]))
    taken = []
    for key in [k.removeprefix(".") for k in numeric_keys(settings, "")]:  # top-level keys too (seed)
        for value in (-1, 0, 1.5):
            cfg = copy.deepcopy(run_cfg)
            OmegaConf.update(cfg, key, value)
            if _builds(cfg, tmp_path / f"{key}={value}"):
                taken.append(f"{key}={value}")
    unexplained = [setting for setting in taken if setting not in SETTING_MEANS and setting.split("=")[0] not in SETTING_MEANS]
    assert not unexplained, f"taken without a meaning: {unexplained}"
