"""The statistics of a report, on scipy.stats: a mean's t interval, and a difference's interval: Welch's, or a paired
t interval over the seeds both configurations ran."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Interval:
    """An estimate with its 95% interval; n and std only for a mean (a difference has dof instead)."""

    estimate: float
    low: float
    high: float
    n: int = 0
    std: float = math.nan
    dof: float = math.nan


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, sample std (n - 1) and the t interval of the mean (scipy.stats' one-sample t):
    mean +- t(1 - (1 - c) / 2, n - 1) std / sqrt(n). With one value the std and the interval are NaN: one seed
    says nothing about the spread."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, n=0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n=1)
    std = float(x.std(ddof=1))
    if std == 0:  # every seed the same: the interval is the point (scipy would give NaN)
        return Interval(mean, mean, mean, n=n, std=0.0, dof=n - 1)
    ci = _t_test("ttest_1samp", x, 0.0).confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), n=n, std=std, dof=n - 1)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b) with Welch's interval (scipy.stats.ttest_ind, equal_var=False: se^2 = s_a^2/n_a +
    s_b^2/n_b, Welch-Satterthwaite dof). NaN bounds when either side has fewer than 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return Interval(math.nan, math.nan, math.nan)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan)
    if a.var(ddof=1) + b.var(ddof=1) == 0:  # identical values within each group: no spread, the difference is exact
        return Interval(diff, diff, diff, dof=math.inf)
    test = _t_test("ttest_ind", a, b, equal_var=False)
    ci = test.confidence_interval(confidence)
    return Interval(diff, float(ci.low), float(ci.high), dof=float(test.df))


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a - b) over pairs (a[i], b[i]) (the same seed in two configurations) with the t interval of the mean
    difference (scipy.stats.ttest_rel: n - 1 dof). Where a seed's data order and initialisation move both runs
    alike, the pairs' differences spread less than the runs and the interval is narrower than Welch's; it is
    valid either way. NaN bounds with fewer than 2 pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"paired_interval: {len(a)} values against {len(b)}; pairs need one of each")
    if len(a) == 0:
        return Interval(math.nan, math.nan, math.nan)
    diff = float((a - b).mean())
    if len(a) < 2:
        return Interval(diff, math.nan, math.nan)
    if (a - b).std() == 0:  # every pair differs by the same amount: the interval is the point
        return Interval(diff, diff, diff, dof=len(a) - 1)
    ci = _t_test("ttest_rel", a, b).confidence_interval(confidence)
    return Interval(diff, float(ci.low), float(ci.high), dof=len(a) - 1)


def _t_test(name: str, *args: Any, **kwargs: Any) -> Any:
    """scipy.stats' t-test `name`, silent about nearly constant samples: the same AP from every seed is a valid
    result (scipy warns of precision loss in its moments, which does not change the interval)."""
    from scipy import stats  # a second to import: loaded by the first interval, not by `detlab-report --help`

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return getattr(stats, name)(*args, **kwargs)
