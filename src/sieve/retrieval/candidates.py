"""The candidate set: what the sources propose for one request, and the merge
that turns their proposals into one deduplicated candidate set.

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
- `ease`: EASE scores (dense EASE on catalogs small enough for its dense
  weights; above them, sparse EASE where `ease_large` asks for it);
- `popular`, `trending`: the catalog's all-time and time-decayed charts;
- `fresh`: the newest items;
- `continuation`: items the user viewed, carted or bookmarked but did not
  buy, brought back (exempt from the seen filter) with a per-type weight
  decayed by how far back the event is (`sieve.retrieval.personal`);
- `user_to_user`: the recent items of the users nearest to the user's ALS
  vector (`sieve.retrieval.personal`);
- `sasrec`: the next items a SASRec model predicts after the session's
  items in their order (`Query.recent`; the `neural` extra).

Model outputs that both sources and ranking features need (the user vector,
item-kNN scores, content scores, EASE scores) are computed once per request
and cached on the `Request`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.models.ease import DENSE_MAX_ITEMS
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
    "continuation",
    "user_to_user",
    "sasrec",
)


#: Requests whose dense per-request arrays (kNN entries and scores, content
#: scores) are computed together: enough to share the calls' fixed costs,
#: few enough for the arrays to stay in the processor's cache.
SUB_BLOCK = 16


def joined(parts: Sequence[NDArray[Any]]) -> NDArray[Any]:
    """The arrays end to end; a single one as it is (a block of one copies
    nothing)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class SourcesConfig(Config):
    """Candidate sources and their quotas.

    - `ann`, `item_to_item`, `content`, `ease`, `popular`, `trending`,
      `fresh`: how many candidates each source contributes after filtering
      (0 switches the source off).
    - `ease_max_items`: the dense EASE model serves the EASE source on
      catalogs up to this size: its weights are an items × items matrix whose
      fit costs O(n³) (10,000 items: 0.8 GB and about a minute on 2 cores;
      30,000: 7 GB and nine minutes per fit, and the ranker refits it).
    - `ease_large`: the EASE source above `ease_max_items`: "off" (the
      default) drops it; "sparse" serves it with the sparse EASE model (the
      funnel's `sparse_ease` section: each item regressed on its largest
      co-occurrences, memory and time linear in the catalog). Where EASE is
      the strongest model it brings most of dense EASE's gain back (MovieLens
      100K put past a cap of 1,000 items: NDCG@10 0.417 off, 0.450 sparse,
      0.456 dense), for a longer fit (the ranker refits it on every fold:
      16 s → 114 s at 30,000 items) and ~0.1–0.3 ms more per live answer.
    - `max_recent`: session items used as item-to-item anchors.
    - `recency_decay`: weight of the k-th most recent session item is
      decay^k times its event-type weight.
    - `session_weight`: extra weight of session anchors over history anchors,
      so the session steers item-to-item candidates.
    - `max_history_anchors`: history items used as anchors (the strongest).
    - `content_terms`: terms of the content profile kept for retrieval (the
      strongest; fewer is faster on big catalogs).
    - `content_postings`: posting-list entries the content source reads per
      request at most (the strongest of each term; exact below it, see
      `ContentIndex.top`): what bounds its cost on a big catalog.
    - `min_candidates`: popular items are added when the sources propose
      fewer than this many (cold start, narrow category filters).
    - `continuation`: quota of the continuation source (0: off): items of
      the user's session events (the query's recent events) may come back,
      scored Σ weight(type) · decay^k over their events, k = 0 for the latest
      event; those items are exempt from the seen filter.
    - `continuation_weights`: each event type's weight in the continuation
      score (a type without one brings nothing back).
    - `continuation_decay`: the decay per event back of the continuation score.
    - `continuation_stop`: event types (bought) after which an item never
      comes back.
    - `user_to_user`: quota of the user-to-user source (0: off): recent items
      of the users whose ALS vectors are nearest the user's, scored by the
      summed similarity of the neighbours that hold them.
    - `user_neighbours`: the nearest users the user-to-user source reads.
    - `user_recent_items`: each user's latest items (at training time) that
      the user-to-user source may propose.
    - `ann_model`: whose vectors the `ann` source searches: "als" (item
      factors, the user's factors or fold-in) or "two-tower" (the two-tower
      model's item tower, the user tower over the request's interactions;
      the `neural` extra to train). ALS is fitted either way: the ranker's
      ALS features read it.
    - `sasrec`: quota of the session source (0: off): the items a SASRec
      model (the funnel's `[sasrec]` table) predicts next after the
      session's items, oldest to latest; its score is also a ranking
      feature. Needs PyTorch to train and to serve: install the neural
      extra, `pip install 'sieve[neural]'`.
    """

    ann: int = 100
    item_to_item: int = 100
    content: int = 30
    ease: int = 100
    popular: int = 20
    trending: int = 20
    fresh: int = 10
    ease_max_items: int = DENSE_MAX_ITEMS
    max_recent: int = 20
    recency_decay: float = 0.8
    session_weight: float = 3.0
    max_history_anchors: int = 200
    content_terms: int = 32
    content_postings: int = 30_000
    min_candidates: int = 30
    continuation: int = 0
    continuation_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"view": 0.3, "click": 0.5, "cart": 1.0, "bookmark": 1.0}
    )
    continuation_decay: float = 0.9
    continuation_stop: tuple[str, ...] = ("purchase",)
    user_to_user: int = 0
    user_neighbours: int = 20
    user_recent_items: int = 20
    ann_model: Literal["als", "two-tower"] = "als"
    sasrec: int = 0
    ease_large: Literal["sparse", "off"] = "off"

    def validate(self) -> None:
        for name in (*SOURCES, "ease_max_items", "max_recent", "max_history_anchors"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SourcesConfig.{name} must be >= 0")
        bad = {t: w for t, w in self.continuation_weights.items() if not 0 <= float(w) <= 100}
        if bad or not all(isinstance(t, str) for t in self.continuation_weights):
            raise ConfigError(
                f"SourcesConfig.continuation_weights: event type → weight in [0, 100], got {bad}"
            )
        if not 0 < self.continuation_decay <= 1:
            raise ConfigError("SourcesConfig.continuation_decay must be in (0, 1]")
        stopped = sorted(set(self.continuation_stop) & set(self.continuation_weights))
        if stopped and any(self.continuation_weights[t] > 0 for t in stopped):
            raise ConfigError(
                f"SourcesConfig: {stopped} both bring items back (continuation_weights) "
                "and stop them (continuation_stop); drop one"
            )
        if not 1 <= self.user_neighbours <= 1000:
            raise ConfigError("SourcesConfig.user_neighbours must be in [1, 1000]")
        if not 1 <= self.user_recent_items <= 1000:
            raise ConfigError("SourcesConfig.user_recent_items must be in [1, 1000]")
        if not 0 < self.recency_decay <= 1:
            raise ConfigError("SourcesConfig.recency_decay must be in (0, 1]")
        if self.session_weight < 0:
            raise ConfigError("SourcesConfig.session_weight must be >= 0")
        if self.content_terms < 1:
            raise ConfigError("SourcesConfig.content_terms must be >= 1")
        if self.content_postings < 1:
            raise ConfigError("SourcesConfig.content_postings must be >= 1")
        if self.min_candidates < 0:
            raise ConfigError("SourcesConfig.min_candidates must be >= 0")
        if self.ease_large not in ("sparse", "off"):
            raise ConfigError("SourcesConfig.ease_large must be sparse or off")

    def quota(self, source: str) -> int:
        return int(getattr(self, source))


# ================================================================ request state
@dataclasses.dataclass(frozen=True)
class StoredScores:
    """A request's score row kept as its stored entries (`items` ascending,
    every other item 0): sparse EASE's x_u · B, whose cost then follows the
    user's items and their weights' entries, not the catalog's size."""

    items: NDArray[np.int64]
    values: NDArray[np.float32]

    def at(self, items: NDArray[np.int64]) -> NDArray[np.float32]:
        """The scores of `items` (0 where none is stored)."""
        out = np.zeros(len(items), np.float32)
        if len(self.items):
            pos = np.minimum(np.searchsorted(self.items, items), len(self.items) - 1)
            hit = self.items[pos] == items
            out[hit] = self.values[pos[hit]]
        return out


#: A score row over the training items: dense, or its stored entries.
ScoreRow = NDArray[np.float32] | StoredScores


def scores_at(row: ScoreRow, items: NDArray[np.int64]) -> NDArray[np.float32]:
    """`row[items]` of a dense or stored score row."""
    return row.at(items) if isinstance(row, StoredScores) else row[items]


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
    #: items brought back by the continuation source, best first, with scores
    comeback: tuple[NDArray[np.int64], NDArray[np.float32]] | None = None

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


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Merged, deduplicated candidates with their source memory.

    `scores[c, s]` / `ranks[c, s]` (1-based, among the source's surviving
    proposals) are NaN where source `SOURCES[s]` did not propose candidate c.
    The item-to-item anchor an explanation names is found for the listed
    items only (`CandidateEngine.best_anchors`), not for every candidate.
    """

    items: NDArray[np.int64]
    scores: NDArray[np.float32]
    ranks: NDArray[np.float32]

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
        )


def merge(
    proposals: Sequence[Proposal],
    quotas: dict[str, int],
    allowed: Callable[[NDArray[np.int64]], NDArray[np.bool_]],
) -> Candidates:
    """Filter each proposal with `allowed`, keep its first `quota` survivors,
    and deduplicate, keeping every proposing source's score and rank (the
    block of one of `merge_many`)."""
    return merge_many([proposals], quotas, lambda items, _: allowed(items))[0]


def merge_many(
    proposals: Sequence[Sequence[Proposal]],
    quotas: dict[str, int],
    allowed: Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.bool_]],
) -> list[Candidates]:
    """`merge` of each request's proposals, for a block of requests at once:
    `allowed(items, requests)` filters items proposed to the requests at
    those positions in the block; every proposal's survivors are counted
    in its own segment and each request's candidates deduplicated among its
    own (one sort of (request, item) keys for the block)."""
    parts = [
        (b, p)
        for b, props in enumerate(proposals)
        for p in props
        if len(p.items) and quotas.get(p.source, 0) > 0
    ]
    if not parts:
        return [Candidates.empty() for _ in proposals]
    lens = np.array([len(p.items) for _, p in parts], dtype=np.int64)
    items = np.concatenate([p.items for _, p in parts]).astype(np.int64, copy=False)
    group = np.repeat(np.array([b for b, _ in parts], dtype=np.int64), lens)
    ok = allowed(items, group)
    # each survivor's rank among its proposal's survivors
    survivors = np.cumsum(ok)
    starts = np.cumsum(lens) - lens
    before = np.concatenate([[0], survivors])[starts]
    rank = survivors - np.repeat(before, lens)
    quota = np.repeat(np.array([quotas[p.source] for _, p in parts], dtype=np.int64), lens)
    keep = ok & (rank <= quota)
    kept_items = items[keep]
    kept_group = group[keep]
    scores_all = np.concatenate([p.scores.astype(np.float32, copy=False) for _, p in parts])
    cols = np.repeat(np.array([SOURCES.index(p.source) for _, p in parts], np.int64), lens)[keep]
    width = int(kept_items.max(initial=0)) + 1
    unique, inverse = np.unique(kept_group * width + kept_items, return_inverse=True)
    n = len(unique)
    scores = np.full((n, len(SOURCES)), np.nan, np.float32)
    ranks = np.full((n, len(SOURCES)), np.nan, np.float32)
    scores[inverse, cols] = scores_all[keep]
    ranks[inverse, cols] = rank[keep].astype(np.float32)
    bounds = np.searchsorted(unique // width, np.arange(len(proposals) + 1))
    out_items = unique % width
    return [
        Candidates(out_items[lo:hi], scores[lo:hi], ranks[lo:hi])
        for lo, hi in itertools.pairwise(bounds)
    ]


def positions(values: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.int64]:
    """For each value, its position in `items` (distinct), or -1."""
    if len(values) and len(items):
        lo = min(int(values.min()), int(items.min()))
        size = max(int(values.max()), int(items.max())) + 1
        if lo >= 0 and size <= 4 * (len(values) + len(items)) + 4096:
            # small index range: a lookup table, not a sort and a search
            table = np.full(size, -1, np.int64)
            table[items] = np.arange(len(items), dtype=np.int64)
            return table[values]
    order = np.argsort(items, kind="stable")
    sorted_items = items[order]
    pos = np.searchsorted(sorted_items, values)
    pos = np.minimum(pos, len(sorted_items) - 1)
    hit = sorted_items[pos] == values
    return np.where(hit, order[pos], -1).astype(np.int64)
