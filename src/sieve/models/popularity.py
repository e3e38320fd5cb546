"""Non-personalised baselines: popularity, Bayesian-average rating, trending.

Each learns one score per item and gives every user the same ranking (minus
the items they have seen), so a user unknown to the model needs no fold-in.
They have no notion of item similarity: `similar_items` raises `TypeError`
rather than silently returning the most popular items, which would look like
a similarity answer without being one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender
from sieve.types import ItemList

_DAY_SECONDS = 86_400.0

C = TypeVar("C", bound=Config)


@dataclasses.dataclass(frozen=True)
class ItemScoresState:
    """One learned score per item (higher is better)."""

    item_scores: NDArray[np.float64]


class _ItemScoreModel(Recommender[C, ItemScoresState]):
    """Shared scoring of the models that rank items by a global score."""

    state_class = ItemScoresState
    serves_cold_start = True  # everybody gets the chart, the cold users too

    @property
    def n_items(self) -> int:
        return len(self.state.item_scores)

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        scores = self.state.item_scores.astype(np.float32)
        return np.broadcast_to(scores, (len(users), len(scores))).copy()

    def similar_items(self, item: int, n: int = 10) -> ItemList:
        """Not supported: a global ranking carries no item-to-item similarity."""
        raise TypeError(f"{self.name} is not personalised and has no item similarity")


@dataclasses.dataclass(frozen=True)
class PopularityConfig(Config):
    """Popularity hyperparameters.

    - `weighted`: score items by the sum of their event weights (a purchase
      counts more than a view) instead of the number of distinct users.
    """

    weighted: bool = False


class Popularity(_ItemScoreModel[PopularityConfig]):
    """Most popular items first: distinct users per item, or summed weights."""

    name = "popular"
    config_class = PopularityConfig

    def _fit(self, dataset: Dataset) -> ItemScoresState:
        x = dataset.matrix
        if self.config.weighted:
            scores = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        else:
            scores = np.asarray(x.getnnz(axis=0), dtype=np.float64)
        return ItemScoresState(item_scores=scores)


@dataclasses.dataclass(frozen=True)
class BayesianRatingConfig(Config):
    """Bayesian-average rating hyperparameters.

    - `prior_count`: C, the number of pseudo-ratings at the global mean m
      added to every item: score = (C·m + Σr) / (C + n). Larger values trust
      items with few ratings less.
    """

    prior_count: float = 10.0

    def validate(self) -> None:
        if self.prior_count < 0:
            raise ConfigError("BayesianRatingConfig.prior_count must be >= 0")


class BayesianRating(_ItemScoreModel[BayesianRatingConfig]):
    """Items ranked by their Bayesian-average rating.

    Shrinks an item's mean rating towards the global mean in proportion to how
    few ratings it has, so one 5-star rating does not top the chart. Items
    without ratings score the global mean. Without any ratings in the snapshot
    it falls back to the number of distinct users per item.
    """

    name = "bayes-rating"
    config_class = BayesianRatingConfig

    def _fit(self, dataset: Dataset) -> ItemScoresState:
        r = dataset.ratings
        if r is None or r.nnz == 0:
            return ItemScoresState(np.asarray(dataset.matrix.getnnz(axis=0), dtype=np.float64))
        r = sp.csr_matrix(r)
        counts = np.asarray(r.getnnz(axis=0), dtype=np.float64)
        sums = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
        mean = float(r.data.mean())
        c = self.config.prior_count
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = (c * mean + sums) / (c + counts)
        scores[counts + c == 0] = mean  # C = 0 and no ratings
        return ItemScoresState(item_scores=scores)


@dataclasses.dataclass(frozen=True)
class TrendingConfig(Config):
    """Trending hyperparameters.

    - `half_life_days`: an event this many days before `now` counts half as
      much as one at `now` (exponential decay).
    - `now`: the reference time in seconds since the epoch; None uses the
      latest event time of the snapshot. Events after `now` are ignored.
    - `weighted`: multiply each event's decayed count by its event weight.
    """

    half_life_days: float = 7.0
    now: float | None = None
    weighted: bool = False

    def validate(self) -> None:
        if self.half_life_days <= 0:
            raise ConfigError("TrendingConfig.half_life_days must be > 0")


class Trending(_ItemScoreModel[TrendingConfig]):
    """Time-decayed popularity: Σ exp(−ln2·(now − t)/half_life) over events."""

    name = "trending"
    config_class = TrendingConfig

    def _fit(self, dataset: Dataset) -> ItemScoresState:
        ev = dataset.events
        t = ev["timestamp"].to_numpy(np.float64)
        w = ev["weight"].to_numpy(np.float64)
        items = ev["item_idx"].to_numpy(np.int64)
        ok = np.isfinite(t) & (w > 0)
        now = self.config.now
        if now is None:
            now = float(t[ok].max()) if ok.any() else 0.0
        ok &= t <= now
        half_life = self.config.half_life_days * _DAY_SECONDS
        decay = np.exp(-math.log(2.0) * (now - t[ok]) / half_life)
        if self.config.weighted:
            decay *= w[ok]
        scores = np.bincount(items[ok], weights=decay, minlength=dataset.n_items)
        return ItemScoresState(item_scores=scores.astype(np.float64))
