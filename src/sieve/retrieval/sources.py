"""Candidate generation: the sources that propose items for one request, and
the merge that turns their proposals into one deduplicated candidate set.

Every source answers a `Request` with a ranked `Proposal` (items, its own
scores, and for item-to-item the anchor item that led to each candidate).
The merge filters them (seen, excluded, unavailable, blocked, outside the
requested categories), keeps each source's quota of survivors and
deduplicates, remembering per candidate which sources proposed it, with
their scores and ranks: the ranker's features and the explanations come from
that memory.

Sources, in the column order of `SOURCES`:

- `ann`: ALS item factors searched with the user's factor vector (FAISS);
- `item_to_item`: ItemKNN neighbours of the session's recent items (by
  recency and event type) and of the history;
- `content`: TF-IDF cosine with the profile of the history and session, which
  reaches items nobody interacted with yet (cold-start items);
- `ease`: EASE scores, only on catalogs small enough for its dense weights;
- `popular`, `trending`: the catalog's all-time and time-decayed charts;
- `fresh`: the newest items.

Model outputs that both sources and ranking features need (the user vector,
item-kNN scores, content scores, EASE scores) are computed once per request
and cached on the `Request`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.data.schema import UnknownIdError
from sieve.models.content import ContentTFIDF, item_document
from sieve.models.ease import EASE
from sieve.models.factorization import ALS
from sieve.models.itemknn import ItemKNN
from sieve.models.popularity import Trending, TrendingConfig
from sieve.retrieval.ann import AnnIndex
from sieve.types import Query

#: Candidate sources, in the column order of `Candidates.scores`/`ranks`.
SOURCES: tuple[str, ...] = (
    "ann",
    "item_to_item",
    "content",
    "ease",
    "popular",
    "trending",
    "fresh",
)
_DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class SourcesConfig(Config):
    """Candidate sources and their quotas.

    - `ann`, `item_to_item`, `content`, `ease`, `popular`, `trending`,
      `fresh`: how many candidates each source contributes after filtering
      (0 switches the source off).
    - `ease_max_items`: EASE is only fitted and used on catalogs up to this
      size: its weights are a dense items × items matrix whose fit costs
      O(n³) (10,000 items: 0.8 GB and about a minute on 2 cores; 20,000:
      3.2 GB and over five minutes per fit, and the ranker refits it).
    - `max_recent`: session items used as item-to-item anchors.
    - `recency_decay`: weight of the k-th most recent session item is
      decay^k times its event-type weight.
    - `session_weight`: extra weight of session anchors over history anchors,
      so the session steers item-to-item candidates.
    - `max_history_anchors`: history items used as anchors (the strongest).
    - `content_terms`: terms of the content profile kept for retrieval (the
      strongest; fewer is faster on big catalogs).
    - `min_candidates`: popular items are added when the sources propose
      fewer than this many (cold start, narrow category filters).
    """

    ann: int = 100
    item_to_item: int = 100
    content: int = 30
    ease: int = 100
    popular: int = 20
    trending: int = 20
    fresh: int = 10
    ease_max_items: int = 10_000
    max_recent: int = 20
    recency_decay: float = 0.8
    session_weight: float = 3.0
    max_history_anchors: int = 200
    content_terms: int = 32
    min_candidates: int = 30

    def validate(self) -> None:
        for name in (*SOURCES, "ease_max_items", "max_recent", "max_history_anchors"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SourcesConfig.{name} must be >= 0")
        if not 0 < self.recency_decay <= 1:
            raise ConfigError("SourcesConfig.recency_decay must be in (0, 1]")
        if self.session_weight < 0:
            raise ConfigError("SourcesConfig.session_weight must be >= 0")
        if self.content_terms < 1:
            raise ConfigError("SourcesConfig.content_terms must be >= 1")
        if self.min_candidates < 0:
            raise ConfigError("SourcesConfig.min_candidates must be >= 0")

    def quota(self, source: str) -> int:
        return int(getattr(self, source))


# ======================================================================= catalog
class Catalog:
    """Item metadata the funnel serves from: ids, titles, categories, release
    times, availability and the popularity charts of the training snapshot.

    It grows with `append` (items added after training) and changes with
    `update`; charts of the training snapshot stay as they were (new items
    have no interactions yet).
    """

    def __init__(
        self,
        item_ids: NDArray[np.object_],
        titles: NDArray[np.object_],
        category_names: list[str],
        item_categories: sp.csr_matrix,
        created_at: NDArray[np.float64],
        available: NDArray[np.bool_],
        popularity: NDArray[np.float64],
        trending: NDArray[np.float64],
    ) -> None:
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.titles = np.asarray(titles, dtype=object)
        self.category_names = list(category_names)
        self.item_categories = sp.csr_matrix(item_categories, dtype=np.float32)
        self.created_at = np.asarray(created_at, dtype=np.float64)
        self.available = np.asarray(available, dtype=bool)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.trending = np.asarray(trending, dtype=np.float64)
        self._lookup: dict[str, int] | None = None
        self._reset()

    def _reset(self) -> None:
        """Drop every derived array (after the catalog changed); the id
        lookup is kept up to date by `append` instead."""
        self._category_lookup = {c: k for k, c in enumerate(self.category_names)}
        self._csc: sp.csc_matrix | None = None
        self._ranked: dict[tuple[str, tuple[int, ...]], NDArray[np.int64]] = {}
        self._head: dict[float, NDArray[np.bool_]] = {}
        self._blocked: dict[tuple[str, ...], NDArray[np.bool_]] = {}
        self._distribution: sp.csr_matrix | None = None
        self._percentile: dict[str, NDArray[np.float64]] = {}

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, trending: TrendingConfig, snapshot_time: float
    ) -> Catalog:
        """The catalog of a training snapshot: charts from its events, trending
        decayed to `trending.now` (default: the snapshot time)."""
        items = dataset.items
        cats = dataset.item_categories()
        names = sorted({c for cs in cats for c in cs})
        model = Trending(
            trending if trending.now is not None else trending.replace(now=snapshot_time)
        )
        return cls(
            item_ids=dataset.item_ids.copy(),
            titles=items["title"].astype(str).to_numpy(dtype=object),
            category_names=names,
            item_categories=_category_matrix(cats, names),
            created_at=items["created_at"].to_numpy(np.float64),
            available=_availability(items),
            popularity=dataset.item_popularity(),
            trending=model.fit(dataset).state.item_scores.astype(np.float64),
        )

    # ------------------------------------------------------------- lookup
    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    def copy(self) -> Catalog:
        """A copy whose `append`/`update` leave this catalog untouched (the
        serving snapshot a reader holds is never changed under it)."""
        out = copy.copy(self)
        for name in ("item_ids", "titles", "created_at", "available", "popularity", "trending"):
            setattr(out, name, getattr(self, name).copy())
        out.item_categories = self.item_categories.copy()
        out.category_names = list(self.category_names)
        out._lookup = None if self._lookup is None else dict(self._lookup)
        out._reset()
        return out

    def find(self, item_id: str) -> int:
        """The index of an item id, -1 when unknown."""
        if self._lookup is None:
            self._lookup = {str(v): k for k, v in enumerate(self.item_ids)}
        return self._lookup.get(str(item_id), -1)

    def index(self, item_id: str) -> int:
        """The index of an item id; raises `UnknownIdError` naming it."""
        idx = self.find(item_id)
        if idx < 0:
            raise UnknownIdError("item", item_id)
        return idx

    def categories_of(self, item: int) -> list[str]:
        row = self.item_categories
        return [
            self.category_names[c] for c in row.indices[row.indptr[item] : row.indptr[item + 1]]
        ]

    def category_ids(self, names: Sequence[str]) -> NDArray[np.int64]:
        """Ids of category names; unknown names get -1 (they match no item)."""
        return np.array([self._category_lookup.get(n, -1) for n in names], dtype=np.int64)

    @property
    def category_distribution(self) -> sp.csr_matrix:
        """Items × categories, each row summing to 1 over the item's categories."""
        if self._distribution is None:
            m = self.item_categories.copy()
            counts = np.diff(m.indptr).astype(np.float32)
            m.data = m.data / np.repeat(np.maximum(counts, 1.0), np.diff(m.indptr))
            self._distribution = m
        return self._distribution

    def members(self, category_ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Sorted items in any of the categories."""
        if self._csc is None:
            self._csc = sp.csc_matrix(self.item_categories)
        cols = category_ids[category_ids >= 0]
        if len(cols) == 0:
            return np.empty(0, np.int64)
        parts = [self._csc.indices[self._csc.indptr[c] : self._csc.indptr[c + 1]] for c in cols]
        return np.unique(np.concatenate(parts)).astype(np.int64)

    def ranked(self, kind: str, category_ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Items by `kind` ("popular", "trending" or "fresh": only items with
        a positive score or a release time; "all": every item, most popular
        first; "chart": every item by trending score, then popularity),
        restricted to the categories when any are given; cached."""
        key = (kind, tuple(int(c) for c in category_ids))
        cached = self._ranked.get(key)
        if cached is not None:
            return cached
        items = (
            self.members(category_ids)
            if len(category_ids)
            else np.arange(self.n_items, dtype=np.int64)
        )
        if kind == "fresh":
            items = items[np.isfinite(self.created_at[items])]
            score = self.created_at[items]
        elif kind == "all":
            score = self.popularity[items]
        elif kind == "chart":
            order = np.lexsort((-self.popularity[items], -self.trending[items]))
            out = items[order].astype(np.int64)
            self._ranked[key] = out
            return out
        else:
            score = (self.popularity if kind == "popular" else self.trending)[items]
            items = items[score > 0]
            score = score[score > 0]
        out = items[np.argsort(-score, kind="stable")].astype(np.int64)
        if len(self._ranked) > 256:
            self._ranked.clear()
        self._ranked[key] = out
        return out

    def percentile(self, chart: str) -> NDArray[np.float64]:
        """Each item's percentile in the "popular" or "trending" chart (1 =
        the top item, 0 = nothing below): stable when the data grows."""
        pct = self._percentile.get(chart)
        if pct is None:
            score = self.popularity if chart == "popular" else self.trending
            order = np.argsort(score, kind="stable")
            pct = np.empty(self.n_items)
            pct[order] = np.arange(self.n_items) / max(self.n_items - 1, 1)
            pct[score <= 0] = 0.0
            self._percentile[chart] = pct
        return pct

    def warm(self, head_share: float) -> None:
        """Build the derived arrays every request uses (charts, percentiles,
        the head), so that the first request after a change does not pay."""
        none = np.empty(0, np.int64)
        for kind in ("popular", "trending", "fresh", "all", "chart"):
            self.ranked(kind, none)
        self.percentile("popular")
        self.percentile("trending")
        self.head(head_share)
        _ = self.category_distribution
        self.members(np.arange(min(self.n_categories, 1), dtype=np.int64))

    def head(self, share: float) -> NDArray[np.bool_]:
        """True for the ⌈share · n⌉ most popular items (the short head)."""
        mask = self._head.get(share)
        if mask is None:
            mask = np.zeros(self.n_items, dtype=bool)
            n_head = math.ceil(share * self.n_items)
            mask[np.argsort(-self.popularity, kind="stable")[:n_head]] = True
            self._head[share] = mask
        return mask

    def blocked(self, categories: tuple[str, ...]) -> NDArray[np.bool_]:
        """True for items in any of the (blocked) categories."""
        mask = self._blocked.get(categories)
        if mask is None:
            mask = np.zeros(self.n_items, dtype=bool)
            mask[self.members(self.category_ids(categories))] = True
            self._blocked[categories] = mask
        return mask

    # ------------------------------------------------------------ changes
    def append(self, frame: pd.DataFrame) -> NDArray[np.int64]:
        """Add new items (ITEM_COLUMNS, optional `available`); their indices."""
        start = self.n_items
        cats = (
            [_categories(c) for c in frame["categories"]]
            if "categories" in frame
            else [[] for _ in range(len(frame))]
        )
        self._add_category_names(cats)
        matrix = _category_matrix(cats, self.category_names)
        self.item_categories = sp.csr_matrix(sp.vstack([self._widened(), matrix]), dtype=np.float32)
        new_ids = frame["item_id"].astype(str).to_numpy(object)
        self.item_ids = np.concatenate([self.item_ids, new_ids])
        if self._lookup is not None:
            self._lookup.update({str(v): start + k for k, v in enumerate(new_ids)})
        titles = (
            frame["title"].fillna("").astype(str)
            if "title" in frame
            else pd.Series([""] * len(frame))
        )
        self.titles = np.concatenate([self.titles, titles.to_numpy(object)])
        created = (
            frame["created_at"].to_numpy(np.float64)
            if "created_at" in frame
            else np.full(len(frame), np.nan)
        )
        self.created_at = np.concatenate([self.created_at, created])
        self.available = np.concatenate([self.available, _availability(frame)])
        zeros = np.zeros(len(frame))
        self.popularity = np.concatenate([self.popularity, zeros])
        self.trending = np.concatenate([self.trending, zeros])
        self._reset()
        return np.arange(start, self.n_items, dtype=np.int64)

    def update(self, items: NDArray[np.int64], frame: pd.DataFrame) -> None:
        """Update the metadata of known items from the frame's given columns.
        Titles and availability are read per request (nothing to rebuild);
        release times invalidate the fresh chart, categories everything."""
        if "title" in frame:
            self.titles[items] = frame["title"].fillna("").astype(str).to_numpy(object)
        if "available" in frame:
            self.available[items] = _availability(frame)
        if "created_at" in frame:
            self.created_at[items] = frame["created_at"].to_numpy(np.float64)
            self._ranked = {k: v for k, v in self._ranked.items() if k[0] != "fresh"}
        if "categories" in frame:
            cats = [_categories(c) for c in frame["categories"]]
            self._add_category_names(cats)
            lil = self._widened().tolil()
            for item, cs in zip(items, cats, strict=True):
                lil.rows[item] = sorted(self._category_lookup[c] for c in cs)
                lil.data[item] = [1.0] * len(lil.rows[item])
            self.item_categories = sp.csr_matrix(lil, dtype=np.float32)
            self._reset()

    def _add_category_names(self, cats: list[list[str]]) -> None:
        for cs in cats:
            for c in cs:
                if c not in self._category_lookup:
                    self._category_lookup[c] = len(self.category_names)
                    self.category_names.append(c)

    def _widened(self) -> sp.csr_matrix:
        m = self.item_categories
        if m.shape[1] == self.n_categories:
            return m
        return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], self.n_categories))

    # -------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        m = self.item_categories
        np.savez(
            path,
            item_ids=np.array([str(v) for v in self.item_ids], dtype=str),
            titles=np.array([str(v) for v in self.titles], dtype=str),
            category_names=np.array(self.category_names, dtype=str),
            cat_indptr=m.indptr,
            cat_indices=m.indices,
            created_at=self.created_at,
            available=self.available,
            popularity=self.popularity,
            trending=self.trending,
        )

    @classmethod
    def load(cls, path: Path) -> Catalog:
        z = np.load(path, allow_pickle=False)
        n = len(z["item_ids"])
        names = [str(c) for c in z["category_names"]]
        indices = z["cat_indices"]
        matrix = sp.csr_matrix(
            (np.ones(len(indices), np.float32), indices, z["cat_indptr"]), shape=(n, len(names))
        )
        return cls(
            item_ids=z["item_ids"].astype(object),
            titles=z["titles"].astype(object),
            category_names=names,
            item_categories=matrix,
            created_at=z["created_at"],
            available=z["available"],
            popularity=z["popularity"],
            trending=z["trending"],
        )


def _categories(value: Any) -> list[str]:
    if isinstance(value, list | tuple | np.ndarray):
        return [str(c) for c in value if str(c).strip()]
    return []


def _category_matrix(cats: Sequence[Sequence[str]], names: list[str]) -> sp.csr_matrix:
    index = {c: k for k, c in enumerate(names)}
    rows = [i for i, cs in enumerate(cats) for c in dict.fromkeys(cs) if c in index]
    cols = [index[c] for cs in cats for c in dict.fromkeys(cs) if c in index]
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(cats), len(names)))
    m.sort_indices()
    return m


def _availability(frame: pd.DataFrame) -> NDArray[np.bool_]:
    if "available" not in frame:
        return np.ones(len(frame), dtype=bool)
    col = frame["available"]
    return np.array(
        [True if v is None or (isinstance(v, float) and np.isnan(v)) else bool(v) for v in col],
        dtype=bool,
    )


# ================================================================ content index
class ContentIndex:
    """TF-IDF rows of every catalog item, searchable by term posting lists.

    Rows of the training items come from the fitted `ContentTFIDF`; items
    added later (or whose text changed) get rows from its `vectorize` in a
    small delta block, so adding items never rebuilds the big index.
    """

    def __init__(
        self,
        model: ContentTFIDF,
        delta: sp.csr_matrix | None = None,
        delta_items: NDArray[np.int64] | None = None,
    ) -> None:
        self.model = model
        self.base = sp.csr_matrix(model.state.item_matrix, dtype=np.float32)
        self.base_csc = sp.csc_matrix(self.base)
        n_terms = self.base.shape[1]
        self.delta = sp.csr_matrix((0, n_terms), dtype=np.float32) if delta is None else delta
        self.delta_items = np.empty(0, np.int64) if delta_items is None else delta_items
        self._delta_pos = np.full(self.base.shape[0], -1, dtype=np.int64)
        self._delta_pos_dirty = True

    @property
    def n_base(self) -> int:
        return int(self.base.shape[0])

    def delta_position(self, n_items: int) -> NDArray[np.int64]:
        """Per catalog item: its delta row, or -1 (base row)."""
        if self._delta_pos_dirty or len(self._delta_pos) != n_items:
            pos = np.full(n_items, -1, dtype=np.int64)
            pos[self.delta_items] = np.arange(len(self.delta_items))
            self._delta_pos = pos
            self._delta_pos_dirty = False
        return self._delta_pos

    def set_rows(self, items: NDArray[np.int64], documents: list[str], n_items: int) -> None:
        """(Re)index the documents of the given items."""
        if len(items) == 0:
            return
        rows = sp.csr_matrix(self.model.vectorize(documents), dtype=np.float32)
        pos = self.delta_position(n_items)
        old = pos[items] >= 0
        keep = np.ones(len(self.delta_items), dtype=bool)
        keep[pos[items][old]] = False
        self.delta = sp.csr_matrix(sp.vstack([self.delta[keep], rows]), dtype=np.float32)
        self.delta_items = np.concatenate([self.delta_items[keep], items]).astype(np.int64)
        self._delta_pos_dirty = True

    def profile(
        self, items: NDArray[np.int64], weights: NDArray[np.float64], n_items: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
        """The unit-norm weighted mean of the items' rows as (terms, weights),
        or None when the items have no indexed text."""
        if len(items) == 0:
            return None
        pos = self.delta_position(n_items)[items]
        in_delta = pos >= 0
        base_items = items[~in_delta]
        total = (
            sp.csr_matrix(
                (weights[~in_delta], (np.zeros(len(base_items), np.int64), base_items)),
                shape=(1, self.n_base),
            )
            @ self.base
        )
        if in_delta.any():
            total = (
                total
                + sp.csr_matrix(
                    (weights[in_delta], (np.zeros(int(in_delta.sum()), np.int64), pos[in_delta])),
                    shape=(1, self.delta.shape[0]),
                )
                @ self.delta
            )
        total = sp.csr_matrix(total)
        if total.nnz == 0:
            return None
        values = total.data.astype(np.float64)
        norm = float(np.sqrt(values @ values))
        if norm == 0:
            return None
        return total.indices.astype(np.int64), values / norm

    def scores(
        self, terms: NDArray[np.int64], weights: NDArray[np.float64], n_items: int
    ) -> NDArray[np.float64]:
        """Cosine of every catalog item with the profile (dense)."""
        sub = self.base_csc[:, terms]
        out = np.zeros(n_items, dtype=np.float64)
        col = np.repeat(np.arange(len(terms)), np.diff(sub.indptr))
        out[: self.n_base] = np.bincount(
            sub.indices, weights=sub.data * weights[col], minlength=self.n_base
        )
        if len(self.delta_items):
            dense = np.zeros(self.delta.shape[1], dtype=np.float64)
            dense[terms] = weights
            out[self.delta_items] = self.delta @ dense
        return out

    def save(self, path: Path) -> None:
        d = self.delta
        np.savez(
            path,
            data=d.data,
            indices=d.indices,
            indptr=d.indptr,
            shape=np.array(d.shape),
            items=self.delta_items,
        )

    @classmethod
    def load(cls, model: ContentTFIDF, path: Path) -> ContentIndex:
        z = np.load(path, allow_pickle=False)
        delta = sp.csr_matrix(
            (z["data"], z["indices"], z["indptr"]), shape=tuple(int(x) for x in z["shape"])
        )
        return cls(model, delta, z["items"].astype(np.int64))


# ================================================================ request state
@dataclasses.dataclass
class KnnScores:
    """Item-kNN evidence of one request over the training items.

    `score[j]` = Σ_a w_a · s_aj over the anchors a; `entries` keep every
    (anchor, item, similarity) triple for per-candidate anchors and maxima.
    """

    score: NDArray[np.float64]
    entry_item: NDArray[np.int64]
    entry_anchor: NDArray[np.int64]  # position in Request.anchors
    entry_sim: NDArray[np.float32]


@dataclasses.dataclass
class Request:
    """One query, normalised, plus the model outputs shared by the sources
    and the ranking features (filled lazily by `CandidateEngine`)."""

    query: Query
    now: float
    interactions: NDArray[np.int64]  # history ∪ recent, sorted unique
    weights: NDArray[np.float64]  # their weights (history weight + session weight)
    anchors: NDArray[np.int64]  # item-to-item anchors: session first, then history
    anchor_weights: NDArray[np.float64]
    seen: NDArray[np.int64]  # sorted unique items not to recommend again
    exclude: NDArray[np.int64]  # sorted unique query.exclude
    category_filter: NDArray[np.int64]  # category ids (-1: unknown name)
    affinity: NDArray[np.float64]  # share of the interactions in each category
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_signal(self) -> bool:
        """True when there is anything personal to go on."""
        return len(self.interactions) > 0


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One source's ranked answer (before filtering)."""

    source: str
    items: NDArray[np.int64]
    scores: NDArray[np.float32]
    anchors: NDArray[np.int64] | None = None


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Merged, deduplicated candidates with their source memory.

    `scores[c, s]` / `ranks[c, s]` (1-based, among the source's surviving
    proposals) are NaN where source `SOURCES[s]` did not propose candidate c;
    `anchors[c]` is the item-to-item anchor item (-1: none).
    """

    items: NDArray[np.int64]
    scores: NDArray[np.float32]
    ranks: NDArray[np.float32]
    anchors: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.items)

    def proposed(self, source: str) -> NDArray[np.bool_]:
        return ~np.isnan(self.ranks[:, SOURCES.index(source)])

    @property
    def n_sources(self) -> NDArray[np.float32]:
        return (~np.isnan(self.ranks)).sum(axis=1).astype(np.float32)

    @classmethod
    def empty(cls) -> Candidates:
        n = len(SOURCES)
        return cls(
            np.empty(0, np.int64),
            np.empty((0, n), np.float32),
            np.empty((0, n), np.float32),
            np.empty(0, np.int64),
        )


def merge(
    proposals: Sequence[Proposal],
    quotas: dict[str, int],
    allowed: Callable[[NDArray[np.int64]], NDArray[np.bool_]],
) -> Candidates:
    """Filter each proposal with `allowed`, keep its first `quota` survivors,
    and deduplicate, keeping every proposing source's score and rank."""
    proposals = [p for p in proposals if len(p.items) and quotas.get(p.source, 0) > 0]
    if not proposals:
        return Candidates.empty()
    items = np.concatenate([p.items for p in proposals])
    ok = allowed(items)
    kept_items: list[NDArray[np.int64]] = []
    kept_scores: list[NDArray[np.float32]] = []
    kept_ranks: list[NDArray[np.float32]] = []
    kept_cols: list[NDArray[np.int64]] = []
    kept_anchors: list[NDArray[np.int64]] = []
    start = 0
    for p in proposals:
        stop = start + len(p.items)
        mask = ok[start:stop]
        rank = np.cumsum(mask)
        keep = mask & (rank <= quotas[p.source])
        kept_items.append(p.items[keep])
        kept_scores.append(p.scores[keep].astype(np.float32))
        kept_ranks.append(rank[keep].astype(np.float32))
        kept_cols.append(np.full(int(keep.sum()), SOURCES.index(p.source), np.int64))
        anchors = (
            p.anchors[keep] if p.anchors is not None else np.full(int(keep.sum()), -1, np.int64)
        )
        kept_anchors.append(anchors)
        start = stop
    all_items = np.concatenate(kept_items)
    unique, inverse = np.unique(all_items, return_inverse=True)
    n = len(unique)
    scores = np.full((n, len(SOURCES)), np.nan, np.float32)
    ranks = np.full((n, len(SOURCES)), np.nan, np.float32)
    cols = np.concatenate(kept_cols)
    scores[inverse, cols] = np.concatenate(kept_scores)
    ranks[inverse, cols] = np.concatenate(kept_ranks)
    anchors_all = np.concatenate(kept_anchors)
    anchors = np.full(n, -1, np.int64)
    has = anchors_all >= 0
    anchors[inverse[has]] = anchors_all[has]
    return Candidates(unique.astype(np.int64), scores, ranks, anchors)


# ======================================================================= engine
class CandidateEngine:
    """The fitted candidate models of a funnel, and every per-request
    computation on them: request normalisation, user vectors (fold-in),
    source proposals and the merge.

    `user_train_count` / `user_train_sum` hold each training user's number
    of training items and the sum of their indices: a query whose history
    matches both uses the trained ALS vector, any other is folded in.
    """

    def __init__(
        self,
        config: SourcesConfig,
        catalog: Catalog,
        event_weights: dict[str, float],
        *,
        als: ALS | None = None,
        ann: AnnIndex | None = None,
        itemknn: ItemKNN | None = None,
        ease: EASE | None = None,
        content: ContentIndex | None = None,
        user_train_count: NDArray[np.int64] | None = None,
        user_train_sum: NDArray[np.int64] | None = None,
        n_train_items: int = 0,
        snapshot_time: float = 0.0,
    ) -> None:
        self.config = config
        self.n_train_items = n_train_items
        self.catalog = catalog
        self.event_weights = dict(event_weights)
        self.als = als
        self.ann = ann
        self.itemknn = itemknn
        self.ease = ease
        self.content = content
        self.user_train_count = (
            np.empty(0, np.int64) if user_train_count is None else user_train_count
        )
        self.user_train_sum = np.empty(0, np.int64) if user_train_sum is None else user_train_sum
        self.snapshot_time = snapshot_time
        self._fold_in_gram: NDArray[np.float64] | None = None
        self._unit_factors: NDArray[np.float32] | None = None

    # ---------------------------------------------------------------- request
    def request(self, query: Query, *, exclude_seen: bool = True) -> Request:
        """Normalise a query: validated indices, merged history and session,
        item-to-item anchors, filters and the user's category shares."""
        cfg = self.config
        n_items = self.catalog.n_items
        history = np.asarray(query.history, dtype=np.int64).ravel()
        hw = np.asarray(query.history_weights, dtype=np.float64).ravel()
        if len(hw) != len(history):
            if len(hw):
                raise ValueError(
                    f"Query.history_weights has {len(hw)} entries for {len(history)} history items"
                )
            hw = np.ones(len(history))
        recent = np.asarray(query.recent, dtype=np.int64).ravel()
        for what, arr in (("history", history), ("recent", recent)):
            bad = arr[(arr < 0) | (arr >= n_items)]
            if len(bad):
                raise IndexError(
                    f"Query.{what} item index {int(bad[0])} is outside 0..{n_items - 1}"
                )
        types = tuple(query.recent_types) + ("",) * max(0, len(recent) - len(query.recent_types))
        all_recent = recent
        recent = recent[: cfg.max_recent]
        decay = cfg.recency_decay ** np.arange(len(recent))
        type_w = np.array(
            [self.event_weights.get(t, 1.0) if t else 1.0 for t in types[: len(recent)]], np.float64
        )
        rw = decay * type_w
        interactions, inv = np.unique(np.concatenate([history, recent]), return_inverse=True)
        weights = np.bincount(
            inv, weights=np.concatenate([np.maximum(hw, 0.0), rw]), minlength=len(interactions)
        ).astype(np.float64)
        # anchors: the session (latest first), then the strongest history items
        order = np.argsort(-hw, kind="stable")[: cfg.max_history_anchors]
        hist_anchor = history[order]
        keep_hist = ~np.isin(hist_anchor, recent)
        hist_anchor = hist_anchor[keep_hist]
        _, first = np.unique(recent, return_index=True)
        first = np.sort(first)
        anchors = np.concatenate([recent[first], hist_anchor])
        anchor_w = np.concatenate([cfg.session_weight * rw[first], np.ones(len(hist_anchor))])
        seen = np.union1d(interactions, all_recent) if exclude_seen else np.empty(0, np.int64)
        exclude = np.unique(np.fromiter(query.exclude, dtype=np.int64, count=len(query.exclude)))
        affinity = np.zeros(self.catalog.n_categories)
        if len(interactions):
            dist = self.catalog.category_distribution[interactions]
            affinity = np.asarray(dist.T @ weights, dtype=np.float64).ravel()
            total = affinity.sum()
            if total > 0:
                affinity /= total
        return Request(
            query=query,
            now=float(query.now) if query.now is not None else self.snapshot_time,
            interactions=interactions,
            weights=weights,
            anchors=anchors,
            anchor_weights=anchor_w,
            seen=seen,
            exclude=exclude,
            category_filter=self.catalog.category_ids(query.categories),
            affinity=affinity,
        )

    def allowed(
        self, req: Request, blocked: NDArray[np.bool_] | None = None
    ) -> Callable[[NDArray[np.int64]], NDArray[np.bool_]]:
        """The merge filter of a request: available, not seen, not excluded,
        not blocked, and in the requested categories."""
        cat = self.catalog
        members = cat.members(req.category_filter) if len(req.query.categories) else None

        def ok(items: NDArray[np.int64]) -> NDArray[np.bool_]:
            mask = cat.available[items].copy()
            if blocked is not None:
                mask &= ~blocked[items]
            for sorted_set in (req.seen, req.exclude):
                if len(sorted_set):
                    mask &= ~_in_sorted(items, sorted_set)
            if members is not None:
                mask &= _in_sorted(items, members)
            return mask

        return ok

    # ------------------------------------------------------------ model outputs
    def user_vector(self, req: Request) -> NDArray[np.float32] | None:
        """The ALS user vector: the trained one when the query's history is
        the user's training history, else folded in from the interactions.

        None without interactions (cold start) and for a zero vector: a user
        the model knows but who had no training events has the zero vector,
        under which every item scores 0 and any ANN answer is arbitrary."""
        if "user_vector" in req.cache:
            return req.cache["user_vector"]
        vec: NDArray[np.float32] | None = None
        if self.als is not None and req.has_signal:
            n_train = self.als.n_items
            known = req.interactions < n_train
            items = req.interactions[known]
            u = req.query.user
            if (
                0 <= u < min(self.als.n_users, len(self.user_train_count))
                and len(req.interactions) == self.user_train_count[u]
                and int(req.interactions.sum()) == self.user_train_sum[u]
            ):
                vec = self.als.state.user_factors[u]
            elif len(items):
                vec = self._fold_in(items, req.weights[known])
            if vec is not None and not vec.any():
                vec = None
        req.cache["user_vector"] = vec
        return vec

    def _fold_in(
        self, items: NDArray[np.int64], weights: NDArray[np.float64]
    ) -> NDArray[np.float32]:
        """One exact ALS user step (implicit's `recalculate_user`):
        (YᵀY + λI + Σ (c−1) y yᵀ) x = Σ c y with c = alpha · weight."""
        assert self.als is not None
        y = self.als.state.item_factors
        if self._fold_in_gram is None:
            y64 = y.astype(np.float64)
            gram = y64.T @ y64
            gram[np.diag_indices_from(gram)] += self.als.config.regularization
            self._fold_in_gram = gram
        yi = y[items].astype(np.float64)
        c = self.als.config.alpha * weights
        a = self._fold_in_gram + (yi.T * (c - 1.0)) @ yi
        b = yi.T @ c
        return np.linalg.solve(a, b).astype(np.float32)

    @property
    def unit_factors(self) -> NDArray[np.float32] | None:
        """ALS item factors scaled to unit length (for cosines)."""
        if self.als is None:
            return None
        if self._unit_factors is None:
            f = self.als.state.item_factors
            norms = np.linalg.norm(f, axis=1, keepdims=True)
            self._unit_factors = (f / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return self._unit_factors

    def knn(self, req: Request) -> KnnScores | None:
        """Item-kNN scores of the request's anchors over the training items."""
        if "knn" in req.cache:
            return req.cache["knn"]
        out: KnnScores | None = None
        if self.itemknn is not None and len(req.anchors):
            sim = self.itemknn.state.similarity
            n_train = sim.shape[0]
            valid = np.flatnonzero(req.anchors < n_train)
            if len(valid):
                a = req.anchors[valid]
                starts = sim.indptr[a]
                lens = sim.indptr[a + 1] - starts
                total = int(lens.sum())
                offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
                pos = offsets + np.arange(total)
                entry_item = sim.indices[pos].astype(np.int64)
                entry_sim = sim.data[pos]
                entry_anchor = np.repeat(valid, lens)
                contrib = entry_sim * req.anchor_weights[entry_anchor]
                score = np.bincount(entry_item, weights=contrib, minlength=n_train).astype(
                    np.float64
                )
                out = KnnScores(score, entry_item, entry_anchor, entry_sim)
        req.cache["knn"] = out
        return out

    def content_scores(self, req: Request) -> NDArray[np.float64] | None:
        """TF-IDF cosine of every catalog item with the request's profile."""
        if "content" in req.cache:
            return req.cache["content"]
        out: NDArray[np.float64] | None = None
        if self.content is not None and len(req.interactions):
            profile = self.content.profile(req.interactions, req.weights, self.catalog.n_items)
            if profile is not None:
                terms, weights = profile
                if len(terms) > self.config.content_terms:
                    top = np.argpartition(-weights, self.config.content_terms - 1)[
                        : self.config.content_terms
                    ]
                    terms, weights = terms[top], weights[top]
                out = self.content.scores(terms, weights, self.catalog.n_items)
        req.cache["content"] = out
        return out

    def ease_scores(self, req: Request) -> NDArray[np.float32] | None:
        """EASE scores x_u · B over the training items."""
        if "ease" in req.cache:
            return req.cache["ease"]
        out: NDArray[np.float32] | None = None
        if self.ease is not None:
            b = self.ease.state.weights
            items = req.interactions[req.interactions < b.shape[0]]
            if len(items):
                out = b[items].sum(axis=0)
        req.cache["ease"] = out
        return out

    # --------------------------------------------------------------- sources
    def _fetch(self, req: Request, quota: int) -> int:
        """How many proposals to fetch so that `quota` survive the filters."""
        return quota + len(req.seen) + len(req.exclude) + quota // 2 + 10

    def propose(self, req: Request) -> list[Proposal]:
        """Every enabled source's proposal for the request. Without any
        interaction (an unknown user, or a known one with no events: the
        cold start) only the charts propose, whoever the user is."""
        out: list[Proposal] = []
        if req.has_signal:
            out.extend(self._personal(req))
        out.extend(self._charts(req))
        return out

    def _personal(self, req: Request) -> list[Proposal]:
        """The proposals of the sources that read the user's interactions."""
        cfg = self.config
        out: list[Proposal] = []
        if cfg.ann and self.ann is not None:
            vec = self.user_vector(req)
            if vec is not None:
                skip = np.union1d(req.seen, req.exclude)
                fetch = cfg.ann + cfg.ann // 2 + 10  # seen/excluded skipped in the index
                ids, scores = self.ann.search(vec, fetch, exclude=skip[skip < self.ann.n_items])
                keep = ids[0] >= 0
                out.append(Proposal("ann", ids[0][keep], scores[0][keep]))
        if cfg.item_to_item:
            knn = self.knn(req)
            if knn is not None:
                items, scores = _top(knn.score, self._fetch(req, cfg.item_to_item))
                out.append(Proposal("item_to_item", items, scores, self.best_anchors(req, items)))
        if cfg.content:
            cs = self.content_scores(req)
            if cs is not None:
                items, scores = _top(cs, self._fetch(req, cfg.content))
                out.append(Proposal("content", items, scores))
        if cfg.ease:
            es = self.ease_scores(req)
            if es is not None:
                items, scores = _top(es, self._fetch(req, cfg.ease), positive=False)
                out.append(Proposal("ease", items, scores))
        return out

    def _charts(self, req: Request) -> list[Proposal]:
        """The popular, trending and fresh charts' proposals."""
        cfg = self.config
        out: list[Proposal] = []
        cat = self.catalog
        for kind in ("popular", "trending", "fresh"):
            quota = cfg.quota(kind)
            if not quota:
                continue
            ranked = cat.ranked(
                kind, req.category_filter if len(req.query.categories) else np.empty(0, np.int64)
            )
            if kind == "fresh":
                ranked = ranked[cat.created_at[ranked] <= req.now]
            items = ranked[: self._fetch(req, quota)]
            if kind == "popular":
                chart = np.log1p(cat.popularity[items])
            elif kind == "trending":
                chart = np.log1p(cat.trending[items])
            else:
                chart = -(req.now - cat.created_at[items]) / _DAY
            out.append(Proposal(kind, items, chart.astype(np.float32)))
        return out

    def best_anchors(self, req: Request, items: NDArray[np.int64]) -> NDArray[np.int64]:
        """For each item, the anchor item contributing most to its kNN score
        (-1 where no anchor reaches it)."""
        knn = self.knn(req)
        out = np.full(len(items), -1, np.int64)
        if knn is None or len(items) == 0:
            return out
        pos = positions(knn.entry_item, items)
        hit = pos >= 0
        if not hit.any():
            return out
        contrib = knn.entry_sim[hit] * req.anchor_weights[knn.entry_anchor[hit]]
        p = pos[hit]
        order = np.lexsort((-contrib, p))
        first = np.ones(len(order), dtype=bool)
        first[1:] = p[order][1:] != p[order][:-1]
        best = order[first]
        out[p[best]] = req.anchors[knn.entry_anchor[hit][best]]
        return out

    def candidates(self, req: Request, blocked: NDArray[np.bool_] | None = None) -> Candidates:
        """All sources, merged under their quotas, topped up with popular
        items when fewer than `min_candidates` survive."""
        cfg = self.config
        quotas = {s: cfg.quota(s) for s in SOURCES}
        ok = self.allowed(req, blocked)
        cands = merge(self.propose(req), quotas, ok)
        if len(cands) < cfg.min_candidates:
            cands = self._top_up(req, cands, ok, quotas)
        return cands

    def _top_up(
        self,
        req: Request,
        cands: Candidates,
        ok: Callable[[NDArray[np.int64]], NDArray[np.bool_]],
        quotas: dict[str, int],
    ) -> Candidates:
        cat = self.catalog
        filt = req.category_filter if len(req.query.categories) else np.empty(0, np.int64)
        ranked = cat.ranked("popular", filt)
        need = self.config.min_candidates
        fetch = need + len(cands) + len(req.seen) + len(req.exclude) + 10
        items = ranked[:fetch]
        extra = Proposal("popular", items, np.log1p(cat.popularity[items]).astype(np.float32))
        proposals = [extra]
        more = merge(proposals, {**quotas, "popular": need + len(cands)}, ok)
        if len(more) == 0:
            return cands
        new = ~np.isin(more.items, cands.items)
        if not new.any():
            return cands
        return Candidates(
            np.concatenate([cands.items, more.items[new]]),
            np.vstack([cands.scores, more.scores[new]]),
            np.vstack([cands.ranks, more.ranks[new]]),
            np.concatenate([cands.anchors, more.anchors[new]]),
        )

    def documents(self, frame: pd.DataFrame) -> list[str]:
        """Content documents of item rows (title, text, categories)."""
        titles = frame["title"].fillna("").astype(str) if "title" in frame else [""] * len(frame)
        texts = frame["text"].fillna("").astype(str) if "text" in frame else [""] * len(frame)
        cats = frame["categories"] if "categories" in frame else [[]] * len(frame)
        return [
            item_document(t, x, _categories(c)) for t, x, c in zip(titles, texts, cats, strict=True)
        ]


# ====================================================================== helpers
def _in_sorted(items: NDArray[np.int64], sorted_set: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Membership of items in a sorted array (vectorised binary search); an
    empty set holds nothing (a category filter that matches no item)."""
    if len(sorted_set) == 0:
        return np.zeros(len(items), dtype=bool)
    pos = np.searchsorted(sorted_set, items)
    pos = np.minimum(pos, len(sorted_set) - 1)
    return sorted_set[pos] == items


def positions(values: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.int64]:
    """For each value, its position in `items` (distinct), or -1."""
    order = np.argsort(items, kind="stable")
    sorted_items = items[order]
    pos = np.searchsorted(sorted_items, values)
    pos = np.minimum(pos, len(sorted_items) - 1)
    hit = sorted_items[pos] == values
    return np.where(hit, order[pos], -1).astype(np.int64)


def _top(
    scores: NDArray[np.floating], k: int, *, positive: bool = True
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The k best entries of a dense score vector, best first (only positive
    scores when `positive`: zero means no evidence)."""
    if positive:
        idx = np.flatnonzero(scores > 0)
        vals = scores[idx]
    else:
        idx = np.arange(len(scores))
        vals = scores
    if len(idx) > k:
        part = np.argpartition(-vals, k - 1)[:k]
        idx, vals = idx[part], vals[part]
    order = np.argsort(-vals, kind="stable")
    return idx[order].astype(np.int64), vals[order].astype(np.float32)
