"""Off-policy evaluation: a target policy's CTR from another policy's logs.

Logs hold, per impression i, the context x_i, the action a_i the logging
policy μ took with its propensity μ_i = μ(a_i | x_i) > 0, and the reward r_i
(click). For a target policy π with π_i = π(a_i | x_i) and importance weight
w_i = π_i/μ_i (optionally clipped at M: min(w_i, M), less variance, some
bias):

- IPS:   V̂ = (1/n)·Σ w_i·r_i  — unbiased when π ≪ μ (unclipped);
- SNIPS: V̂ = Σ w_i·r_i / Σ w_i  — self-normalised, slightly biased, much less
  variance; interval by the delta method on the ratio,
  se² = Σ w_i²(r_i − V̂)² / (Σ w_i)², or by a bootstrap over impressions;
- DR:    V̂ = (1/n)·Σ [ Σ_a π(a|x_i)·r̂(x_i, a) + w_i·(r_i − r̂(x_i, a_i)) ]
  with a reward model r̂: unbiased if either μ or r̂ is right, and lower
  variance than IPS when r̂ is good.

IPS and DR intervals are the Student-t intervals of the means of their
per-impression terms (`sieve.evaluate.stats.mean_ci`, CLT). The effective
sample size (Σw)²/Σw² says how many on-policy impressions the log is worth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from sieve.evaluate.stats import Interval, bootstrap_ci, mean_ci

FloatArray = NDArray[np.float64]
RewardModel = ArrayLike | Callable[[NDArray[np.int64]], ArrayLike]

__all__ = [
    "OPEResult",
    "doubly_robust",
    "effective_sample_size",
    "evaluate_policy",
    "importance_weights",
    "ips",
    "snips",
]


@dataclass(frozen=True)
class OPEResult:
    """An estimate with its interval, the effective sample size of the weights,
    the number of impressions and how many weights were clipped."""

    estimator: str
    interval: Interval
    ess: float
    n: int
    n_clipped: int = 0

    @property
    def estimate(self) -> float:
        return self.interval.mean


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _target_of_logged(
    target: ArrayLike, actions: ArrayLike | None, n: int
) -> tuple[FloatArray, FloatArray | None, NDArray[np.int64] | None]:
    """π(a_i|x_i) per impression, plus the full (n, K) matrix and actions if given."""
    t = np.asarray(target, dtype=np.float64)
    if t.ndim == 1:
        if t.size != n:
            raise ValueError(f"target must have one probability per impression ({t.size} != {n})")
        return t, None, None
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(f"target must be (n,) or (n, n_actions) with n={n}, got {t.shape}")
    if actions is None:
        raise ValueError("a (n, n_actions) target needs the logged actions")
    a = np.asarray(actions, dtype=np.int64).ravel()
    if a.size != n or a.min(initial=0) < 0 or a.max(initial=0) >= t.shape[1]:
        raise ValueError(f"actions must be n={n} indices in [0, {t.shape[1]})")
    if np.any(t < 0) or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("each row of target must be a probability distribution over actions")
    return t[np.arange(n), a], t, a


def importance_weights(
    propensities: ArrayLike,
    target: ArrayLike,
    actions: ArrayLike | None = None,
    clip: float | None = None,
) -> tuple[FloatArray, int]:
    """w_i = π(a_i|x_i)/μ_i, clipped at ``clip``; returns (weights, number clipped).

    ``target`` is either π(a_i|x_i) per impression (n,) or the full distribution
    (n, n_actions) together with the logged ``actions``.
    """
    mu = np.asarray(propensities, dtype=np.float64).ravel()
    if mu.size == 0:
        raise ValueError("no logged impressions")
    if np.any(~np.isfinite(mu)) or np.any(mu <= 0) or np.any(mu > 1):
        raise ValueError("logging propensities must lie in (0, 1]")
    pi, _, _ = _target_of_logged(target, actions, mu.size)
    w = pi / mu
    n_clipped = 0
    if clip is not None:
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        n_clipped = int((w > clip).sum())
        w = np.minimum(w, clip)
    return w, n_clipped


def effective_sample_size(weights: ArrayLike) -> float:
    """(Σw)²/Σw² (= n for equal weights)."""
    w = np.asarray(weights, dtype=np.float64)
    s2 = float((w * w).sum())
    return 0.0 if s2 == 0 else float(w.sum()) ** 2 / s2


def _rewards(rewards: ArrayLike, n: int) -> FloatArray:
    r = np.asarray(rewards, dtype=np.float64).ravel()
    if r.size != n or not np.all(np.isfinite(r)):
        raise ValueError(f"rewards must be {n} finite values")
    return r


def ips(
    rewards: ArrayLike,
    propensities: ArrayLike,
    target: ArrayLike,
    actions: ArrayLike | None = None,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
) -> OPEResult:
    """Inverse propensity scoring: mean of w_i·r_i with its t interval."""
    _check_confidence(confidence)
    w, n_clipped = importance_weights(propensities, target, actions, clip)
    r = _rewards(rewards, w.size)
    return OPEResult("ips", mean_ci(w * r, confidence), effective_sample_size(w), w.size, n_clipped)


def snips(
    rewards: ArrayLike,
    propensities: ArrayLike,
    target: ArrayLike,
    actions: ArrayLike | None = None,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
    method: Literal["delta", "bootstrap"] = "delta",
    n_resamples: int = 2000,
    seed: int | None = None,
) -> OPEResult:
    """Self-normalised IPS Σw·r/Σw; interval by the delta method (default) or a
    percentile bootstrap over impressions."""
    _check_confidence(confidence)
    w, n_clipped = importance_weights(propensities, target, actions, clip)
    r = _rewards(rewards, w.size)
    total = float(w.sum())
    if total == 0:
        raise ValueError("all importance weights are 0: the target never takes a logged action")
    v = float((w * r).sum()) / total
    ess = effective_sample_size(w)
    if method == "delta":
        se = math.sqrt(float((w * w * (r - v) ** 2).sum())) / total
        z = float(scipy.stats.norm.ppf(0.5 + confidence / 2))
        iv = Interval(v, v - z * se, v + z * se)
    elif method == "bootstrap":

        def ratio(idx: FloatArray, axis: int = -1) -> FloatArray:
            k = idx.astype(np.int64)
            return np.asarray((w[k] * r[k]).sum(axis=axis) / w[k].sum(axis=axis))

        boot = bootstrap_ci(
            np.arange(w.size, dtype=np.float64),
            ratio,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        iv = Interval(v, boot.low, boot.high)
    else:
        raise ValueError(f"method must be 'delta' or 'bootstrap', got {method!r}")
    return OPEResult("snips", iv, ess, w.size, n_clipped)


def _reward_matrix(reward_model: RewardModel, n: int, k: int) -> FloatArray:
    if callable(reward_model):
        cols = [
            np.asarray(reward_model(np.full(n, a, dtype=np.int64)), dtype=np.float64).ravel()
            for a in range(k)
        ]
        rhat = np.stack(cols, axis=1)
    else:
        rhat = np.asarray(reward_model, dtype=np.float64)
    if rhat.shape != (n, k) or not np.all(np.isfinite(rhat)):
        raise ValueError(f"reward model must give finite (n, n_actions) = {(n, k)} predictions")
    return rhat


def doubly_robust(
    rewards: ArrayLike,
    propensities: ArrayLike,
    target: ArrayLike,
    actions: ArrayLike,
    reward_model: RewardModel,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
) -> OPEResult:
    """Doubly robust estimate (module docstring) with its t interval.

    ``target``: (n, n_actions) distribution of the target policy per impression;
    ``reward_model``: predicted rewards r̂(x_i, a) as an (n, n_actions) array, or a
    function mapping an action per impression (n,) to predictions (n,) for the
    logged contexts (called once per action).
    """
    _check_confidence(confidence)
    t = np.asarray(target, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError("doubly robust needs the full (n, n_actions) target distribution")
    w, n_clipped = importance_weights(propensities, t, actions, clip)
    r = _rewards(rewards, w.size)
    a = np.asarray(actions, dtype=np.int64).ravel()
    rhat = _reward_matrix(reward_model, w.size, t.shape[1])
    direct = (t * rhat).sum(axis=1)
    terms = direct + w * (r - rhat[np.arange(w.size), a])
    return OPEResult("dr", mean_ci(terms, confidence), effective_sample_size(w), w.size, n_clipped)


def evaluate_policy(
    rewards: ArrayLike,
    propensities: ArrayLike,
    target: ArrayLike,
    actions: ArrayLike,
    reward_model: RewardModel | None = None,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
) -> dict[str, OPEResult]:
    """IPS, SNIPS and (given a reward model) DR estimates of the target policy."""
    out = {
        "ips": ips(rewards, propensities, target, actions, clip=clip, confidence=confidence),
        "snips": snips(rewards, propensities, target, actions, clip=clip, confidence=confidence),
    }
    if reward_model is not None:
        out["dr"] = doubly_robust(
            rewards, propensities, target, actions, reward_model, clip=clip, confidence=confidence
        )
    return out
