"""The random slice: a share of requests served uniformly at random from the pool.

A policy's own logs say little about a list it would not show; lists drawn
uniformly at random do: every item of the pool (the funnel's top
`random_pool` candidates) has the same chance n/P of being shown and, within
the list, every position the same chance. So the random slice

- gives every candidate policy support on its pool (off-policy estimates of
  any ranking of those items are unbiased: `sieve.evaluate.offpolicy_lists`),
- measures position bias (an item's position is independent of the item, so
  the CTR of position k is proportional to its examination probability),
- is the unbiased baseline the dashboard shows beside the policy's CTR.

Each slot logs its inclusion probability n/P as its propensity and the
source `random`. The draw is per request, independent of the user, from one
generator per process (under a lock: requests run in a thread pool).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

#: Source tag of a random-slice slot in the impression log.
RANDOM_SOURCE = "random"


class RandomSlice:
    """Which requests are in the slice, and their uniform lists."""

    def __init__(self, share: float, seed: int | None = None) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.share = share
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def draw(self) -> bool:
        """Whether this request is served from the random slice."""
        if self.share <= 0.0:
            return False
        with self._lock:
            return bool(self._rng.random() < self.share)

    def fill(self, pool: Sequence[T], n: int) -> list[tuple[T, float]]:
        """min(n, |pool|) items of `pool` drawn uniformly without replacement, in
        a uniformly random order, each with its inclusion probability n/|pool|."""
        if n < 1 or not pool:
            return []
        take = min(n, len(pool))
        with self._lock:
            chosen = self._rng.choice(len(pool), size=take, replace=False)
        propensity = take / len(pool)
        return [(pool[int(i)], propensity) for i in chosen]


__all__ = ["RANDOM_SOURCE", "RandomSlice"]
