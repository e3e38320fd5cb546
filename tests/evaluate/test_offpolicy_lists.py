"""List-level off-policy estimators under the position-based model, on seeded
worlds whose true answer is computed exactly."""

from __future__ import annotations

import numpy as np
import pytest

from sieve.evaluate.offpolicy_lists import (
    LoggedSlots,
    estimate_lists,
    examination_from_random,
    item_relevance,
)

N_ITEMS, N_LIST, N_USERS = 40, 5, 30
THETA = 1.0 / np.log2(np.arange(N_LIST) + 2)


def world(seed: int = 0) -> np.ndarray:
    """γ(user, item): true click probability of an examined item."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.5, size=(N_USERS, N_ITEMS))


def log_random(gamma: np.ndarray, requests: int, seed: int) -> tuple[LoggedSlots, np.ndarray]:
    """Uniformly random lists of N_LIST from all items (propensity n/P), PBM clicks."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, requests)
    items = np.stack([rng.choice(N_ITEMS, N_LIST, replace=False) for _ in range(requests)])
    p = gamma[users[:, None], items] * THETA[None, :]
    clicks = (rng.random(p.shape) < p).astype(np.float64)
    slots = LoggedSlots(
        request=np.repeat(np.arange(requests), N_LIST),
        item=items.ravel(),
        position=np.tile(np.arange(N_LIST), requests),
        propensity=np.full(requests * N_LIST, N_LIST / N_ITEMS),
        click=clicks.ravel(),
        random=np.ones(requests * N_LIST, bool),
        n_requests=requests,
    )
    return slots, users


def target_lists(gamma: np.ndarray, users: np.ndarray, offset: int = 0) -> np.ndarray:
    """A deterministic target: each user's items ranked by γ, from rank `offset`."""
    order = np.argsort(-gamma, axis=1)[:, offset : offset + N_LIST]
    return order[users]


def true_ctr(gamma: np.ndarray, lists: np.ndarray, users: np.ndarray) -> float:
    return float((gamma[users[:, None], lists] * THETA).sum(axis=1).mean() / N_LIST)


def test_ips_snips_dr_contain_the_truth_of_a_deterministic_target() -> None:
    gamma = world()
    slots, users = log_random(gamma, 4000, seed=1)
    lists = target_lists(gamma, users)
    truth = true_ctr(gamma, lists, users)
    rel = item_relevance(slots, THETA, N_ITEMS)
    res = estimate_lists(slots, lists, THETA, rel)
    for name in ("ips", "snips", "dr"):
        iv = res.estimates[name].interval
        assert iv.low <= truth <= iv.high, (name, iv, truth)
    # the target is much better than the random logging policy, and the log says so
    assert res.logging.high < res.estimates["snips"].interval.low
    assert res.support == pytest.approx(1.0, abs=0.1)
    assert not res.warnings


def test_ips_interval_coverage_over_seeds() -> None:
    """The 95% IPS interval contains the exact value in most of 40 seeded logs
    (≥ 33/40: a binomial lower tail well below 1% when true coverage is 95%)."""
    gamma = world(3)
    covered = 0
    for seed in range(40):
        slots, users = log_random(gamma, 600, seed=100 + seed)
        lists = target_lists(gamma, users, offset=3)
        truth = true_ctr(gamma, lists, users)
        iv = estimate_lists(slots, lists, THETA).estimates["ips"].interval
        covered += iv.low <= truth <= iv.high
    assert covered >= 33


def test_examination_recovered_from_random_lists() -> None:
    gamma = world(5)
    slots, _ = log_random(gamma, 20000, seed=7)
    theta = examination_from_random(slots.position, slots.click, N_LIST)
    assert theta[0] == 1.0
    np.testing.assert_allclose(theta, THETA / THETA[0], atol=0.06)
    assert np.all(np.diff(theta) <= 1e-12)  # non-increasing


def test_no_clicks_means_no_position_evidence() -> None:
    theta = examination_from_random(np.arange(5).repeat(30), np.zeros(150), 5)
    np.testing.assert_array_equal(theta, np.ones(5))


def test_thin_support_warns_and_is_biased_low() -> None:
    """Logged lists only ever show items 0-9; a target of items 20-24 is never
    shown, so its estimate is 0 and the result says the support is thin."""
    rng = np.random.default_rng(0)
    requests = 500
    items = np.stack([rng.choice(10, N_LIST, replace=False) for _ in range(requests)])
    slots = LoggedSlots(
        np.repeat(np.arange(requests), N_LIST),
        items.ravel(),
        np.tile(np.arange(N_LIST), requests),
        np.full(requests * N_LIST, N_LIST / 10),
        (rng.random(requests * N_LIST) < 0.2).astype(float),
        np.ones(requests * N_LIST, bool),
        requests,
    )
    target = np.tile(np.arange(20, 25), (requests, 1))
    res = estimate_lists(slots, target, THETA)
    assert res.matched == 0 and res.support == 0.0
    assert res.estimates["ips"].estimate == 0.0
    assert "snips" not in res.estimates  # no weight at all: no ratio
    assert res.warnings and "thin support" in res.warnings[0]


def test_subset_renumbers_requests() -> None:
    gamma = world()
    slots, _ = log_random(gamma, 10, seed=0)
    keep = np.zeros(10, bool)
    keep[[2, 7]] = True
    sub, old = slots.subset(keep)
    assert sub.n_requests == 2 and old.tolist() == [2, 7]
    assert sub.request.tolist() == [0] * N_LIST + [1] * N_LIST


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        LoggedSlots(
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(1),
            np.zeros(1),
            np.ones(1, bool),
            1,
        )
    gamma = world()
    slots, _ = log_random(gamma, 5, seed=0)
    with pytest.raises(ValueError, match="target must be"):
        estimate_lists(slots, np.zeros((4, 5), np.int64), THETA)
