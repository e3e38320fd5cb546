"""Bandit state every server process shares: exact sums of pulls and rewards.

A count bandit (Thompson sampling, UCB1, ε-greedy) learns from two numbers
per arm: its pulls n_a and its reward sum s_a. `SharedBandit` keeps them in
one numeric hash of the cache (`Cache.hash_incr`; fields `n:<arm>`,
`s:<arm>` and `total`, all pulls — UCB1's N), and every process adds to them
with atomic increments: with Redis the stored state is the exact sum of what
every replica served and every click credited, whichever replica saw them
(no per-process copy, no last-writer-wins snapshot).

- `policy(arms)` reads the current counts of the candidates (one round
  trip) into a policy that chooses (`select`) on them, so the logged
  propensities are those of the state the choice was made on;
- `pull(arms)` counts the chosen arms' pulls (one round trip);
- `credit(arm, reward)` adds a reward, never past the arm's pulls (a stray
  click cannot push a Beta posterior out of range), atomically.

A cache that fails makes `policy` hold the prior (and say so in the
log, at most every `WARN_SECONDS`) and loses the pulls or rewards of that
moment: the request is answered all the same.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sieve.explore.bandits import CountPolicy
from sieve.storage.cache import Cache, CacheError

log = logging.getLogger(__name__)

#: Seconds between two warnings about a failing cache.
WARN_SECONDS = 10.0
_TOTAL = "total"


def _pulls(arm: str) -> str:
    return f"n:{arm}"


def _rewards(arm: str) -> str:
    return f"s:{arm}"


class SharedBandit:
    """A count bandit whose state lives in the cache (see the module doc)."""

    def __init__(self, cache: Cache, key: str, make: Callable[[], CountPolicy]) -> None:
        self.cache = cache
        self.key = key
        self._make = make
        self._warned = -WARN_SECONDS

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_SECONDS:
            self._warned = now
            log.warning("bandit %s: %s (cache unavailable)", self.key, what, exc_info=True)

    # --------------------------------------------------------------- reading
    def policy(self, arms: Sequence[str]) -> CountPolicy:
        """A policy holding the current counts of `arms` (and all pulls), or
        the prior when the cache cannot be read."""
        policy = self._make()
        try:
            fields = [*(_pulls(a) for a in arms), *(_rewards(a) for a in arms), _TOTAL]
            values = self.cache.hash_get(self.key, fields)
        except CacheError:
            self._warn("chose from the prior")
            return policy
        m = len(arms)
        pulls = [v or 0.0 for v in values[:m]]
        rewards = [v or 0.0 for v in values[m : 2 * m]]
        policy._load_state({"arms": list(arms), "pulls": pulls, "rewards": rewards})
        policy.total = values[-1] or 0.0
        return policy

    def state(self) -> CountPolicy:
        """A policy holding every arm's counts (for reports and inspection)."""
        found = self.cache.hash_all(self.key)
        arms = sorted(f[2:] for f in found if f.startswith("n:"))
        policy = self._make()
        policy._load_state(
            {
                "arms": arms,
                "pulls": [found.get(_pulls(a), 0.0) for a in arms],
                "rewards": [found.get(_rewards(a), 0.0) for a in arms],
            }
        )
        policy.total = found.get(_TOTAL, 0.0)
        return policy

    def counts(self, arms: Sequence[str]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(pulls, reward sums) of `arms` now (0 for arms never pulled)."""
        return self.policy(arms).counts(arms)

    # --------------------------------------------------------------- acting
    def pull(self, arms: Sequence[str]) -> None:
        """Count one pull of each of `arms` (a repeated arm counts each time)."""
        if not arms:
            return
        amounts: dict[str, float] = {_pulls(a): float(k) for a, k in Counter(arms).items()}
        amounts[_TOTAL] = float(len(arms))
        try:
            self.cache.hash_incr(self.key, amounts)
        except CacheError:
            self._warn(f"{len(arms)} pulls not counted")

    def credit(self, arm: str, reward: float) -> None:
        """Add `reward` to a pulled arm, never past its pulls."""
        if not np.isfinite(reward):
            raise ValueError("rewards must be finite")
        if reward <= 0:
            return
        try:
            self.cache.hash_incr_capped(self.key, _rewards(arm), reward, _pulls(arm))
        except CacheError:
            self._warn("a reward not credited")

    def update_many(self, arms: Sequence[str], rewards: ArrayLike) -> None:
        """Pulls with their rewards at once (replayed or simulated traffic)."""
        r = np.asarray(rewards, dtype=np.float64).ravel()
        if len(arms) != r.size:
            raise ValueError(f"arms and rewards must pair up ({len(arms)} != {r.size})")
        if not np.all(np.isfinite(r)):
            raise ValueError("rewards must be finite")
        amounts: dict[str, float] = {_TOTAL: float(len(arms))}
        for arm, reward in zip(arms, r.tolist(), strict=True):
            amounts[_pulls(arm)] = amounts.get(_pulls(arm), 0.0) + 1.0
            amounts[_rewards(arm)] = amounts.get(_rewards(arm), 0.0) + reward
        self.cache.hash_incr(self.key, amounts)


__all__ = ["WARN_SECONDS", "SharedBandit"]
