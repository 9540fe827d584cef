"""The callbacks group (conf/callbacks): composed from the command line, nothing a user adds dropped, moved keys named."""

import re

import pytest
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from detlab.training.checkpoint import RandomState
from detlab.config import compose_train, validate
from detlab.training.ema import EMA
from detlab.errors import ConfigError, user_message
from detlab.training.tracking import EvaluationLogger
from detlab.training.run import _callbacks


def built(overrides: list[str], tmp_path, logger=True) -> list[type]:
    return [type(c) for c in _callbacks(compose_train(overrides), tmp_path, logger)]


def test_default_set_and_composed_additions(tmp_path):
    always = [ModelCheckpoint, RandomState]  # last.ckpt (checkpoint.save_last), and the random state for a resume
    assert built([], tmp_path) == [*always, EvaluationLogger, LearningRateMonitor, TQDMProgressBar]
    assert built(["callbacks=[default,early_stopping,ema]"], tmp_path)[-2:] == [EarlyStopping, EMA]
    mine = "+callbacks.mine={_target_:pytorch_lightning.callbacks.EarlyStopping,monitor:val/AP,mode:max}"
    assert built([mine, "callbacks.progress_bar=null"], tmp_path)[-2:] == [LearningRateMonitor, EarlyStopping]
    assert built(["checkpoint.save_top_k=1", "checkpoint.save_last=false"], tmp_path)[:2] == [ModelCheckpoint, RandomState]
    # Lightning refuses these two without a logger or with its progress bar off: they step aside
    assert built(["trainer.enable_progress_bar=false"], tmp_path, logger=False) == [*always, EvaluationLogger]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["+trainer.callbacks=[]"], "trainer.callbacks is not read"),
        (["ema.decay=0.99"], "callbacks=[default,ema] callbacks.ema.decay=0.99"),
        (["optim.scheduler.name=poly"], "optim.scheduler.name='poly' is not a schedule"),
        (["~optim.scheduler._target_"], "add `_target_: detlab.training.optim.warmup_schedule`"),
    ],
)
def test_moved_or_wrong_keys_stop_naming_the_key(overrides, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(compose_train(overrides))


ES = "callbacks=[default,early_stopping]"


@pytest.mark.parametrize(("overrides", "says"), [
    # before: Lightning's traceback from ModelCheckpoint, and -1 images taken silently
    (["checkpoint.save_top_k=-2"], "checkpoint.save_top_k=-2"),
    (["eval.num_log_images=-1"], "eval.num_log_images=-1"),
    # before: exit 1 with Hydra's wrapper of Lightning's message, and of the TypeError
    ([ES, "callbacks.early_stopping.mode=maximum"], "callbacks.early_stopping (pytorch_lightning.callbacks.EarlyStopping) "
                                                    "rejects its arguments: `mode` can be min, max, got maximum"),
    ([ES, "+callbacks.early_stopping.patiance=3"], "callbacks.early_stopping (pytorch_lightning.callbacks.EarlyStopping) "
                                                   "rejects its arguments"),
    # before: Lightning's traceback after the first epoch's validation
    ([ES, "callbacks.early_stopping.monitor=val/APX"], "callbacks.early_stopping.monitor='val/APX' is not a metric"),
    # before: a node without _target_ (a key of a callback not chosen) or with a class that is no callback was handed
    # to Lightning as a callback: its traceback (ConfigAttributeError: Missing key on_exception) once the fit started
    (["+callbacks.ema.decy=0.9"], "callbacks.ema={'decy': 0.9} builds no Lightning callback (no _target_)"),
    (["+callbacks.mine={_target_:torch.nn.Identity}"], "callbacks.mine builds a torch.nn.modules.linear.Identity, not a "
                                                       "Lightning callback"),
])
def test_what_the_callbacks_cannot_take_is_one_message_naming_the_key(tmp_path, overrides, says):
    with pytest.raises(Exception) as caught:
        _callbacks(compose_train(overrides), tmp_path, logger=True)
    message = user_message(caught.value)  # what detlab-train prints before exiting 2
    assert message is not None and message.startswith(says), message


def test_a_monitor_of_a_logged_metric_is_taken(tmp_path):
    for monitor in ("val/AP50", "val/loss", "train/loss_cls"):
        built([ES, f"callbacks.early_stopping.monitor={monitor}"], tmp_path)
