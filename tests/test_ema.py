"""The weight average's update rule and its key (detlab.ema); a run with it is in test_train.py."""

import pytest
import torch

from detlab.ema import EMA, ema_update


def test_update_warms_up_then_holds_the_decay():
    update = ema_update(0.5)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(0))  # d = min(0.5, 1 / 10): mostly the new weights
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.9))
    update(averaged, current, torch.tensor(90))  # d = min(0.5, 91 / 100) = 0.5
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.95))
    counts = [torch.tensor(3)]
    update(counts, [torch.tensor(7)], torch.tensor(90))  # BN's num_batches_tracked: copied, not averaged
    assert int(counts[0]) == 7


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_decay_outside_the_open_interval_names_the_key(decay):
    with pytest.raises(ValueError, match=r"ema\.decay"):
        EMA(decay)
