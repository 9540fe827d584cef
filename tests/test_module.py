"""The learning-rate schedule against hand-computed values."""

import math

import pytest

from detlab.module import lr_schedule


def test_linear_warmup_then_cosine():
    f = lr_schedule(total_steps=110, name="cosine", warmup_steps=10, warmup_factor=0.001)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.0, abs=1e-12)


def test_step_decay_at_fractions_of_the_run():
    f = lr_schedule(total_steps=90, name="step", warmup_steps=0, milestones=(0.5, 0.8), gamma=0.1)
    assert [f(0), f(44), f(45), f(71), f(72), f(89)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_unknown_schedule_names_the_key():
    with pytest.raises(ValueError, match="optim.scheduler.name"):
        lr_schedule(total_steps=10, name="poly")
