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

`linucb` is the contextual policy (`sieve.explore.linear`): the caller
gives each ranked item's context vector, one shared LinUCB model scores the
pool (key `bandit:v2:explore:linucb:<digest of its features>`, so a new
feature set starts afresh), a shown slot counts its xxᵀ and a click adds
its x (remembered with the served request).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from sieve.explore.bandits import UCB1, CountPolicy, EpsilonGreedy, ThompsonSampling
from sieve.explore.linear import ContextualConfig, SharedLinUCB
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
        self._linear: dict[str, SharedLinUCB] = {}
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
        contexts: NDArray[np.float64] | None = None,
        linucb: ContextualConfig | None = None,
    ) -> list[tuple[T, float, bool]]:
        """(item, propensity, explored) for a list of length ≤ n whose last
        min(k, n) slots come from `ranked[n - k:]` by the bandit `policy`.

        With no pool beyond the exploited part (fewer candidates than n), the
        list is the ranking itself. `learn=False` counts no pull (a preview).
        `linucb` policy: `contexts` holds each ranked item's context vector
        (rows aligned with `ranked`) under the `linucb` config."""
        k = min(k, n)
        keep = [(item, 1.0, False) for item in ranked[: n - k]]
        pool = list(ranked[n - k :])
        if k <= 0 or not pool:
            return keep
        take = min(k, len(pool))
        if policy == "linucb":
            if contexts is None or linucb is None:
                raise ValueError("the linucb policy needs contexts and its config")
            x = np.asarray(contexts, dtype=np.float64)[n - k : n - k + len(pool)]
            shared = self.linear(linucb)
            scores = shared.model().scores(x)
            order = np.argsort(-scores, kind="stable")[:take]
            if learn:
                shared.observe(x[order])
            return keep + [(pool[int(i)], 1.0, True) for i in order]
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

    def linear(self, config: ContextualConfig) -> SharedLinUCB:
        """The shared LinUCB model of exploration under `config`."""
        key = linucb_key(config)
        with self._lock:
            model = self._linear.get(key)
            if model is None:
                model = self._linear[key] = SharedLinUCB(
                    self.cache, key, config.item_dim, config.alpha, config.ridge
                )
            return model

    def credit_linear(self, key: str, context: Sequence[float], reward: float = 1.0) -> None:
        """A click on an item LinUCB explored: b += reward · its context, in
        the model under `key` (as remembered with the served request)."""
        x = np.asarray(context, dtype=np.float64)
        with self._lock:
            model = self._linear.get(key)
        if model is None:  # served by another process, or before a restart
            model = SharedLinUCB(self.cache, key, len(x), 1.0, 1.0)
        model.reward(x, reward)


def _key(name: str) -> str:
    return f"bandit:v2:explore:{name}"


def linucb_key(config: ContextualConfig) -> str:
    """The cache key of the exploration LinUCB model of `config`'s features."""
    digest = hashlib.sha256("\n".join(config.features).encode()).hexdigest()[:12]
    return f"bandit:v2:explore:linucb:{digest}"


__all__ = ["ExplorationSlots", "linucb_key", "make_policy"]
