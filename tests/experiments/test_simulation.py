"""Statistical properties by simulation: A/A false positives, power as predicted,
peeking, and interleaving against A/B (benchmarks/bench_experiments.py runs the
same with more repetitions)."""

from __future__ import annotations

import numpy as np
import pytest

from sieve.experiments.design import power_proportions, sample_size_proportions
from sieve.experiments.simulate import (
    RankerScenario,
    RankerWorld,
    aa_false_positive_rate,
    ab_detection_rate,
    impressions_for_power,
    peeking_error_rates,
)


def test_aa_false_positive_rate_is_nominal() -> None:
    rng = np.random.default_rng(11)
    fpr = aa_false_positive_rate(n_per_arm=20_000, base_rate=0.05, reps=1000, rng=rng)
    assert 0.03 <= fpr <= 0.07


def test_ab_power_matches_the_calculator() -> None:
    n = sample_size_proportions(0.05, 0.10, power=0.8)
    predicted = power_proportions(0.05, 0.10, n)
    observed = ab_detection_rate(n, 0.05, 0.10, reps=1000, rng=np.random.default_rng(12))
    assert abs(observed - predicted) <= 0.10, (observed, predicted)
    # and at a quarter of the sample the power drops as predicted too
    predicted_q = power_proportions(0.05, 0.10, n // 4)
    observed_q = ab_detection_rate(n // 4, 0.05, 0.10, reps=1000, rng=np.random.default_rng(13))
    assert abs(observed_q - predicted_q) <= 0.10


def test_peeking_inflates_naive_but_not_sequential_errors() -> None:
    res = peeking_error_rates(
        n_looks=100,
        batch_per_arm=500,
        base_rate=0.05,
        reps=1000,
        rng=np.random.default_rng(14),
        tau=0.005,
    )
    assert res.naive > 0.2  # stopping at the first p < .05 of 100 looks
    assert res.sequential <= 0.06
    assert 0.03 <= res.final_only <= 0.07


def test_interleaving_needs_fewer_impressions_than_ab() -> None:
    world = RankerWorld(RankerScenario(n_contexts=3000))
    a, b = world.clicks_per_impression
    assert a > b  # the good ranker gets more clicks
    rng = np.random.default_rng(15)
    il = world.interleaving_power([5000], reps=100, rng=rng)[0]
    ab = world.ab_power([2500], reps=100, rng=rng)[0]  # 5,000 impressions in all
    assert il >= 0.6 and ab <= 0.45, (il, ab)  # measured: 0.75 and 0.24


def test_interleaving_of_equally_good_rankers_keeps_the_error_rate() -> None:
    """Two rankers with the same noise level (different draws): no preference."""
    world = RankerWorld(RankerScenario(n_contexts=3000, good_noise=1.0, weak_noise=1.0))
    fpr = world.interleaving_power([2000], reps=200, rng=np.random.default_rng(16))[0]
    assert fpr <= 0.08


def test_impressions_for_power_interpolates() -> None:
    assert impressions_for_power([100, 1000], [0.6, 1.0]) == pytest.approx(10**2.5)
    assert impressions_for_power([100, 1000], [0.9, 1.0]) == 100
    assert impressions_for_power([100, 1000], [0.1, 0.2]) == float("inf")
