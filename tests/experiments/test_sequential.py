"""Always-valid p-values (mSPRT) and confidence sequences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sieve.config import ConfigError
from sieve.experiments.sequential import (
    MSPRT,
    SequentialConfig,
    always_valid_pvalues,
    always_valid_pvalues_means,
    always_valid_pvalues_proportions,
    confidence_sequence,
    msprt_log_lr,
)


def test_mixture_likelihood_ratio_by_hand() -> None:
    # θ̂ = 0.3, V = 0.01, τ = 0.2: Λ = √(.01/.05)·exp(.09·.04/(2·.01·.05))
    lam = math.sqrt(0.01 / 0.05) * math.exp(0.09 * 0.04 / (2 * 0.01 * 0.05))
    assert float(msprt_log_lr(0.3, 0.01, 0.2)) == pytest.approx(math.log(lam))
    p = always_valid_pvalues([0.0, 0.3, 0.0], [0.01, 0.01, 0.01], 0.2)
    assert p[0] == 1.0 and p[1] == pytest.approx(1 / lam) and p[2] == p[1]  # running minimum
    assert float(msprt_log_lr(0.1, 0.0, 0.2)) == -math.inf
    with pytest.raises(ValueError):
        msprt_log_lr(0.1, 0.1, 0.0)


def test_peeking_every_unit_keeps_the_error_rate() -> None:
    rng = np.random.default_rng(0)
    reps, n = 300, 1000
    rejected = 0
    naive = 0
    for _ in range(reps):
        a, b = rng.normal(0, 1, n), rng.normal(0, 1, n)
        p = always_valid_pvalues_means(a, b, tau=0.2, looks=np.arange(20, n + 1, 20))
        rejected += p[-1] <= 0.05
        k = np.arange(20, n + 1, 20)
        z = (np.cumsum(b)[k - 1] - np.cumsum(a)[k - 1]) / k / np.sqrt(2 / k)
        naive += np.any(np.abs(z) > 1.959964)
    assert rejected / reps <= 0.06
    assert naive / reps > 0.15  # 50 peeks at a fixed-horizon test


def test_detects_a_real_difference() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.2, 1, 3000)
    p = always_valid_pvalues_means(a, b, tau=0.2)
    assert p[-1] < 1e-3
    assert np.all(np.diff(p) <= 0) and p.min() >= 0


def test_proportions_shape_and_burn_in() -> None:
    n = np.arange(1, 6) * 100
    xa = np.array([[5, 10, 15, 20, 25]] * 2)
    xb = np.array([[5, 20, 40, 60, 80]] * 2)
    p = always_valid_pvalues_proportions(xa, n, xb, n, tau=0.05, burn_in=150)
    assert p.shape == (2, 5) and p[0, 0] == 1.0 and p[0, -1] < 1e-4


def test_confidence_sequence_covers_uniformly() -> None:
    rng = np.random.default_rng(2)
    misses = 0
    for _ in range(200):
        a, b = rng.normal(0, 1, 1000), rng.normal(0.1, 1, 1000)
        k = np.arange(10, 1001, 10)
        d = np.cumsum(b)[k - 1] / k - np.cumsum(a)[k - 1] / k
        low, high = confidence_sequence(d, 2.0 / k, tau=0.2)
        misses += bool(np.any((low > 0.1) | (high < 0.1)))
        assert np.all(np.diff(low) >= 0) and np.all(np.diff(high) <= 0)
    assert misses / 200 <= 0.06


def test_running_msprt_matches_batch_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    test = MSPRT(SequentialConfig(tau=0.01, burn_in=100))
    clicks_a = rng.random(5000) < 0.05
    clicks_b = rng.random(5000) < 0.08
    ps = []
    for lo in range(0, 5000, 500):
        test.update(0, 500, float(clicks_a[lo : lo + 500].sum()))
        ps.append(test.update(1, 500, float(clicks_b[lo : lo + 500].sum())))
    assert np.all(np.diff(ps) <= 0)
    assert test.reject and test.interval[0] > 0
    back = MSPRT.from_dict(json.loads(json.dumps(test.to_dict())))
    assert back.p_value == test.p_value and back.n == test.n and back.interval == test.interval
    with pytest.raises(ConfigError):
        SequentialConfig(tau=0.0)
    with pytest.raises(ValueError):
        test.update(2, 1, 1)
