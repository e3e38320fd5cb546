"""The catalog the funnel serves from: item ids, titles, categories, release
times, availability, free-form attributes and the popularity charts of the
training snapshot, with the category filters and charts every request reads.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.data.schema import UnknownIdError
from sieve.models.popularity import Trending, TrendingConfig

T = TypeVar("T")


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
        attributes: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.titles = np.asarray(titles, dtype=object)
        self.category_names = list(category_names)
        self.item_categories = sp.csr_matrix(item_categories, dtype=np.float32)
        self.created_at = np.asarray(created_at, dtype=np.float64)
        self.available = np.asarray(available, dtype=bool)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.trending = np.asarray(trending, dtype=np.float64)
        #: each item's free-form attributes (ranking features read them:
        #: `sieve.ranking.attributes`)
        self.attributes: list[dict[str, Any]] = (
            [{} for _ in range(len(self.item_ids))]
            if attributes is None
            else [dict(a) if isinstance(a, dict) else {} for a in attributes]
        )
        #: when each item's shown fields (title, categories) last changed
        #: while serving (0: not since loading; not saved): a stored answer
        #: computed before that shows stale fields and is not served
        self.changed_at = np.zeros(len(self.item_ids))
        self._lookup: dict[str, int] | None = None
        self._reset()

    def _reset(self) -> None:
        """Drop every derived array (after the catalog changed); the id
        lookup is kept up to date by `append` instead."""
        self._category_lookup = {c: k for k, c in enumerate(self.category_names)}
        self._csc: sp.csc_matrix | None = None
        self._ranked: dict[tuple[str, tuple[int, ...]], NDArray[np.int64]] = {}
        self._released: dict[tuple[int, ...], NDArray[np.float64]] = {}
        self._head: dict[float, NDArray[np.bool_]] = {}
        self._blocked: dict[tuple[str, ...], NDArray[np.bool_]] = {}
        self._distribution: sp.csr_matrix | None = None
        self._percentile: dict[str, NDArray[np.float64]] = {}
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """A value derived from this catalog (`build()`), kept until the
        catalog changes (two threads may both build it: either result is right)."""
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = build()
        return found

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
            attributes=list(items["attributes"]) if "attributes" in items else None,
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
        for name in (
            "item_ids",
            "titles",
            "created_at",
            "available",
            "popularity",
            "trending",
            "changed_at",
        ):
            setattr(out, name, getattr(self, name).copy())
        out.item_categories = self.item_categories.copy()
        out.category_names = list(self.category_names)
        out.attributes = list(self.attributes)
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
            self._released.clear()
        self._ranked[key] = out
        return out

    def fresh(self, category_ids: NDArray[np.int64], now: float) -> NDArray[np.int64]:
        """The "fresh" chart of items released by `now`, newest first: a
        binary search on the cached release times, not a pass over the chart."""
        ranked = self.ranked("fresh", category_ids)
        key = tuple(int(c) for c in category_ids)
        negated = self._released.get(key)
        if negated is None or len(negated) != len(ranked):
            negated = -self.created_at[ranked]  # ascending: the chart is newest first
            self._released[key] = negated
        return ranked[int(np.searchsorted(negated, -now, side="left")) :]

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
        self.changed_at = np.concatenate([self.changed_at, zeros])
        self.attributes += _attributes(frame)
        self._reset()
        return np.arange(start, self.n_items, dtype=np.int64)

    def update(
        self, items: NDArray[np.int64], frame: pd.DataFrame, at: float | None = None
    ) -> None:
        """Update the metadata of known items from the frame's given columns.
        Titles and availability are read per request (nothing to rebuild);
        release times invalidate the fresh chart, categories everything. A
        new title or categories stamp the items' `changed_at` with `at`
        (default: now)."""
        if "title" in frame or "categories" in frame:
            self.changed_at[items] = time.time() if at is None else at
        if "title" in frame:
            self.titles[items] = frame["title"].fillna("").astype(str).to_numpy(object)
        if "available" in frame:
            self.available[items] = _availability(frame)
        if "attributes" in frame:
            for item, attrs in zip(items.tolist(), _attributes(frame), strict=True):
                self.attributes[item] = attrs
            self._memo = {}
        if "created_at" in frame:
            self.created_at[items] = frame["created_at"].to_numpy(np.float64)
            self._ranked = {k: v for k, v in self._ranked.items() if k[0] != "fresh"}
            self._released = {}
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
            attributes=np.array([json.dumps(a, default=str) for a in self.attributes], dtype=str),
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
            attributes=(
                [json.loads(str(a)) for a in z["attributes"]] if "attributes" in z else None
            ),
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


def _attributes(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's `attributes` column as dicts (none given: empty dicts)."""
    if "attributes" not in frame:
        return [{} for _ in range(len(frame))]
    return [dict(a) if isinstance(a, dict) else {} for a in frame["attributes"]]


def _availability(frame: pd.DataFrame) -> NDArray[np.bool_]:
    if "available" not in frame:
        return np.ones(len(frame), dtype=bool)
    col = frame["available"]
    return np.array(
        [True if v is None or (isinstance(v, float) and np.isnan(v)) else bool(v) for v in col],
        dtype=bool,
    )
