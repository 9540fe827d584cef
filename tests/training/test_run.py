"""detlab.training.run's rules around the fit, with a fake trainer: what each DDP rank does when another stops."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from detlab.training.run import _ranks_stop_together

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
