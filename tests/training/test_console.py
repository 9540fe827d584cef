"""The known library noise that detlab-train keeps off the console, and nothing else."""

import warnings

from pytorch_lightning.utilities.warnings import PossibleUserWarning

from detlab.training.console import quiet_library_noise

ASK = "It is recommended to use `self.log({!r}, ..., sync_dist=True)` when logging on epoch level in distributed " \
      "setting to accumulate the metric across devices."


def test_ddp_sync_dist_advice_is_quiet_for_the_gathered_metrics_only():
    """The evaluator's metrics are the same on every rank (gathered once); a metric of one rank keeps the advice."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_library_noise()
        for name in ("val/AP", "val/AP50", "val/ARl", "val/loss", "val/my_metric"):
            warnings.warn(ASK.format(name), PossibleUserWarning)
    assert [str(w.message) for w in shown] == [ASK.format("val/loss"), ASK.format("val/my_metric")]
