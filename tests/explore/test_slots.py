"""Exploration slots: the exploited head is the ranking, the tail comes from
the bandit with exact propensities, previews teach nothing, clicks credit,
the state survives a restart through the cache, and every process on one
cache adds to the same exact sums."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from servers import REDIS_URL, redis_problem
from sieve.explore.slots import ExplorationSlots, make_policy
from sieve.storage import Cache, MemoryCache, open_cache

RANKED = [f"i{k:02d}" for k in range(20)]


@pytest.fixture(params=["memory", "redis"])
def shared_cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    """One cache several slot objects share: in-process, or a Redis prefix of its own."""
    if request.param == "memory":
        yield MemoryCache()
        return
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    cache = open_cache(f"{REDIS_URL}?prefix=sieve_slots_test_{uuid.uuid4().hex}:")
    yield cache
    cache.clear_prefix("")
    cache.close()


def _ids(filled: list[tuple[str, float, bool]]) -> list[str]:
    return [item for item, _, _ in filled]


def test_head_is_the_ranking_and_tail_comes_from_the_pool() -> None:
    slots = ExplorationSlots(seed=1)
    filled = slots.fill(RANKED, n=8, k=3, policy="thompson", key=str)
    assert _ids(filled)[:5] == RANKED[:5]
    assert [p for _, p, e in filled[:5]] == [1.0] * 5 and not any(e for _, _, e in filled[:5])
    tail = filled[5:]
    assert len(tail) == 3 and all(e for _, _, e in tail)
    assert {item for item, _, _ in tail} <= set(RANKED[5:])
    assert len({item for item, _, _ in tail}) == 3
    # untried arms, Beta(1, 1) each: inclusion probability ≈ 3/15
    assert all(0.05 < p < 0.45 for _, p, _ in tail)


def test_epsilon_greedy_propensities_are_exact() -> None:
    slots = ExplorationSlots(seed=3)
    pool = RANKED[2:]  # n=4, k=2: the pool is everything after the first two
    slots.bandit("epsilon").update_many(["i10", "i11"], [1.0, 1.0])  # the greedy pair
    filled = slots.fill(RANKED, n=4, k=2, policy="epsilon", key=str)
    eps, m, k = 0.1, len(pool), 2
    for item, p, _ in filled[2:]:
        greedy = item in ("i10", "i11")
        expected = (1 - eps) + eps * k / m if greedy else eps * k / m
        assert p == pytest.approx(expected)


def test_previews_teach_nothing_and_clicks_credit() -> None:
    slots = ExplorationSlots(seed=5)
    slots.fill(RANKED, n=6, k=2, policy="ucb1", key=str, learn=False)
    assert sum(slots.policy("ucb1").counts(RANKED)[0]) == 0
    filled = slots.fill(RANKED, n=6, k=2, policy="ucb1", key=str)
    explored = [item for item, _, e in filled if e]
    pulls, rewards = slots.policy("ucb1").counts(explored)
    assert pulls.tolist() == [1.0, 1.0] and rewards.tolist() == [0.0, 0.0]
    slots.credit("ucb1", explored[0])
    slots.credit("ucb1", explored[0])  # a second click cannot exceed the pull
    slots.credit("ucb1", "never-shown")
    assert slots.policy("ucb1").counts(explored)[1].tolist() == [1.0, 0.0]
    assert slots.policy("ucb1").counts(["never-shown"])[1].tolist() == [0.0]


def test_state_survives_a_restart_through_the_cache() -> None:
    cache = MemoryCache()
    first = ExplorationSlots(cache, seed=7)
    filled = first.fill(RANKED, n=5, k=2, policy="thompson", key=str)
    clicked = next(item for item, _, e in filled if e)
    first.credit("thompson", clicked)
    restored = ExplorationSlots(cache, seed=8).policy("thompson")
    assert restored.counts([clicked])[1].tolist() == [1.0]
    assert sum(restored.counts(restored.arms)[0]) == 2  # both pulls


def test_processes_on_one_cache_add_to_exact_sums(shared_cache: Cache) -> None:
    """Three "replicas" (three slot objects on one cache) serve and credit at
    once: the stored pulls and rewards are the exact totals."""
    replicas = [ExplorationSlots(shared_cache, seed=k) for k in range(3)]
    served: list[list[str]] = [[], [], []]

    def serve(k: int) -> None:
        for j in range(30):
            filled = replicas[k].fill(RANKED, n=6, k=2, policy="thompson", key=str)
            explored = [item for item, _, e in filled if e]
            served[k].extend(explored)
            if j % 3 == 0:  # a click on the first explored item, through another replica
                replicas[(k + 1) % 3].credit("thompson", explored[0])

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = ExplorationSlots(shared_cache).policy("thompson")
    shown = Counter(item for part in served for item in part)
    pulls, rewards = state.counts(sorted(shown))
    assert dict(zip(sorted(shown), pulls.tolist(), strict=True)) == dict(shown)
    assert sum(rewards) == 3 * 10  # every click credited once, none lost
    assert state.total == 3 * 30 * 2


def test_short_lists_and_unknown_policies() -> None:
    slots = ExplorationSlots(seed=9)
    assert _ids(slots.fill(RANKED[:3], n=5, k=2, policy="thompson", key=str)) == RANKED[:3]
    with pytest.raises(ValueError, match="unknown exploration policy"):
        make_policy("softmax")
