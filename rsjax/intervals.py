"""95 % bootstrap intervals over images, and the verdict a comparison supports.

Every mean, median and ratio the study reports is a statistic of a sample of images; its
uncertainty is a bootstrap interval over those images (``scipy.stats.bootstrap``, BCa by default,
``n_resamples`` resamples, a fixed seed so reports are reproducible). Comparisons between two
settings on the same images use the paired bootstrap of the difference of means.

A claim "A > B" is stated as

* ``holds`` when the interval of (A - B) lies above 0,
* ``reversed`` when it lies below 0,
* ``undecided`` when it contains 0 (or when fewer than 3 images support it).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np

N_RESAMPLES = 2000
SEED = 0


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float
    size: int  # number of images behind the estimate


def _nan_interval(size: int) -> Interval:
    return Interval(math.nan, math.nan, math.nan, size)


def bootstrap(samples: Sequence[np.ndarray], statistic: Callable, confidence: float = 0.95,
              paired: bool = False, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """``statistic(*samples)`` with a ``confidence`` bootstrap interval (BCa; percentile when BCa
    is undefined or a sample holds +inf, e.g. failures; a sample of identical values gives the
    point interval)."""
    from scipy import stats

    samples = [np.asarray(s, np.float64) for s in samples]
    size = min(len(s) for s in samples) if samples else 0
    if size == 0:
        return _nan_interval(0)
    est = float(statistic(*samples, axis=-1))
    if size < 2 or all(np.all(s == s[0]) for s in samples):
        return Interval(est, est, est, size)
    finite = all(np.isfinite(s).all() for s in samples)
    for method in (("BCa", "percentile") if finite else ("percentile",)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(tuple(samples), statistic, confidence_level=confidence, paired=paired,
                                  vectorized=True, n_resamples=n_resamples, method=method,
                                  random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isnan(low) or np.isnan(high)):  # +inf is a valid end (failures counted as inf)
            return Interval(est, min(low, est), max(high, est), size)
    return Interval(est, math.nan, math.nan, size)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _median(x, axis=-1):
    return np.median(x, axis=axis)


def _ratio_of_means(a, b, axis=-1):
    return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def _mean_difference(a, b, axis=-1):
    return np.mean(a - b, axis=axis)


def mean_interval(x, confidence: float = 0.95) -> Interval:
    """Mean over images with its bootstrap interval."""
    return bootstrap([x], _mean, confidence)


def median_interval(x, confidence: float = 0.95) -> Interval:
    """Median over images with its bootstrap interval."""
    return bootstrap([x], _median, confidence)


def ratio_of_means_interval(a, b, confidence: float = 0.95) -> Interval:
    """mean(a) / mean(b) over paired images (e.g. distortion and certified radius of the same
    images: the reading of the paper's Fig. 4/5) with its paired bootstrap interval."""
    return bootstrap([a, b], _ratio_of_means, confidence, paired=True)


def paired_difference_interval(a, b, confidence: float = 0.95) -> Interval:
    """mean(a - b) over paired images with its paired bootstrap interval."""
    return bootstrap([a, b], _mean_difference, confidence, paired=True)


def verdict(interval: Interval, min_size: int = 3) -> str:
    """'holds' / 'reversed' / 'undecided' for the claim "the difference is > 0"."""
    if interval.size < min_size or not (np.isfinite(interval.low) and np.isfinite(interval.high)):
        return "undecided"
    if interval.low > 0:
        return "holds"
    if interval.high < 0:
        return "reversed"
    return "undecided"
