"""Exploration slots: the exploited head is the ranking, the tail comes from
the bandit with exact propensities, previews teach nothing, clicks credit,
and the state survives a restart through the cache."""

from __future__ import annotations

import pytest

from sieve.explore.slots import ExplorationSlots, make_policy
from sieve.storage import MemoryCache

RANKED = [f"i{k:02d}" for k in range(20)]


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
    policy = slots.policy("epsilon")
    pool = RANKED[2:]  # n=4, k=2: the pool is everything after the first two
    policy.update_many(["i10", "i11"], [1.0, 1.0])  # the greedy pair
    filled = slots.fill(RANKED, n=4, k=2, policy="epsilon", key=str)
    eps, m, k = 0.1, len(pool), 2
    for item, p, _ in filled[2:]:
        greedy = item in ("i10", "i11")
        expected = (1 - eps) + eps * k / m if greedy else eps * k / m
        assert p == pytest.approx(expected)


def test_previews_teach_nothing_and_clicks_credit() -> None:
    slots = ExplorationSlots(seed=5)
    policy = slots.policy("ucb1")
    slots.fill(RANKED, n=6, k=2, policy="ucb1", key=str, learn=False)
    assert sum(policy.counts(RANKED)[0]) == 0  # type: ignore[attr-defined]
    filled = slots.fill(RANKED, n=6, k=2, policy="ucb1", key=str)
    explored = [item for item, _, e in filled if e]
    pulls, rewards = policy.counts(explored)  # type: ignore[attr-defined]
    assert pulls.tolist() == [1.0, 1.0] and rewards.tolist() == [0.0, 0.0]
    slots.credit("ucb1", explored[0])
    slots.credit("ucb1", explored[0])  # a second click cannot exceed the pull
    slots.credit("ucb1", "never-shown")
    assert policy.counts(explored)[1].tolist() == [1.0, 0.0]  # type: ignore[attr-defined]


def test_state_survives_a_restart_through_the_cache() -> None:
    cache = MemoryCache()
    first = ExplorationSlots(cache, seed=7)
    filled = first.fill(RANKED, n=5, k=2, policy="thompson", key=str)
    clicked = next(item for item, _, e in filled if e)
    first.credit("thompson", clicked)
    first.save()
    second = ExplorationSlots(cache, seed=8)
    restored = second.policy("thompson")
    assert restored.counts([clicked])[1].tolist() == [1.0]  # type: ignore[attr-defined]
    cache.set_json("bandit:explore:epsilon", {"policy": "nope"})  # corrupt: start afresh
    fresh = ExplorationSlots(cache).policy("epsilon")
    assert fresh.to_dict() == make_policy("epsilon").to_dict()


def test_short_lists_and_unknown_policies() -> None:
    slots = ExplorationSlots(seed=9)
    assert _ids(slots.fill(RANKED[:3], n=5, k=2, policy="thompson", key=str)) == RANKED[:3]
    with pytest.raises(ValueError, match="unknown exploration policy"):
        make_policy("softmax")
