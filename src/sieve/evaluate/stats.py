"""Confidence intervals and significance tests for per-user offline metrics.

Every function takes the per-user arrays produced by :mod:`sieve.evaluate.metrics`
(one value per test user). Users are the independent sampling unit, so intervals are
over users and model comparisons are *paired* by user: both models are scored on the
same users, and pairing removes the between-user variance that dwarfs most model
differences.

Inputs must be finite: filter users without relevant items (or NaN per-user errors)
before calling, rather than letting NaN silently propagate into a p-value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

__all__ = [
    "Interval",
    "PairedResult",
    "benjamini_hochberg",
    "bootstrap_ci",
    "compare_to_baseline",
    "holm_bonferroni",
    "mean_ci",
    "paired_test",
]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval [low, high]."""

    mean: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of model A against model B on the same users.

    ``mean_diff`` = mean(a − b) with its t confidence interval [ci_low, ci_high];
    ``statistic``/``p_value`` come from the chosen test; ``p_adjusted`` is filled by
    :func:`compare_to_baseline` after multiple-comparison correction.
    """

    statistic: float
    p_value: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_adjusted: float | None = None


def _values(values: ArrayLike, name: str = "values") -> FloatArray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf; filter those users first")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> Interval:
    """Mean with a Student-t interval: x̄ ± t_{(1+c)/2, n−1} · s / √n.

    Exact for normal data and, by the CLT, accurate for the means of bounded per-user
    metrics over hundreds of users. A single value has no interval (NaN bounds); a
    constant sample gives a zero-width interval.
    """
    _check_confidence(confidence)
    x = _values(values)
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, math.nan, math.nan)
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    if se == 0.0:
        return Interval(m, m, m)
    t = float(scipy.stats.t.ppf((1.0 + confidence) / 2.0, df=x.size - 1))
    return Interval(m, m - t * se, m + t * se)


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[..., Any] = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | None = None,
    method: Literal["percentile", "BCa", "basic"] = "percentile",
) -> Interval:
    """Bootstrap interval of ``statistic`` over users (``scipy.stats.bootstrap``).

    Use it for statistics without a closed-form interval (median, trimmed mean, …).
    ``Interval.mean`` holds ``statistic(values)``. The percentile method is the default
    because BCa's jackknife costs O(n²) for n users; choose ``"BCa"`` for small,
    skewed samples. Resamples are drawn in batches to cap memory at ~10⁷ floats.
    A constant sample gives a zero-width interval; a single value NaN bounds.
    """
    _check_confidence(confidence)
    x = _values(values)
    point = float(statistic(x))
    if x.size < 2:
        return Interval(point, math.nan, math.nan)
    if np.all(x == x[0]):
        return Interval(point, point, point)
    batch = max(1, min(n_resamples, 10_000_000 // x.size))
    res = scipy.stats.bootstrap(
        (x,),
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        batch=batch,
        rng=np.random.default_rng(seed),
    )
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_test(
    a: ArrayLike,
    b: ArrayLike,
    method: Literal["t", "wilcoxon"] = "t",
    confidence: float = 0.95,
) -> PairedResult:
    """Two-sided paired test of per-user values a (model A) vs b (model B).

    ``"t"``: paired t-test (``scipy.stats.ttest_rel``) on d = a − b; the default, since
    mean metric differences over many users are close to normal.
    ``"wilcoxon"``: Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero
    differences dropped), robust to heavy tails. Its statistic is scipy's
    min(W⁺, W⁻). Either way ``mean_diff`` and its interval are the t interval of d.
    All-zero differences give statistic 0 and p = 1 without warnings; a constant
    non-zero difference (up to float rounding) gives an infinite t statistic and p = 0.
    """
    if method not in ("t", "wilcoxon"):
        raise ValueError(f"method must be 't' or 'wilcoxon', got {method!r}")
    x = _values(a, "a")
    y = _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must pair up user by user ({x.size} != {y.size})")
    if x.size < 2:
        raise ValueError("a paired test needs at least two users")
    d = x - y
    ci = mean_ci(d, confidence)
    if np.all(d == 0.0):
        return PairedResult(0.0, 1.0, 0.0, 0.0, 0.0)
    if method == "t":
        if np.ptp(d) <= 8 * np.finfo(np.float64).eps * np.abs(d).max():
            # constant up to rounding: zero variance, t = ±inf (scipy would warn and
            # return a huge but arbitrary statistic)
            return PairedResult(math.copysign(math.inf, d[0]), 0.0, ci.mean, ci.low, ci.high)
        res = scipy.stats.ttest_rel(x, y)
    else:
        with warnings.catch_warnings():
            # older scipy notes its fallback to the normal approximation on ties/zeros
            warnings.filterwarnings(
                "ignore", message=".*(approximation|zeros|ties)", category=UserWarning
            )
            res = scipy.stats.wilcoxon(d, zero_method="wilcox")
    return PairedResult(float(res.statistic), float(res.pvalue), ci.mean, ci.low, ci.high)


def _p_values(p_values: ArrayLike) -> FloatArray:
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return p


def holm_bonferroni(p_values: ArrayLike) -> FloatArray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate).

    With p sorted ascending, p̃_(i) = max_{j≤i} min(1, (m − j + 1) · p_(j)), returned in
    the input order. Uniformly more powerful than plain Bonferroni, same guarantee.
    """
    p = _p_values(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(scaled)
    return out


def benjamini_hochberg(p_values: ArrayLike) -> FloatArray:
    """Benjamini–Hochberg adjusted p-values (controls the false discovery rate).

    With p sorted ascending, p̃_(i) = min_{j≥i} min(1, m · p_(j) / j), returned in the
    input order. Valid for independent or positively dependent tests.
    """
    p = _p_values(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, m * p[order] / np.arange(1, m + 1))
    out = np.empty(m)
    out[order] = np.minimum.accumulate(scaled[::-1])[::-1]
    return out


def compare_to_baseline(
    per_user: Mapping[str, ArrayLike],
    baseline: str,
    method: Literal["t", "wilcoxon"] = "t",
    correction: Literal["holm", "bh", "none"] = "holm",
    confidence: float = 0.95,
) -> dict[str, PairedResult]:
    """Paired test of every model against ``baseline``, corrected for multiplicity.

    ``per_user`` maps model name → per-user metric values (same users, same order).
    Each result compares model − baseline (positive ``mean_diff`` = better than the
    baseline for higher-is-better metrics) and carries ``p_adjusted`` from Holm
    (default, family-wise error), Benjamini–Hochberg (``"bh"``, false discovery rate)
    or no correction. Returned in the input order of the models.
    """
    if baseline not in per_user:
        raise KeyError(f"baseline {baseline!r} not among {sorted(per_user)}")
    base = per_user[baseline]
    raw = {
        name: paired_test(values, base, method=method, confidence=confidence)
        for name, values in per_user.items()
        if name != baseline
    }
    if not raw:
        return {}
    p = np.array([r.p_value for r in raw.values()])
    if correction == "holm":
        adjusted = holm_bonferroni(p)
    elif correction == "bh":
        adjusted = benjamini_hochberg(p)
    elif correction == "none":
        adjusted = p
    else:
        raise ValueError(f"correction must be 'holm', 'bh' or 'none', got {correction!r}")
    return {
        name: replace(r, p_adjusted=float(adj))
        for (name, r), adj in zip(raw.items(), adjusted, strict=True)
    }
