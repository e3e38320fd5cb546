"""Always-valid p-values and confidence sequences: peek as often as you like.

A fixed-horizon p-value is valid once, at the planned sample size; checking
it after every batch and stopping at the first p < α inflates the false
positive rate far beyond α. The mixture sequential probability ratio test
(mSPRT; Johari, Koomen, Pekelis & Walsh, "Always valid inference", 2017/2022)
gives a p-value sequence p_n such that P(∃n: p_n ≤ α) ≤ α under H₀.

For the difference of two arms, θ̂_n = ȳ_B − ȳ_A with variance
V_n = σ_A²/n_A + σ_B²/n_B, approximately N(θ, V_n). Mixing the likelihood
ratio over a normal prior θ ~ N(0, τ²) gives

    Λ_n = √(V_n/(V_n + τ²)) · exp(θ̂_n²·τ² / (2·V_n·(V_n + τ²)))

a non-negative martingale under H₀ (θ = 0), so by Ville's inequality
p_n = min(1, min_{m ≤ n} 1/Λ_m) is always valid. Inverting the test at every
θ₀ gives the confidence sequence

    θ̂_n ± √( V_n(V_n + τ²)/τ² · (2·log(1/α) + log((V_n + τ²)/V_n)) ).

τ is the effect size (in the metric's units) the test is tuned for: power is
best for effects near τ, and any τ > 0 keeps the guarantee. Variances are
plug-in estimates (pooled under H₀ for proportions), which makes the
guarantee asymptotic; `burn_in` units per arm before the first look keep the
plug-in from being wild.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sieve.config import Config, ConfigError

FloatArray = NDArray[np.float64]

__all__ = [
    "MSPRT",
    "SequentialConfig",
    "always_valid_pvalues",
    "always_valid_pvalues_means",
    "always_valid_pvalues_proportions",
    "confidence_sequence",
    "msprt_log_lr",
]


def msprt_log_lr(diff: ArrayLike, var: ArrayLike, tau: float) -> FloatArray:
    """log Λ = ½·log(V/(V + τ²)) + θ̂²τ²/(2V(V + τ²)) (elementwise; −inf where V ≤ 0)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    t2 = tau * tau
    ok = v > 0
    vs = np.where(ok, v, 1.0)
    out = 0.5 * np.log(vs / (vs + t2)) + d * d * t2 / (2.0 * vs * (vs + t2))
    return np.asarray(np.where(ok, out, -np.inf), dtype=np.float64)


def always_valid_pvalues(diff: ArrayLike, var: ArrayLike, tau: float) -> FloatArray:
    """p_n = min(1, min_{m ≤ n} 1/Λ_m) along the last axis (the looks)."""
    log_lr = msprt_log_lr(diff, var, tau)
    p = np.exp(-np.maximum(log_lr, 0.0))
    return np.asarray(np.minimum.accumulate(p, axis=-1), dtype=np.float64)


def always_valid_pvalues_proportions(
    clicks_a: ArrayLike,
    n_a: ArrayLike,
    clicks_b: ArrayLike,
    n_b: ArrayLike,
    tau: float,
    burn_in: int = 100,
) -> FloatArray:
    """Always-valid p-values from cumulative successes/trials per arm at each look.

    Inputs are cumulative totals with the looks on the last axis (any leading
    shape, e.g. repetitions × looks). V = p̄(1 − p̄)(1/n_A + 1/n_B) with the
    pooled rate p̄ (the variance under H₀). Looks with fewer than ``burn_in``
    trials in either arm have p = 1.
    """
    xa, na = np.asarray(clicks_a, dtype=np.float64), np.asarray(n_a, dtype=np.float64)
    xb, nb = np.asarray(clicks_b, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    ready = (na >= max(burn_in, 1)) & (nb >= max(burn_in, 1))
    na1, nb1 = np.maximum(na, 1.0), np.maximum(nb, 1.0)
    pbar = (xa + xb) / (na1 + nb1)
    var = np.where(ready, pbar * (1 - pbar) * (1 / na1 + 1 / nb1), 0.0)
    return always_valid_pvalues(xb / nb1 - xa / na1, var, tau)


def always_valid_pvalues_means(
    a: ArrayLike,
    b: ArrayLike,
    tau: float,
    looks: ArrayLike | None = None,
    burn_in: int = 2,
) -> FloatArray:
    """Always-valid p-values of a stream of paired arrivals.

    ``a`` and ``b`` are the per-unit observations of each arm in arrival order
    (same length: the arms grow together, one unit each per step); ``looks`` are
    the numbers of units per arm at which the p-value is read (default: every
    unit). V = s_A²/n + s_B²/n with running sample variances (ddof = 1).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"a and b must have the same length ({x.size} != {y.size})")
    n_all = np.arange(1, x.size + 1, dtype=np.float64)
    k = (
        np.asarray(looks, dtype=np.int64)
        if looks is not None
        else np.arange(1, x.size + 1, dtype=np.int64)
    )
    if k.size and (k.min() < 1 or k.max() > x.size):
        raise ValueError(f"looks must lie in 1..{x.size}")
    n = n_all[k - 1]
    sx, sy = np.cumsum(x)[k - 1], np.cumsum(y)[k - 1]
    qx, qy = np.cumsum(x * x)[k - 1], np.cumsum(y * y)[k - 1]
    denom = np.maximum(n - 1, 1)
    vx = np.maximum(qx - sx * sx / n, 0.0) / denom
    vy = np.maximum(qy - sy * sy / n, 0.0) / denom
    var = np.where(n >= max(burn_in, 2), (vx + vy) / n, 0.0)
    return always_valid_pvalues(sy / n - sx / n, var, tau)


def confidence_sequence(
    diff: ArrayLike, var: ArrayLike, tau: float, alpha: float = 0.05
) -> tuple[FloatArray, FloatArray]:
    """Always-valid (1 − α) bounds of θ at each look (formula in the module
    docstring), intersected over the looks (last axis) so they only shrink."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))
    half = np.where(v > 0, half, np.inf)
    low = np.maximum.accumulate(d - half, axis=-1)
    high = np.minimum.accumulate(d + half, axis=-1)
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


@dataclass(frozen=True)
class SequentialConfig(Config):
    """mSPRT settings: `tau` (mixing sd = effect size of interest, metric units),
    `alpha` (for `reject` and the confidence sequence), `burn_in` (units per
    arm before the first valid look)."""

    tau: float
    alpha: float = 0.05
    burn_in: int = 100

    def validate(self) -> None:
        if not self.tau > 0:
            raise ConfigError(f"SequentialConfig.tau: must be > 0, got {self.tau}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"SequentialConfig.alpha: must be in (0, 1), got {self.alpha}")
        if self.burn_in < 2:
            raise ConfigError("SequentialConfig.burn_in: must be ≥ 2")


class MSPRT:
    """Running mSPRT of B − A for the serving path: feed per-arm sums as events
    arrive (`update`), read `p_value`, `reject` and `interval` at any time.

    State: n, Σy, Σy² per arm and the running minimum p (JSON-able via
    `to_dict` / `from_dict`). Works for means and, with 0/1 observations,
    proportions (then Σy² = Σy).
    """

    def __init__(self, config: SequentialConfig) -> None:
        self.config = config
        self.n = [0.0, 0.0]
        self.s = [0.0, 0.0]
        self.ss = [0.0, 0.0]
        self.p_value = 1.0
        self.low = -math.inf
        self.high = math.inf

    def update(self, arm: int, n: float, total: float, total_sq: float | None = None) -> float:
        """Add ``n`` observations of arm 0 (A) or 1 (B) with sum ``total`` and sum
        of squares ``total_sq`` (default = total, 0/1 data); return the new p."""
        if arm not in (0, 1):
            raise ValueError(f"arm must be 0 (A) or 1 (B), got {arm}")
        self.n[arm] += n
        self.s[arm] += total
        self.ss[arm] += total if total_sq is None else total_sq
        if min(self.n) >= self.config.burn_in:
            var = sum(
                max(self.ss[k] - self.s[k] ** 2 / self.n[k], 0.0) / (self.n[k] - 1) / self.n[k]
                for k in (0, 1)
            )
            diff = self.s[1] / self.n[1] - self.s[0] / self.n[0]
            p = float(always_valid_pvalues([diff], [var], self.config.tau)[0])
            self.p_value = min(self.p_value, p)
            lo, hi = confidence_sequence([diff], [var], self.config.tau, self.config.alpha)
            self.low, self.high = max(self.low, float(lo[0])), min(self.high, float(hi[0]))
        return self.p_value

    @property
    def reject(self) -> bool:
        """True once p ≤ alpha: the arms differ (stopping now is valid)."""
        return self.p_value <= self.config.alpha

    @property
    def interval(self) -> tuple[float, float]:
        """Always-valid (1 − alpha) interval of mean(B) − mean(A)."""
        return self.low, self.high

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "n": list(self.n),
            "s": list(self.s),
            "ss": list(self.ss),
            "p_value": self.p_value,
            "low": self.low if math.isfinite(self.low) else None,
            "high": self.high if math.isfinite(self.high) else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MSPRT:
        out = cls(SequentialConfig.from_dict(data["config"]))
        out.n, out.s, out.ss = list(data["n"]), list(data["s"]), list(data["ss"])
        out.p_value = float(data["p_value"])
        out.low = -math.inf if data.get("low") is None else float(data["low"])
        out.high = math.inf if data.get("high") is None else float(data["high"])
        return out
