"""Off-policy estimators: exact unbiasedness, interval coverage, clipping, inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sieve.evaluate.offpolicy import (
    doubly_robust,
    effective_sample_size,
    evaluate_policy,
    importance_weights,
    ips,
    snips,
)
from sieve.experiments.simulate import OPEScenario, OPEWorld

# two equally likely contexts, two actions
P_CONTEXT = np.array([0.5, 0.5])
CLICK = np.array([[0.2, 0.6], [0.5, 0.1]])  # P(click | x, a)
LOGGING = np.array([[0.7, 0.3], [0.4, 0.6]])
TARGET = np.array([[0.1, 0.9], [0.8, 0.2]])
TRUE_VALUE = float((P_CONTEXT[:, None] * TARGET * CLICK).sum())


def _enumerate() -> list[tuple[float, int, int, float]]:
    """Every single-impression log (x, a, r) with its probability."""
    out = []
    for x, a, r in itertools.product(range(2), range(2), (0.0, 1.0)):
        pr = P_CONTEXT[x] * LOGGING[x, a] * (CLICK[x, a] if r else 1 - CLICK[x, a])
        out.append((pr, x, a, r))
    return out


def test_ips_and_dr_are_exactly_unbiased() -> None:
    logs = _enumerate()
    assert sum(pr for pr, *_ in logs) == pytest.approx(1.0)
    bad_model = np.array([[0.9, 0.0], [0.3, 0.7]])  # any reward model keeps DR unbiased
    e_ips = e_dr = 0.0
    for pr, x, a, r in logs:
        est = ips([r], [LOGGING[x, a]], TARGET[x][None, :], [a]).estimate
        dr = doubly_robust([r], [LOGGING[x, a]], TARGET[x][None, :], [a], bad_model[x][None, :])
        e_ips += pr * est
        e_dr += pr * dr.estimate
    assert e_ips == pytest.approx(TRUE_VALUE, abs=1e-12)
    assert e_dr == pytest.approx(TRUE_VALUE, abs=1e-12)


def test_snips_is_consistent_and_dr_with_true_model_has_less_variance() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    x = rng.integers(0, 2, n)
    a = (rng.random(n) < LOGGING[x, 1]).astype(np.int64)
    r = (rng.random(n) < CLICK[x, a]).astype(float)
    res = evaluate_policy(r, LOGGING[x, a], TARGET[x], a, CLICK[x])
    for est in res.values():
        assert est.interval.low <= TRUE_VALUE <= est.interval.high
        assert est.n == n
    assert res["dr"].interval.half_width < res["ips"].interval.half_width


def test_reward_model_as_function() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    x = rng.integers(0, 2, n)
    a = (rng.random(n) < LOGGING[x, 1]).astype(np.int64)
    r = (rng.random(n) < CLICK[x, a]).astype(float)

    def model(actions: np.ndarray) -> np.ndarray:
        return CLICK[x, actions]

    by_array = doubly_robust(r, LOGGING[x, a], TARGET[x], a, CLICK[x])
    by_function = doubly_robust(r, LOGGING[x, a], TARGET[x], a, model)
    assert by_function.interval == by_array.interval


def test_weights_clipping_and_ess() -> None:
    w, clipped = importance_weights([0.5, 0.1, 0.2], [0.5, 0.9, 0.2], clip=5.0)
    assert w.tolist() == pytest.approx([1.0, 5.0, 1.0]) and clipped == 1
    assert effective_sample_size([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert effective_sample_size([1.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    r = [1.0, 0.0, 1.0]
    a = ips(r, [0.5, 0.1, 0.2], [0.5, 0.9, 0.2])
    b = ips(r, [0.5, 0.1, 0.2], [0.5, 0.9, 0.2], clip=5.0)
    assert b.n_clipped == 1 and b.ess >= a.ess


def test_snips_bootstrap_close_to_delta() -> None:
    w = OPEWorld(OPEScenario(seed=3))
    logs = w.sample_logs(3000, np.random.default_rng(3))
    args = (logs.rewards, logs.propensities, logs.target, logs.actions)
    delta = snips(*args)
    boot = snips(*args, method="bootstrap", n_resamples=1000, seed=0)
    assert boot.estimate == delta.estimate
    assert boot.interval.half_width == pytest.approx(delta.interval.half_width, rel=0.2)


def test_snips_and_dr_intervals_cover_the_true_ctr() -> None:
    """100 repetitions of 5,000 logged impressions of an ε-softmax logging policy;
    the target (a better softmax ranker) has an exactly known CTR."""
    world = OPEWorld()
    truth = world.true_value()
    assert truth > world.true_value(world.logging)  # the target is the better policy
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for rep in range(100):
        logs = world.sample_logs(5000, np.random.default_rng(100 + rep))
        res = evaluate_policy(
            logs.rewards, logs.propensities, logs.target, logs.actions, logs.reward_model
        )
        for name, r in res.items():
            covered[name] += r.interval.low <= truth <= r.interval.high
    assert covered["snips"] >= 90 and covered["dr"] >= 90, covered


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propensities": [0.0, 0.5]}, "propensities"),
        ({"target": np.array([[0.5, 0.6], [0.5, 0.5]])}, "distribution"),
        ({"actions": [0, 2]}, "actions"),
        ({"rewards": [1.0]}, "rewards"),
    ],
)
def test_invalid_inputs(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "rewards": [1.0, 0.0],
        "propensities": [0.5, 0.5],
        "target": np.array([[0.5, 0.5], [0.2, 0.8]]),
        "actions": [0, 1],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ips(**args)  # type: ignore[arg-type]
