"""Bandit policies: propensities, updates, persistence, and the regret scenario."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from sieve.config import ConfigError
from sieve.experiments.simulate import bandit_rates, run_bandit
from sieve.explore.bandits import (
    UCB1,
    BanditPolicy,
    EpsilonGreedy,
    LinUCB,
    ThompsonSampling,
    load_policy,
)
from sieve.storage.cache import Cache, MemoryCache, RedisCache, open_cache

REDIS_URL = os.environ.get("SIEVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ARMS = [f"item{k}" for k in range(6)]


def _trained(policy: BanditPolicy, rng: np.random.Generator) -> BanditPolicy:
    rates = np.linspace(0.05, 0.4, len(ARMS))
    for _ in range(300):
        arm = ARMS[int(rng.integers(len(ARMS)))]
        policy.update(arm, float(rng.random() < rates[ARMS.index(arm)]))
    return policy


POLICIES = {
    "epsilon_greedy": lambda: EpsilonGreedy(0.2),
    "ucb1": lambda: UCB1(),
    "thompson": lambda: ThompsonSampling(1.0, 1.0, n_draws=2000),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_single_slot_propensities_sum_to_one(name: str) -> None:
    rng = np.random.default_rng(0)
    policy = _trained(POLICIES[name](), rng)
    p = policy.probabilities(ARMS, rng)
    assert p.shape == (len(ARMS),) and np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0)
    chosen, prop = policy.select(ARMS, rng)
    assert len(chosen) == 1 and chosen[0] in ARMS and 0 < prop[0] <= 1
    # multi-slot: n distinct arms, inclusion probabilities sum to n
    chosen3, prop3 = policy.select(ARMS, rng, n=3)
    assert len(set(chosen3)) == 3 and np.all((prop3 > 0) & (prop3 <= 1))
    assert policy.probabilities(ARMS, rng, n=3).sum() == pytest.approx(3.0)


def test_epsilon_greedy_propensities_are_exact() -> None:
    rng = np.random.default_rng(1)
    policy = EpsilonGreedy(0.3)
    policy.update_many(["a", "b", "c"], [0.0, 1.0, 0.0])
    p = policy.probabilities(["a", "b", "c"])
    assert p.tolist() == pytest.approx([0.1, 0.8, 0.1])  # ε/3 and 1 − ε + ε/3
    picks = [policy.select(["a", "b", "c"], rng)[0][0] for _ in range(4000)]
    assert picks.count("b") / 4000 == pytest.approx(0.8, abs=0.02)
    # untried arms are tried first
    assert policy.probabilities(["a", "new"]).tolist() == pytest.approx([0.15, 0.85])


def test_thompson_propensity_matches_choice_frequency() -> None:
    rng = np.random.default_rng(2)
    policy = ThompsonSampling(n_draws=1000)
    policy.update_many(["a"] * 10 + ["b"] * 10, [1] * 4 + [0] * 6 + [1] * 3 + [0] * 7)
    p = policy.probabilities(["a", "b"], rng)
    picks = [policy.select(["a", "b"], rng)[0][0] for _ in range(3000)]
    assert picks.count("a") / 3000 == pytest.approx(p[0], abs=0.04)
    with pytest.raises(ValueError, match="rng"):
        policy.probabilities(["a", "b"])


def test_ucb1_plays_each_arm_then_is_deterministic() -> None:
    policy = UCB1()
    rng = np.random.default_rng(3)
    first = []
    for _ in ARMS:
        arm = policy.select(ARMS, rng)[0][0]
        first.append(arm)
        policy.update(arm, 0.0)
    assert first == ARMS  # each untried arm once, in candidate order
    _, prop = policy.select(ARMS, rng)
    assert prop.tolist() == [1.0]
    index = policy.index(ARMS)
    assert np.all(np.isfinite(index))


def test_update_many_equals_updates() -> None:
    rng = np.random.default_rng(4)
    arms = [ARMS[int(k)] for k in rng.integers(0, len(ARMS), 200)]
    rewards = (rng.random(200) < 0.3).astype(float)
    one, many = ThompsonSampling(), ThompsonSampling()
    for a, r in zip(arms, rewards, strict=True):
        one.update(a, r)
    many.update_many(arms, rewards)
    assert one.state_dict() == many.state_dict()
    with pytest.raises(ValueError):
        many.update_many(["a"], [1.0, 0.0])


def test_linucb_learns_and_round_trips() -> None:
    rng = np.random.default_rng(5)
    dim = 4
    theta = np.array([1.0, -0.5, 0.3, 0.0])
    policy = LinUCB(alpha=0.5, dim=dim)
    for _ in range(400):
        x = rng.normal(size=(5, dim))
        chosen, prop = policy.select([f"a{k}" for k in range(5)], rng, features=x)
        k = int(chosen[0][1:])
        assert prop.tolist() == [1.0]
        policy.update(chosen[0], float(x[k] @ theta + rng.normal(0, 0.1)), features=x[k])
    est = np.linalg.solve(policy.A, policy.b)
    assert np.allclose(est, theta, atol=0.15)
    cache = MemoryCache()
    policy.save(cache, "lin")
    back = LinUCB.load(cache, "lin")
    assert np.allclose(back.A, policy.A) and np.allclose(back.b, policy.b)
    assert back.config == policy.config
    x = rng.normal(size=(5, dim))
    assert np.allclose(back.scores(x), policy.scores(x))
    with pytest.raises(ValueError, match="shape"):
        policy.select(["a", "b"], rng, features=np.ones((3, dim)))


def _round_trip(cache: Cache) -> None:
    rng = np.random.default_rng(6)
    for name, make in POLICIES.items():
        policy = _trained(make(), rng)
        key = f"bandit:{name}"
        policy.save(cache, key)
        back = load_policy(cache, key)
        assert type(back) is type(policy)
        assert back.config == policy.config
        assert back.state_dict() == policy.state_dict()
        # events keep flowing into the restored state
        back.update(ARMS[0], 1.0)
        back.save(cache, key)
        assert type(policy).load(cache, key).state_dict() == back.state_dict()
    with pytest.raises(TypeError):
        UCB1.load(cache, "bandit:thompson")
    with pytest.raises(KeyError):
        load_policy(cache, "bandit:absent")


def test_state_round_trip_memory_cache() -> None:
    _round_trip(MemoryCache())


@pytest.fixture
def redis_cache() -> Iterator[RedisCache]:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as e:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")
    sep = "&" if "?" in REDIS_URL else "?"
    cache = open_cache(f"{REDIS_URL}{sep}prefix=sieve_test_bandit_{uuid.uuid4().hex}:")
    assert isinstance(cache, RedisCache)
    try:
        yield cache
    finally:
        cache.clear_prefix("")
        cache.close()


def test_state_round_trip_redis(redis_cache: RedisCache) -> None:
    _round_trip(redis_cache)


def test_invalid_configs_and_inputs() -> None:
    with pytest.raises(ConfigError):
        EpsilonGreedy(1.5)
    with pytest.raises(ConfigError):
        ThompsonSampling(alpha=0.0)
    with pytest.raises(ValueError, match="n must be"):
        UCB1().select(["a"], np.random.default_rng(0), n=2)
    with pytest.raises(ValueError, match="distinct"):
        UCB1().select(["a", "a"], np.random.default_rng(0))


def test_thompson_beats_ucb1_in_the_regret_scenario() -> None:
    """20 arms, Beta(2, 8) rates with arms 3/7/15 at .50/.40/.45, 500 rounds
    (20 seeds here; the benchmark runs 100)."""
    totals: dict[str, list[float]] = {"thompson": [], "ucb1": []}
    for seed in range(20):
        for name, make in (
            ("thompson", lambda: ThompsonSampling(n_draws=100)),
            ("ucb1", lambda: UCB1()),
        ):
            rng = np.random.default_rng(seed)
            rates = bandit_rates(rng)
            _, rewards, props = run_bandit(make(), rates, 500, rng)
            assert np.all((props > 0) & (props <= 1))
            totals[name].append(float(rewards.sum()))
    assert np.mean(totals["thompson"]) >= np.mean(totals["ucb1"])
