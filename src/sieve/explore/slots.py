"""Exploration slots: the last positions of a served list chosen by a bandit.

The ranked list keeps its first n − k items; a bandit over item ids picks the
other k among the next candidates the funnel ranked (the pool), so items the
model is unsure about get shown and learn from clicks. Each chosen item's
propensity — its inclusion probability under the policy — is logged with the
impression, which is what off-policy evaluation divides by; exploited slots
have propensity 1 (the ranking is deterministic given the state).

One bandit per policy name, shared by every server process: its pulls and
rewards are exact sums in the cache (`sieve.explore.shared.SharedBandit`,
key `bandit:v2:explore:<policy>`). A served exploration slot counts a pull at
once, a click that cites the request credits it; each choice is made on the
state of that moment, read from the cache. With Redis every replica learns
from every replica's traffic and a restart keeps what was learned; with the
per-process memory cache the state lives as long as the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from sieve.explore.bandits import UCB1, CountPolicy, EpsilonGreedy, ThompsonSampling
from sieve.explore.shared import SharedBandit
from sieve.storage.cache import Cache, MemoryCache

T = TypeVar("T")


def make_policy(name: str, epsilon: float = 0.1) -> CountPolicy:
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
        self.cache: Cache = cache if cache is not None else MemoryCache()
        self._bandits: dict[str, SharedBandit] = {}
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)

    def bandit(self, name: str) -> SharedBandit:
        """The shared bandit of policy `name`."""
        with self._lock:
            bandit = self._bandits.get(name)
            if bandit is None:
                make_policy(name)  # an unknown name fails here
                bandit = self._bandits[name] = SharedBandit(
                    self.cache, _key(name), lambda: make_policy(name)
                )
            return bandit

    def policy(self, name: str) -> CountPolicy:
        """A copy of policy `name`'s state now, every arm's counts (for inspection)."""
        return self.bandit(name).state()

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
        bandit = self.bandit(policy)
        state = bandit.policy(arms)  # the candidates' counts now
        with self._lock:  # one generator for the process
            chosen, propensities = state.select(arms, self._rng, take)
        if learn:
            bandit.pull(chosen)
        by_arm = dict(zip(arms, pool, strict=True))
        explored = [
            (by_arm[arm], float(max(p, 1e-6)), True)
            for arm, p in zip(chosen, propensities, strict=True)
        ]
        return keep + explored

    def credit(self, policy: str, item_id: str, reward: float = 1.0) -> None:
        """A click on an explored item served by `policy` (never past its pulls)."""
        self.bandit(policy).credit(item_id, reward)


def _key(name: str) -> str:
    return f"bandit:v2:explore:{name}"


__all__ = ["ExplorationSlots", "make_policy"]
