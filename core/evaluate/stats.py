"""Uncertainty of scores: bootstrap intervals over items (scipy.stats.bootstrap) and McNemar's test.

Both are paired where two models are compared: the same items are resampled for both, so the interval of a
difference reflects item-level agreement, not two independent noises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap_interval(statistic, samples: tuple[np.ndarray, ...], paired: bool, resamples: int,
                       seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval (scipy) of `statistic` over `samples` (resampled together when
    `paired`); the point itself when there is no variation to resample."""
    if len(samples[0]) < 2 or all(np.all(s == s[0]) for s in samples):
        value = float(statistic(*samples))  # no variation: the interval is the point
        return value, value
    res = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, n_resamples=resamples,
                          confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(values: np.ndarray | list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = SEED) -> Estimate:
    """The mean of per-item scores with its bootstrap 95 % interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    low, high = bootstrap_interval(lambda a, axis=-1: np.mean(a, axis=axis), (x,), False, resamples, seed)
    return Estimate(float(x.mean()), low, high, int(x.size))


def paired_difference(trained: np.ndarray | list[float], base: np.ndarray | list[float],
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> Estimate:
    """mean(trained) - mean(base) over the same items, with a paired bootstrap 95 % interval."""
    a, b = np.asarray(trained, dtype=float), np.asarray(base, dtype=float)
    _check_paired(a, b)
    if a.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    low, high = bootstrap_interval(lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis), (a, b), True,
                                   resamples, seed)
    return Estimate(float(a.mean() - b.mean()), low, high, int(a.size))


def paired_ratio(trained: np.ndarray | list[float], base: np.ndarray | list[float],
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> Estimate:
    """mean(trained) / mean(base) over the same items (retention), with a paired bootstrap 95 % interval."""
    a, b = np.asarray(trained, dtype=float), np.asarray(base, dtype=float)
    _check_paired(a, b)
    if a.size == 0 or b.mean() == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), int(a.size))

    def ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        denominator = np.mean(y, axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, np.mean(x, axis=axis) / np.where(denominator > 0, denominator, 1),
                            np.nan)

    low, high = bootstrap_interval(ratio, (a, b), True, resamples, seed)
    return Estimate(float(a.mean() / b.mean()), low, high, int(a.size))


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired statistics need the same items: {a.size} versus {b.size}")


@dataclass
class McNemar:
    """McNemar's test on paired correctness: b = right only for the base, c = right only for the trained."""

    base_only: int
    trained_only: int
    statistic: float
    p_value: float
    exact: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


EXACT_BELOW = 25  # discordant pairs: below this the exact binomial test, above the chi-square approximation


def mcnemar(base_correct: np.ndarray | list[bool], trained_correct: np.ndarray | list[bool],
            exact: bool | None = None) -> McNemar:
    """McNemar's test between two models on the same items.

    Exact: the two-sided binomial test of b successes in b + c trials at p = 0.5 (scipy.stats.binomtest).
    Otherwise the chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c), on 1 degree of
    freedom. Default: exact when b + c < 25, as statsmodels recommends.
    """
    base = np.asarray(base_correct, dtype=bool)
    trained = np.asarray(trained_correct, dtype=bool)
    _check_paired(base, trained)
    b = int(np.sum(base & ~trained))
    c = int(np.sum(~base & trained))
    return mcnemar_counts(b, c, exact)


def mcnemar_counts(b: int, c: int, exact: bool | None = None) -> McNemar:
    """McNemar's test from the discordant counts of a 2x2 table."""
    n = b + c
    use_exact = n < EXACT_BELOW if exact is None else exact
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, use_exact)
    if use_exact:
        return McNemar(b, c, float(min(b, c)), float(stats.binomtest(min(b, c), n, 0.5).pvalue), True)
    statistic = (abs(b - c) - 1) ** 2 / n
    return McNemar(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)), False)
