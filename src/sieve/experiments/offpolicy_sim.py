"""Off-policy evaluation checked against live traffic, in process.

Over a `SyntheticWorld` (users with known click probabilities), models are
trained on the world's history; each serves a user its fixed top list (the
history does not move during the simulation, so a policy is a fixed list per
user, which is what the estimand assumes). One repetition:

1. logs `log_requests` requests of the logging model A: a share
   `random_share` gets the random slice — n items drawn uniformly from A's
   top `pool` by the service's own `RandomSlice` — the rest A's top n; clicks
   follow the position-based model of `sieve simulate` (a user examines
   position k with probability 1/log2(k + 2), then clicks with the item's
   true probability);
2. estimates each candidate's CTR per slot from that log by the replay and
   estimators the service's logs go through (`sieve.evaluate.replay`);
3. runs each candidate live for `online_requests` requests and measures its
   CTR the same way an A/B test would (clicks / shown slots).

The log is built as pages of the columns `Store.logged_slots` returns, so the
estimation code is the one `sieve evaluate --data logged:` runs; only the
store round trip is left out, to afford many repetitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.schema import EventWeights
from sieve.data.synthetic import SyntheticConfig, generate
from sieve.evaluate.replay import LoggedEvaluation, LogReplay, SliceName
from sieve.explore.random_slice import RandomSlice
from sieve.models.base import create_model

FloatArray = NDArray[np.float64]

__all__ = ["OffPolicySim", "OffPolicySimConfig", "Repetition"]


@dataclass(frozen=True)
class OffPolicySimConfig(Config):
    """The world, the policies and the traffic of one validation."""

    n_users: int = 400
    n_items: int = 250
    world_seed: int = 0
    logging: str = "popular"
    candidates: tuple[str, ...] = ("itemknn", "ease", "bpr")
    n: int = 10
    pool: int = 100
    random_share: float = 0.25
    log_requests: int = 20_000
    online_requests: int = 20_000

    def validate(self) -> None:
        if not 1 <= self.n <= self.pool <= self.n_items:
            raise ConfigError("OffPolicySimConfig: need 1 ≤ n ≤ pool ≤ n_items")
        if not 0 < self.random_share <= 1:
            raise ConfigError("OffPolicySimConfig.random_share: must be in (0, 1]")
        if not self.candidates:
            raise ConfigError("OffPolicySimConfig.candidates: name at least one model")


@dataclass
class Repetition:
    """One log, the estimates from it, and each candidate's live CTR."""

    evaluation: LoggedEvaluation
    online: dict[str, float]
    true_ctr: dict[str, float]
    logging_ctr: float
    extra: dict[str, float] = field(default_factory=dict)


def examination(n: int) -> FloatArray:
    """The simulator's examination probability per position (DCG's discount)."""
    return np.asarray(1.0 / np.log2(np.arange(n) + 2), dtype=np.float64)


class OffPolicySim:
    """Trained policies over one world; `repetition(seed)` runs steps 1-3."""

    def __init__(self, config: OffPolicySimConfig | None = None) -> None:
        cfg = config or OffPolicySimConfig()
        self.config = cfg
        raw, self.world = generate(
            SyntheticConfig(n_users=cfg.n_users, n_items=cfg.n_items, seed=cfg.world_seed)
        )
        dataset = raw.to_dataset(EventWeights())
        world_user = {str(u): k for k, u in enumerate(self.world.user_ids)}
        world_item = {str(i): k for k, i in enumerate(self.world.item_ids)}
        #: dataset user row of each world user (every world user has history)
        users = np.array([world_user[str(u)] for u in dataset.user_ids], dtype=np.int64)
        to_world = np.array([world_item[str(i)] for i in dataset.item_ids], dtype=np.int64)
        self.users = users
        self.gamma = self.world.click_probability(
            np.arange(cfg.n_users)[:, None], np.arange(cfg.n_items)[None, :]
        )
        self.theta = examination(cfg.n)
        self.lists: dict[str, NDArray[np.int64]] = {}
        rows = np.arange(dataset.n_users, dtype=np.int64)
        for name in (cfg.logging, *cfg.candidates):
            model = create_model(name).fit(dataset)
            depth = cfg.pool if name == cfg.logging else cfg.n
            top = model.recommend_batch(rows, dataset.matrix, depth).items
            self.lists[name] = np.where(top >= 0, to_world[np.maximum(top, 0)], -1)

    def true_ctr(self, name: str) -> float:
        """Exact CTR per slot of a policy's lists, users uniform."""
        top = self.lists[name][:, : self.config.n]
        g = np.where(top >= 0, self.gamma[self.users[:, None], np.maximum(top, 0)], 0.0)
        shown = (top >= 0).sum(axis=1)
        return float(((g * self.theta).sum(axis=1) / np.maximum(shown, 1)).mean())

    def _clicks(
        self, u: NDArray[np.int64], items: NDArray[np.int64], rng: np.random.Generator
    ) -> FloatArray:
        p = (
            self.gamma[self.users[u][:, None], np.maximum(items, 0)]
            * self.theta[None, : items.shape[1]]
        )
        return np.where(items >= 0, rng.random(items.shape) < p, False).astype(np.float64)

    def log(
        self, rng: np.random.Generator, random_slice: RandomSlice
    ) -> tuple[pd.DataFrame, NDArray[np.int64]]:
        """One log of the logging policy: slots as `Store.logged_slots` pages
        have them, and the row (dataset user) of each request."""
        cfg = self.config
        n, R = cfg.n, cfg.log_requests
        u = rng.integers(0, len(self.users), R)
        top = self.lists[cfg.logging]
        items = top[u, :n].copy()
        prop = np.ones((R, n))
        is_random = np.array([random_slice.draw() for _ in range(R)], dtype=bool)
        for r in np.flatnonzero(is_random):
            pool = [int(i) for i in top[u[r]] if i >= 0]
            picks = random_slice.fill(pool, n)
            items[r] = -1
            items[r, : len(picks)] = [i for i, _ in picks]
            prop[r, : len(picks)] = [p for _, p in picks]
        clicks = self._clicks(u, items, rng)
        shown = items >= 0
        req = np.repeat(np.arange(R), n).reshape(R, n)
        frame = pd.DataFrame(
            {
                "request_id": req[shown],
                "item_id": items[shown],
                "position": np.tile(np.arange(n), (R, 1))[shown],
                "propensity": prop[shown],
                "clicked": clicks[shown].astype(bool),
                # the store's pages carry `sources`; a boolean says the same here
                "random": np.repeat(is_random, n).reshape(R, n)[shown],
            }
        )
        return frame, u

    def online_ctr(self, name: str, rng: np.random.Generator) -> float:
        """The candidate served live to `online_requests` uniform users."""
        cfg = self.config
        u = rng.integers(0, len(self.users), cfg.online_requests)
        items = self.lists[name][u, : cfg.n]
        clicks = self._clicks(u, items, rng)
        return float(clicks.sum() / max((items >= 0).sum(), 1))

    def repetition(
        self, seed: int, slice: SliceName = "random", candidates: Sequence[str] | None = None
    ) -> Repetition:
        """Log under the logging model, estimate the candidates, run them live."""
        cfg = self.config
        names = list(candidates or cfg.candidates)
        rng = np.random.default_rng([cfg.world_seed, seed])
        frame, u = self.log(rng, RandomSlice(cfg.random_share, seed=seed))
        replay = LogReplay(names)
        first = frame.drop_duplicates("request_id")
        order = first["request_id"].to_numpy(np.int64)
        lists: dict[str, Sequence[Sequence[Any]] | str] = {}
        for name in names:
            top = self.lists[name][u[order], : cfg.n]
            rows, lengths = top.tolist(), (top >= 0).sum(axis=1).tolist()
            lists[name] = [row[:k] for row, k in zip(rows, lengths, strict=True)]
        replay.add(frame, lists)
        evaluation = replay.result(slice)
        online = {name: self.online_ctr(name, rng) for name in names}
        truth = {name: self.true_ctr(name) for name in names}
        logging_ctr = float(frame["clicked"].mean())
        return Repetition(evaluation, online, truth, logging_ctr)
