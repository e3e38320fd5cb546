"""Contextual bandits in serving: LinUCB whose state every process shares.

LinUCB (`sieve.explore.bandits.LinUCB`) learns A = λI + Σ xxᵀ and b = Σ r·x
over the context vectors x of what it showed. Both are sums, so they live
in the cache like a count bandit's (`sieve.explore.shared`): one numeric
hash per model holds Σ xxᵀ (its upper triangle, fields `A:i:j`) and b
(fields `b:i`), and every process adds to them with atomic increments
(`Cache.hash_incr`, HINCRBYFLOAT on Redis). A choice reads the hash (one
round trip), rebuilds A and b and scores the candidates; a shown item
counts its xxᵀ at once, a click citing the request adds r·x (x remembered
with the served request). With Redis every replica learns from every
replica's traffic, exactly, and a restart keeps what was learned.

Two uses, their context features named in the funnel config
(`ContextualConfig`, section `[linucb]`):

- exploration (`exploration_policy = "linucb"`): the items of the
  exploration pool are the arms, one shared model over each item's context
  (the named columns of the ranker's features, plus a constant);
- arm allocation (`allocation = "linucb"`): an experiment's arms, one model
  per arm (disjoint LinUCB) over the request's context (`request_features`:
  hour of day, weekend, device, history size, plus a constant).

LinUCB chooses deterministically given its state: the logged propensity of
its choice is 1.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.explore.bandits import LinUCB
from sieve.storage.cache import Cache, CacheError

log = logging.getLogger(__name__)

#: Request-level context features an allocation may name.
REQUEST_FEATURES: tuple[str, ...] = ("hour", "weekend", "mobile", "history")
#: Seconds between two warnings about a failing cache.
WARN_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class ContextualConfig(Config):
    """LinUCB in serving (see the module doc).

    - `features`: the ranker's feature columns (`sieve.ranking.features.
      feature_names`, attribute features included) that form an item's
      context in exploration slots; a constant 1 is added;
    - `request_features`: the request context of arm allocation, from
      "hour" (cos and sin of the hour of day), "weekend", "mobile" (the
      device is "mobile" or "app") and "history" (log of the user's number
      of events, /10); a constant 1 is added;
    - `alpha`: width of the confidence bonus; `ridge`: λ of A = λI + Σxxᵀ.
    """

    features: tuple[str, ...] = ("ease_z", "popularity_pct", "category_affinity", "item_ctr_7d")
    request_features: tuple[str, ...] = ("hour", "weekend", "mobile", "history")
    alpha: float = 1.0
    ridge: float = 1.0

    def validate(self) -> None:
        if self.alpha < 0 or self.ridge <= 0:
            raise ConfigError("ContextualConfig: need alpha >= 0 and ridge > 0")
        if len(set(self.features)) != len(self.features):
            raise ConfigError("ContextualConfig.features: a feature is named twice")
        unknown = sorted(set(self.request_features) - set(REQUEST_FEATURES))
        if unknown:
            raise ConfigError(
                f"ContextualConfig.request_features: unknown {unknown}; known: "
                f"{list(REQUEST_FEATURES)}"
            )

    @property
    def item_dim(self) -> int:
        return len(self.features) + 1

    @property
    def request_dim(self) -> int:
        return len(self.request_features) + (1 if "hour" in self.request_features else 0) + 1


def item_contexts(
    config: ContextualConfig, names: Sequence[str], rows: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Items' context vectors: the named feature columns of their rows
    (missing and unknown columns: 0), then a constant 1."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    index = {n: k for k, n in enumerate(names)}
    out = np.zeros((rows.shape[0], config.item_dim))
    for j, name in enumerate(config.features):
        k = index.get(name)
        if k is not None and rows.shape[1] > k:
            out[:, j] = np.nan_to_num(rows[:, k], nan=0.0, posinf=0.0, neginf=0.0)
    out[:, -1] = 1.0
    return out


def request_context(
    config: ContextualConfig,
    hour: int | None,
    weekday: int | None,
    device: str | None,
    n_events: int,
) -> NDArray[np.float64]:
    """A request's context vector (`request_features`, then a constant 1);
    an unknown hour or weekday counts 0."""
    out: list[float] = []
    for name in config.request_features:
        if name == "hour":
            angle = 2 * math.pi * hour / 24 if hour is not None else 0.0
            out += [math.cos(angle), math.sin(angle)] if hour is not None else [0.0, 0.0]
        elif name == "weekend":
            out.append(1.0 if weekday is not None and weekday >= 5 else 0.0)
        elif name == "mobile":
            out.append(1.0 if device in ("mobile", "app") else 0.0)
        elif name == "history":
            out.append(math.log1p(max(n_events, 0)) / 10.0)
    out.append(1.0)
    return np.asarray(out, dtype=np.float64)


class SharedLinUCB:
    """One LinUCB model whose A and b are sums in a cache hash (module doc)."""

    def __init__(self, cache: Cache, key: str, dim: int, alpha: float, ridge: float) -> None:
        self.cache = cache
        self.key = key
        self.dim = dim
        self.alpha = alpha
        self.ridge = ridge
        rows, cols = np.triu_indices(dim)
        self._rows, self._cols = rows, cols
        self._a_fields = [f"A:{i}:{j}" for i, j in zip(rows.tolist(), cols.tolist(), strict=True)]
        self._b_fields = [f"b:{i}" for i in range(dim)]
        self._warned = -WARN_SECONDS

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_SECONDS:
            self._warned = now
            log.warning("LinUCB %s: %s (cache unavailable)", self.key, what, exc_info=True)

    def model(self) -> LinUCB:
        """A LinUCB holding the shared state now (the prior λI, 0 when the
        cache cannot be read)."""
        policy = LinUCB(alpha=self.alpha, dim=self.dim, ridge=self.ridge)
        try:
            values = self.cache.hash_get(self.key, [*self._a_fields, *self._b_fields])
        except CacheError:
            self._warn("chose from the prior")
            return policy
        v = np.array([x or 0.0 for x in values], dtype=np.float64)
        upper = np.zeros((self.dim, self.dim))
        upper[self._rows, self._cols] = v[: len(self._a_fields)]
        sums = upper + np.triu(upper, 1).T
        policy.A = self.ridge * np.eye(self.dim) + sums
        policy.b = v[len(self._a_fields) :]
        return policy

    def observe(self, contexts: NDArray[np.floating]) -> None:
        """Count the shown contexts (rows): A += Σ xxᵀ, one atomic step."""
        x = np.atleast_2d(np.asarray(contexts, dtype=np.float64))
        if x.size == 0:
            return
        self._check(x)
        outer = x.T @ x
        amounts = dict(zip(self._a_fields, outer[self._rows, self._cols].tolist(), strict=True))
        try:
            self.cache.hash_incr(self.key, {k: v for k, v in amounts.items() if v != 0.0})
        except CacheError:
            self._warn(f"{len(x)} shown contexts not counted")

    def reward(self, context: NDArray[np.floating], reward: float) -> None:
        """A reward for a shown context: b += r·x, one atomic step."""
        x = np.asarray(context, dtype=np.float64).ravel()
        self._check(x[None, :])
        if not math.isfinite(reward) or reward <= 0:
            return
        amounts = {f: reward * v for f, v in zip(self._b_fields, x.tolist(), strict=True) if v}
        try:
            self.cache.hash_incr(self.key, amounts)
        except CacheError:
            self._warn("a reward not credited")

    def _check(self, x: NDArray[np.float64]) -> None:
        if x.shape[1] != self.dim:
            raise ValueError(f"contexts must have {self.dim} columns, got {x.shape[1]}")
        if not np.all(np.isfinite(x)):
            raise ValueError("contexts must be finite")


__all__ = [
    "REQUEST_FEATURES",
    "ContextualConfig",
    "SharedLinUCB",
    "item_contexts",
    "request_context",
]
