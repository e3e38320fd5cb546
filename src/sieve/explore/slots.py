"""Exploration slots: the last positions of a served list chosen by a bandit.

The ranked list keeps its first n − k items; a bandit over item ids picks the
other k among the next candidates the funnel ranked (the pool), so items the
model is unsure about get shown and learn from clicks. Each chosen item's
propensity — its inclusion probability under the policy — is logged with the
impression, which is what off-policy evaluation divides by; exploited slots
have propensity 1 (the ranking is deterministic given the state).

One policy per process per policy name, updated in real time: a served
exploration slot counts a pull at once (`update(item, 0)`), a click that cites
the request credits it (`credit(item, 1)`). The state is written to the cache
(`bandit:explore:<policy>`) by `save`, which the engine calls periodically,
and read back at start, so a restart with Redis keeps what was learned.
Several processes each learn from their own traffic and the last writer's
state is what a restart reads — a documented limit, not a shared counter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from sieve.explore.bandits import (
    UCB1,
    BanditPolicy,
    EpsilonGreedy,
    ThompsonSampling,
    restore_policy,
)
from sieve.storage.cache import Cache, CacheError

log = logging.getLogger(__name__)

T = TypeVar("T")


def make_policy(name: str, epsilon: float = 0.1) -> BanditPolicy:
    """A fresh item policy by name: thompson, ucb1 or epsilon."""
    if name == "thompson":
        return ThompsonSampling(n_draws=200)
    if name == "ucb1":
        return UCB1()
    if name == "epsilon":
        return EpsilonGreedy(epsilon)
    raise ValueError(f"unknown exploration policy {name!r}; known: thompson, ucb1, epsilon")


class ExplorationSlots:
    """Bandit-filled tail slots with logged propensities (see the module doc)."""

    def __init__(self, cache: Cache | None = None, seed: int | None = None) -> None:
        self.cache = cache
        self._policies: dict[str, BanditPolicy] = {}
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)

    def policy(self, name: str) -> BanditPolicy:
        """The process's policy `name`, restored from the cache on first use."""
        with self._lock:
            return self._policy(name)

    def _policy(self, name: str) -> BanditPolicy:
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = restore_policy(
                self.cache, _key(name), make_policy(name)
            )
        return policy

    def fill(
        self,
        ranked: Sequence[T],
        n: int,
        k: int,
        policy: str,
        key: Callable[[T], str],
        learn: bool = True,
    ) -> list[tuple[T, float, bool]]:
        """(item, propensity, explored) for a list of length ≤ n whose last
        min(k, n) slots come from `ranked[n - k:]` by the bandit `policy`.

        With no pool beyond the exploited part (fewer candidates than n), the
        list is the ranking itself. `learn=False` counts no pull (a preview)."""
        k = min(k, n)
        keep = [(item, 1.0, False) for item in ranked[: n - k]]
        pool = list(ranked[n - k :])
        if k <= 0 or not pool:
            return keep
        take = min(k, len(pool))
        arms = [key(item) for item in pool]
        with self._lock:
            bandit = self._policy(policy)
            chosen, propensities = bandit.select(arms, self._rng, take)
            if learn:
                bandit.update_many(chosen, np.zeros(len(chosen)))  # the pulls
                self._dirty.add(policy)
        by_arm = dict(zip(arms, pool, strict=True))
        explored = [
            (by_arm[arm], float(max(p, 1e-6)), True)
            for arm, p in zip(chosen, propensities, strict=True)
        ]
        return keep + explored

    def credit(self, policy: str, item_id: str, reward: float = 1.0) -> None:
        """A click on an explored item served by `policy`."""
        with self._lock:
            bandit = self._policies.get(policy)
            credit = getattr(bandit, "credit", None)
            if credit is not None:
                credit(item_id, reward)
                self._dirty.add(policy)

    def save(self) -> None:
        """Write changed policies to the cache."""
        if self.cache is None:
            return
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            states = {n: self._policies[n].to_dict() for n in dirty}
        for name, state in states.items():
            try:
                self.cache.set_json(_key(name), state)
            except CacheError:
                log.warning("cache unavailable: exploration state %r not saved", name)


def _key(name: str) -> str:
    return f"bandit:explore:{name}"


__all__ = ["ExplorationSlots", "make_policy"]
