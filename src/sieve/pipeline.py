"""The multi-stage funnel: candidate generation → learned ranking → re-ranking.

`Funnel` is a `Recommender` (so `sieve evaluate --models funnel,ease` works)
whose live path is `recommend_query`: one `Query` in, a list of
`Recommended` items out, each with the sources that proposed it and an
explanation.

1. Candidates (`sieve.retrieval`): ALS factors in a FAISS index,
   item-to-item from the session and history, content (TF-IDF), EASE on small
   catalogs, popular, trending and fresh items; merged under per-source
   quotas with seen, excluded, unavailable and out-of-category items removed.
2. Ranking (`sieve.ranking`): LightGBM LambdaMART over the features of
   `sieve.ranking.features` (online-counter features included, read from
   `Funnel.online`), trained on held-out training interactions, on logged
   impressions and their clicks (`Funnel.logged`, `RankerConfig.train_on`)
   or both; a reciprocal-rank blend of the sources when it is off (and for
   requests with no history at all, which get the charts).
3. Re-ranking (`sieve.rerank`): freshness bonus, MMR diversity, a cap per
   category, calibration to the user's category mix, minimum long-tail
   exposure and business rules; then an explanation per item.

Everything is built from one `FunnelConfig` (TOML sections), whose defaults
need no file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config, ConfigError, read_toml
from sieve.data.dataset import Dataset
from sieve.data.schema import UnknownIdError
from sieve.models.base import NotFittedError, Recommender
from sieve.models.content import ContentConfig, ContentTFIDF
from sieve.models.ease import EASE, EASEConfig
from sieve.models.factorization import ALS, ALSConfig
from sieve.models.itemknn import ItemKNN, ItemKNNConfig
from sieve.models.popularity import TrendingConfig
from sieve.ranking.features import FEATURE_NAMES, base_score, candidate_features
from sieve.ranking.logged import LoggedData, logged_training_set
from sieve.ranking.ltr import (
    LTRRanker,
    RankerConfig,
    TrainingSet,
    collect,
    concat,
    fold_fit_part,
    fold_users,
    holdout_labels,
)
from sieve.ranking.query import QueryConfig, UserEvent, UserLog, build_query
from sieve.realtime.counters import OnlineCounters, Replay
from sieve.rerank.explain import POPULAR, explain
from sieve.rerank.rules import blocked_items, violations
from sieve.rerank.stages import RerankConfig, SectionedConfig, rerank
from sieve.retrieval.ann import AnnConfig, AnnIndex
from sieve.retrieval.candidates import SOURCES, Candidates, Request, SourcesConfig
from sieve.retrieval.catalog import Catalog
from sieve.retrieval.content import ContentIndex
from sieve.retrieval.sources import CandidateEngine
from sieve.storage.cache import MemoryCache
from sieve.types import Context, ItemList, Query, Recommended, TopN

log = logging.getLogger(__name__)

_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class BlendConfig(Config):
    """Ranking without the learned ranker: weighted reciprocal-rank fusion,
    relevance = Σ_s weight_s / (`k` + rank of the item in source s).

    - `k`: the fusion constant (larger flattens the rank differences).
    - `ann`, `item_to_item`, `content`, `ease`, `popular`, `trending`,
      `fresh`: the weight of each source.
    """

    k: float = 60.0
    ann: float = 1.0
    item_to_item: float = 1.0
    content: float = 0.5
    ease: float = 1.5
    popular: float = 0.3
    trending: float = 0.5
    fresh: float = 0.2

    def validate(self) -> None:
        if self.k <= 0:
            raise ConfigError("BlendConfig.k must be > 0")
        for s in SOURCES:
            if getattr(self, s) < 0:
                raise ConfigError(f"BlendConfig.{s} must be >= 0")


def _funnel_als() -> ALSConfig:
    return ALSConfig(factors=64, regularization=0.05, alpha=2.0, iterations=15)


@dataclasses.dataclass(frozen=True)
class FunnelConfig(SectionedConfig):
    """The whole funnel, one TOML table per section.

    - `sources`: candidate sources and their quotas (`SourcesConfig`).
    - `ann`: the FAISS index over ALS item factors (`AnnConfig`).
    - `als`, `itemknn`, `ease`, `content`: hyperparameters of the candidate
      models (each model's own config; ALS defaults to 64 factors here).
    - `trending`: time decay of the trending chart (`TrendingConfig`).
    - `ranker`: the LambdaMART ranker and how its labels are made
      (`RankerConfig`).
    - `blend`: source weights when the ranker is off (`BlendConfig`).
    - `rerank`: the re-ranking stages (`RerankConfig`).
    - `query`: how a request is built from a user's events, the same for the
      ranker's training queries and live requests (`QueryConfig`).
    """

    sources: SourcesConfig = dataclasses.field(default_factory=SourcesConfig)
    ann: AnnConfig = dataclasses.field(default_factory=AnnConfig)
    als: ALSConfig = dataclasses.field(default_factory=_funnel_als)
    itemknn: ItemKNNConfig = dataclasses.field(default_factory=ItemKNNConfig)
    ease: EASEConfig = dataclasses.field(default_factory=EASEConfig)
    content: ContentConfig = dataclasses.field(default_factory=ContentConfig)
    trending: TrendingConfig = dataclasses.field(default_factory=TrendingConfig)
    ranker: RankerConfig = dataclasses.field(default_factory=RankerConfig)
    blend: BlendConfig = dataclasses.field(default_factory=BlendConfig)
    rerank: RerankConfig = dataclasses.field(default_factory=RerankConfig)
    query: QueryConfig = dataclasses.field(default_factory=QueryConfig)


def load_funnel_config(path: str | Path) -> FunnelConfig:
    """A `FunnelConfig` from a TOML file (missing keys keep their defaults)."""
    return FunnelConfig.from_dict(read_toml(path))


@dataclasses.dataclass
class FunnelState:
    """What `fit` learns: the candidate engine (models, index, catalog), the
    ranker, the user vocabulary and the identity of this trained funnel."""

    engine: CandidateEngine
    ranker: LTRRanker | None
    user_ids: NDArray[np.object_]
    version: str
    fitted_at: float


class Funnel(Recommender[FunnelConfig, FunnelState]):
    """Candidate generation → LambdaMART ranking → re-ranking, explained.

    Two hooks beside the fitted state:

    - `online`: the online counters the ranker's online features are read
      from. `fit` sets the training snapshot's counters (the log replayed to
      its end; saved with the model), so an offline evaluation serves with
      what the ranker was trained on; the service replaces them with its live
      counters (`sieve.serve.holder.ModelHolder`).
    - `logged`: impressions and attributed feedback to train the ranker on
      when `ranker.train_on` asks for them; set before `fit`.
    """

    name = "funnel"
    config_class = FunnelConfig
    state_class = FunnelState
    serves_cold_start = True  # `is_cold` queries get the charts (no fallback needed)

    def __init__(self, config: FunnelConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._user_lookup: dict[str, int] | None = None
        self.online: OnlineCounters | None = None
        self.logged: LoggedData | None = None
        #: the training snapshot's events per user (set by `fit`, not saved):
        #: offline `recommend_batch` builds each known user's query from them,
        #: as the service builds it from the store
        self.user_log: UserLog | None = None

    # ================================================================= fit
    def _fit(self, dataset: Dataset) -> FunnelState:
        cfg = self.config
        started = time.time()
        content = None
        if cfg.sources.content > 0:
            content = ContentTFIDF(cfg.content).fit(dataset)
            if content.state.item_matrix.shape[1] == 0:
                content = None
        engine = _build_engine(dataset, cfg, content)
        ranker = self._train_ranker(dataset, content, engine) if cfg.ranker.enabled else None
        engine.catalog.warm(cfg.rerank.long_tail.head_share)
        self._user_lookup = None
        self.online = OnlineCounters.replay(dataset.events, _categories_of(dataset))
        self.user_log = UserLog(dataset.events)
        return FunnelState(
            engine=engine,
            ranker=ranker,
            user_ids=np.asarray(dataset.user_ids, dtype=object).copy(),
            version=_digest(cfg, dataset, started),
            fitted_at=started,
        )

    def _train_ranker(
        self, dataset: Dataset, content: ContentTFIDF | None, engine: CandidateEngine
    ) -> LTRRanker | None:
        """LambdaMART on the training set(s) `ranker.train_on` names: held-out
        snapshot interactions, logged impressions (`self.logged`, scored by
        the snapshot's `engine`), or both; None when there are too few query
        groups. Asked for impressions with none usable, it trains on the
        snapshot and says so in the log (a new service has no clicks yet)."""
        cfg = self.config.ranker
        parts: list[TrainingSet] = []
        if cfg.train_on in ("impressions", "both"):
            logged = TrainingSet.empty()
            if self.logged is not None:
                blocked = blocked_items(engine.catalog, self.config.rerank.rules)
                logged = logged_training_set(
                    engine,
                    dataset,
                    self.logged,
                    _categories_of(dataset),
                    cfg,
                    blocked,
                    self.config.query,
                )
            if logged.n_groups < 2:
                log.warning("no usable logged impressions: the ranker trains on the snapshot")
            parts.append(logged)
        if cfg.train_on != "impressions" or sum(p.n_groups for p in parts) < 2:
            parts.append(self._snapshot_training_set(dataset, content))
        data = concat(parts)
        if data.n_groups < 2:
            return None
        return LTRRanker.train(data, FEATURE_NAMES, cfg)

    def _snapshot_training_set(self, dataset: Dataset, content: ContentTFIDF | None) -> TrainingSet:
        """Query groups of held-out training interactions (see
        `sieve.ranking.ltr`), each fold's features computed on models and
        online counters built from that fold's fit part."""
        cfg = self.config.ranker
        labels = holdout_labels(dataset, cfg)
        kept = dataset.matrix.getnnz(axis=1) - labels.getnnz(axis=1)
        eligible = np.flatnonzero((labels.getnnz(axis=1) > 0) & (kept > 0))
        if len(eligible) > cfg.max_users:
            rng = np.random.default_rng(cfg.seed)
            eligible = np.sort(rng.choice(eligible, cfg.max_users, replace=False))
        requests: list[tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64]]] = []
        label_rows: list[NDArray[np.int64]] = []
        categories = _categories_of(dataset)
        for users in fold_users(eligible, labels, dataset.matrix.nnz, cfg):
            fit_part = fold_fit_part(dataset, labels, users)
            engine = _build_engine(fit_part, self.config, content, exact_ann=True)
            replay = Replay(fit_part.events, categories)
            requests.extend(self._training_rows(engine, users, fit_part, replay))
            label_rows.extend(
                labels.indices[labels.indptr[u] : labels.indptr[u + 1]] for u in users
            )
        return collect(requests, label_rows)

    def _training_rows(
        self,
        engine: CandidateEngine,
        users: NDArray[np.int64],
        fit_part: Dataset,
        replay: Replay | None = None,
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64]]]:
        """Offline side of the ranker's features: (candidates, features, base
        score) of each user's query built from the fit part, through
        `featurize`, the function the live path uses.

        Each query has a cut time: the snapshot's end for a random holdout
        (its labels are no later than the rest), the user's last fit-part
        event for a temporal one (the labels came after: the query is asked
        then, `Query.now` = the cut). Queries are visited by cut and `replay`
        (the fit part's log) is advanced to each, so the online features are
        the counters as the live path held them at that moment."""
        cfg = self.config.ranker
        blocked = blocked_items(engine.catalog, self.config.rerank.rules)
        cuts = np.full(len(users), engine.snapshot_time)
        if cfg.holdout == "temporal":
            for k, u in enumerate(users):
                lo, hi = fit_part.last_time.indptr[u], fit_part.last_time.indptr[u + 1]
                times = fit_part.last_time.data[lo:hi]
                times = times[np.isfinite(times)]
                cuts[k] = float(times.max()) if len(times) else engine.snapshot_time
        rows: dict[int, tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64]]] = {}
        log_ = UserLog(fit_part.events)
        for k in np.argsort(cuts, kind="stable"):
            u = int(users[k])
            user_id = str(fit_part.user_ids[u])
            now = float(cuts[k]) if cfg.holdout == "temporal" else None
            query = build_query(
                log_.events(user_id, now),
                item_index=engine.catalog.find,
                weights=engine.event_weights,
                shape=self.config.query,
                user_id=user_id,
                user=u,
                now=now,
            )
            online = replay.advance(float(cuts[k])) if replay is not None else None
            _, cands, x = featurize(engine, query, blocked, online=online)
            assert x is not None  # a training query always has a history
            rows[int(k)] = (cands.items, x, cfg.base_weight * base_score(x))
        return [rows[k] for k in range(len(users))]

    # ============================================================ serving
    def recommend_query(
        self, query: Query, *, trace: dict[str, Any] | None = None
    ) -> list[Recommended]:
        """The live path: one request, its explained list of `query.n` items.
        A cold query (`is_cold`) gets the charts through the same stages,
        whether or not the model knows the user. `trace` (a dict) receives
        the candidates and the ranker's features."""
        return self._recommend(query, exclude_seen=True, trace=trace)

    @staticmethod
    def is_cold(query: Query) -> bool:
        """True when nothing personal is known at request time (no history,
        no session): the cold-start path, for unknown users and for known
        users without events alike."""
        return len(query.history) == 0 and len(query.recent) == 0

    def _recommend(
        self, query: Query, *, exclude_seen: bool, trace: dict[str, Any] | None = None
    ) -> list[Recommended]:
        state = self.state
        engine = state.engine
        cfg = self.config
        if query.n <= 0:
            return []
        from sieve.monitoring.stages import observe_stage  # a no-op until an app listens

        t0 = time.perf_counter()
        blocked = blocked_items(engine.catalog, cfg.rerank.rules)
        ranker = state.ranker
        req, cands, x = featurize(
            engine,
            query,
            blocked,
            exclude_seen=exclude_seen,
            with_features=ranker is not None,
            online=self.online,
        )
        t1 = time.perf_counter()
        observe_stage("retrieval", t1 - t0)  # candidates and their features
        if trace is not None:
            trace["candidates"] = [str(engine.catalog.item_ids[i]) for i in cands.items]
            trace["features"] = None if x is None else x.tolist()
            trace["feature_names"] = list(FEATURE_NAMES)
        out: list[Recommended] = []
        if len(cands):
            relevance = self._relevance(req, cands, x)
            t2 = time.perf_counter()
            observe_stage("ranking", t2 - t1)
            positions = rerank(engine, req, cands.items, relevance, query.n, cfg.rerank)
            # the rules were applied when merging; this is the last line of defence
            positions = positions[
                ~violations(cands.items[positions], engine.catalog, blocked, req.exclude)
            ]
            scores = np.minimum.accumulate(relevance[positions])
            reasons = explain(engine, req, cands, positions)
            for p, score, reason in zip(positions, scores, reasons, strict=True):
                proposed = ~np.isnan(cands.ranks[p])
                sources = {SOURCES[s]: float(cands.scores[p, s]) for s in np.flatnonzero(proposed)}
                out.append(Recommended(int(cands.items[p]), float(score), sources, reason))
            observe_stage("rerank", time.perf_counter() - t2)  # with the explanations
        if len(out) < query.n:
            t3 = time.perf_counter()
            out.extend(self._backfill(req, out, query.n - len(out), blocked))
            observe_stage("backfill", time.perf_counter() - t3)
        return out

    def _relevance(
        self, req: Request, cands: Candidates, x: NDArray[np.float32] | None
    ) -> NDArray[np.float64]:
        """Ranker scores, or the source blend (ranker off, or nothing personal)."""
        ranker = self.state.ranker
        if ranker is not None and x is not None and req.has_signal:
            return ranker.predict(x, self.config.ranker.base_weight * base_score(x))
        blend = self.config.blend
        weights = np.array([getattr(blend, s) for s in SOURCES])
        fused = np.where(np.isnan(cands.ranks), 0.0, weights / (blend.k + cands.ranks))
        return np.asarray(fused.sum(axis=1), dtype=np.float64)

    def _backfill(
        self, req: Request, listed: list[Recommended], need: int, blocked: NDArray[np.bool_] | None
    ) -> list[Recommended]:
        """Most popular allowed items not listed yet, to fill a short list."""
        engine = self.state.engine
        cat = engine.catalog
        filt = req.category_filter if len(req.query.categories) else np.empty(0, np.int64)
        allowed = engine.allowed(req, blocked)
        taken = np.array([r.item for r in listed], dtype=np.int64)
        items = _first(cat.ranked("all", filt), lambda b: allowed(b) & ~np.isin(b, taken), need)
        floor = min((r.score for r in listed), default=0.0)
        return [
            Recommended(int(i), float(floor - 1.0 - k), {}, POPULAR) for k, i in enumerate(items)
        ]

    def popular(
        self, n: int = 10, categories: tuple[str, ...] = (), now: float | None = None
    ) -> list[Recommended]:
        """Trending items (then all-time popular ones), optionally only in the
        categories; items released after `now` are not out yet and left out."""
        engine = self.state.engine
        cat = engine.catalog
        filt = cat.category_ids(categories) if categories else np.empty(0, np.int64)
        blocked = blocked_items(cat, self.config.rerank.rules)

        def ok(batch: NDArray[np.int64]) -> NDArray[np.bool_]:
            mask = cat.available[batch].copy()
            if blocked is not None:
                mask &= ~blocked[batch]
            if now is not None:
                mask &= ~(cat.created_at[batch] > now)
            return mask

        items = _first(cat.ranked("chart", filt), ok, n)
        out = []
        for i in items:
            trend = float(cat.trending[i])
            names = cat.categories_of(int(i))
            shown = next((c for c in categories if c in names), names[0] if names else None)
            if trend > 0:
                reason = f"trending in {shown}" if shown else "trending now"
                out.append(Recommended(int(i), trend, {"trending": trend}, reason))
            else:
                pop = float(cat.popularity[i])
                out.append(Recommended(int(i), pop, {"popular": pop}, POPULAR))
        return out

    def similar_items(self, item: int, n: int = 10) -> ItemList:
        """Item-kNN neighbours, then ALS-embedding and content neighbours to
        fill up (the only ones for items added after training); scores are
        made non-increasing down the list."""
        engine = self.state.engine
        self._check_items(np.array([item]))
        cat = engine.catalog
        lists: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = []
        n_train = engine.n_train_items
        if engine.itemknn is not None and item < n_train:
            sim = engine.itemknn.state.similarity
            lo, hi = sim.indptr[item], sim.indptr[item + 1]
            order = np.argsort(-sim.data[lo:hi], kind="stable")
            lists.append(
                (
                    sim.indices[lo:hi][order].astype(np.int64),
                    sim.data[lo:hi][order].astype(np.float64),
                )
            )
        unit = engine.unit_factors
        if unit is not None and item < n_train:
            cos = unit @ unit[item]
            top = np.argsort(-cos, kind="stable")[: n + 1]
            lists.append((top.astype(np.int64), cos[top].astype(np.float64)))
        if engine.content is not None:
            profile = engine.content.profile(np.array([item]), np.ones(1), cat.n_items)
            if profile is not None:
                cs = engine.content.scores(*profile, cat.n_items)
                top = np.argsort(-cs, kind="stable")[: n + 1]
                top = top[cs[top] > 0]
                lists.append((top.astype(np.int64), cs[top]))
        items: list[int] = []
        scores: list[float] = []
        for ids, vals in lists:
            for i, v in zip(ids.tolist(), vals.tolist(), strict=True):
                if len(items) >= n:
                    break
                if i == item or i in items or not cat.available[i]:
                    continue
                items.append(int(i))
                scores.append(min(v, scores[-1]) if scores else v)
        return ItemList(np.array(items, dtype=np.int64), np.array(scores, dtype=np.float32))

    # ===================================================== Recommender API
    @property
    def n_items(self) -> int:
        return self.state.engine.catalog.n_items

    def recommend_batch(
        self,
        users: NDArray[np.int64],
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        exclude_seen: bool = True,
    ) -> TopN:
        """One `recommend_query` per user, its query built as the service
        builds it (`_batch_query`). A user with an empty row (unknown, or
        known with no training events: a cold test user) is asked the same
        query the service asks for a user without events, through the same
        function, so offline cold start is the served one."""
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(user_items)
        if rows.shape[0] != len(users):
            raise ValueError(f"user_items has {rows.shape[0]} rows for {len(users)} users")
        self.state  # noqa: B018 - raises NotFittedError before any work
        out_items = np.full((len(users), n), -1, dtype=np.int64)
        out_scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        for r, u in enumerate(users):
            query = self._batch_query(int(u), rows, r, n)
            recs = (
                self.recommend_query(query)
                if exclude_seen
                else self._recommend(query, exclude_seen=False)
            )
            for k, rec in enumerate(recs[:n]):
                out_items[r, k] = rec.item
                out_scores[r, k] = rec.score
        return TopN(out_items, out_scores)

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        """Scores of the served order: every item the funnel would list gets
        its list score, the others (seen, filtered) -inf. Costly: one full
        funnel run per user, listing the whole catalog."""
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(user_items)
        out = np.full((len(users), self.n_items), -np.inf, dtype=np.float32)
        for r, u in enumerate(users):
            query = self._batch_query(int(u), rows, r, self.n_items)
            for rec in self.recommend_query(query):
                out[r, rec.item] = rec.score
        return out

    def _batch_query(self, user: int, rows: sp.csr_matrix, r: int, n: int) -> Query:
        """An offline request: a user of the training snapshot whose row is
        their training row is asked exactly as the service would ask (their
        events through `query`, session included); any other row (fold-in
        users, other data) gives a history-only query."""
        user_id = self._user_id(user)
        log_ = self.user_log
        if user_id is not None and log_ is not None and user_id in log_:
            lo, hi = rows.indptr[r], rows.indptr[r + 1]
            events = log_.events(user_id)
            weights = self.state.engine.event_weights
            find = self.state.engine.catalog.find
            seen = {find(i) for i, kind in events if weights.get(kind, 0.0) > 0}
            if seen == set(rows.indices[lo:hi].tolist()):
                return self.query(events, user_id, n=n)
        return _row_query(user, rows, r, n, user_id)

    def query(
        self,
        events: Sequence[UserEvent],
        user_id: str | None,
        *,
        session: Sequence[UserEvent] = (),
        n: int = 10,
        context: Context | None = None,
        categories: tuple[str, ...] = (),
        exclude: Sequence[str] = (),
        now: float | None = None,
        request_id: str = "",
    ) -> Query:
        """This funnel's request for a user from their events, most recent first
        (`sieve.ranking.query.build_query`: the one query builder)."""
        engine = self.state.engine
        return build_query(
            events,
            item_index=engine.catalog.find,
            weights=engine.event_weights,
            shape=self.config.query,
            user_id=user_id,
            user=-1 if user_id is None else self.user_index(user_id),
            session=session,
            n=n,
            context=context,
            categories=categories,
            exclude=exclude,
            now=now,
            request_id=request_id,
        )

    # ======================================================== vocabulary
    @property
    def version(self) -> str:
        """Digest of config, data snapshot and fit time of this funnel."""
        return self.state.version

    @property
    def user_ids(self) -> NDArray[np.object_]:
        return self.state.user_ids

    @property
    def item_ids(self) -> NDArray[np.object_]:
        return self.state.engine.catalog.item_ids

    def _user_id(self, user: int) -> str | None:
        """The external id of a training user index (None: not one)."""
        ids = self.state.user_ids
        return str(ids[user]) if 0 <= user < len(ids) else None

    def user_index(self, user_id: str) -> int:
        """The user's training index, -1 when the funnel has not seen them."""
        if self._user_lookup is None:
            self._user_lookup = {str(v): k for k, v in enumerate(self.state.user_ids)}
        return self._user_lookup.get(str(user_id), -1)

    def item_index(self, item_id: str) -> int:
        """The item's index; raises `UnknownIdError` naming an unknown id."""
        return self.state.engine.catalog.index(item_id)

    def item_title(self, item: int) -> str:
        self._check_items(np.array([item]))
        return str(self.state.engine.catalog.titles[item])

    def item_categories(self, item: int) -> list[str]:
        self._check_items(np.array([item]))
        return self.state.engine.catalog.categories_of(item)

    def is_available(self, item: int) -> bool:
        self._check_items(np.array([item]))
        return bool(self.state.engine.catalog.available[item])

    # ========================================================= catalog
    def with_items(self, items: pd.DataFrame) -> Funnel:
        """A new funnel that shares this one's fitted models and differs only in
        the catalog (`add_items` applied to copies): readers of this funnel never
        see it change. Costs one copy of the catalog arrays per call, so callers
        batch their changes."""
        state = self.state
        engine = copy.copy(state.engine)
        engine.catalog = state.engine.catalog.copy()
        engine.content = copy.copy(state.engine.content)
        new = copy.copy(self)
        new._state = dataclasses.replace(state, engine=engine)
        new.add_items(items)
        return new

    def add_items(self, items: pd.DataFrame) -> None:
        """Add unknown items (cold start: the content source can propose them
        at once) and update the metadata and availability of known ones; no
        retraining. Columns: `item_id` plus any of ITEM_COLUMNS and `available`."""
        if "item_id" not in items:
            raise ValueError("add_items needs an `item_id` column")
        engine = self.state.engine
        cat = engine.catalog
        frame = items.drop_duplicates("item_id", keep="last").reset_index(drop=True)
        frame["item_id"] = frame["item_id"].astype(str)
        idx = np.array([cat.find(i) for i in frame["item_id"]], dtype=np.int64)
        known = idx >= 0
        text_cols = {"title", "text", "categories"} & set(frame.columns)
        if known.any():
            old = frame[known].reset_index(drop=True)
            cat.update(idx[known], old)
            if engine.content is not None and text_cols:
                engine.content.set_rows(idx[known], engine.documents(old), cat.n_items)
        if (~known).any():
            new = frame[~known].reset_index(drop=True)
            added = cat.append(new)
            if engine.content is not None:
                engine.content.set_rows(added, engine.documents(new), cat.n_items)
        cat.warm(self.config.rerank.long_tail.head_share)
        if engine.content is not None:
            engine.content.delta_position(cat.n_items)

    # ======================================================== persistence
    def save(self, path: str | Path) -> Path:
        """A directory: config.toml, model.json (metadata), catalog and user arrays
        (npz), each sub-model in its own folder by its own `save`, the FAISS
        index (`faiss.write_index`) and the ranker (LightGBM text). No pickle."""
        state = self.state
        engine = state.engine
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.toml").write_text(self.config.to_toml())
        engine.catalog.save(path / "catalog.npz")
        np.savez(
            path / "users.npz",
            user_ids=np.array([str(u) for u in state.user_ids], dtype=str),
            train_count=engine.user_train_count,
            train_sum=engine.user_train_sum,
        )
        parts: dict[str, bool] = {}
        for name in ("als", "itemknn", "ease"):
            model = getattr(engine, name)
            parts[name] = model is not None
            if model is not None:
                model.save(path / name)
        parts["content"] = engine.content is not None
        if engine.content is not None:
            engine.content.model.save(path / "content")
            engine.content.save(path / "content_delta.npz")
        parts["ann"] = engine.ann is not None
        if engine.ann is not None:
            engine.ann.save(path / "ann")
        parts["ranker"] = state.ranker is not None
        if state.ranker is not None:
            state.ranker.save(path / "ranker.txt")
        parts["counters"] = self.online is not None
        if self.online is not None:
            _save_counters(
                path / "counters.npz",
                self.online.export(engine.catalog.item_ids.tolist(), state.user_ids.tolist()),
            )
        meta = {
            "model": self.name,
            "format": _FORMAT,
            "version": state.version,
            "fitted_at": state.fitted_at,
            "snapshot_time": engine.snapshot_time,
            "n_train_items": engine.n_train_items,
            "event_weights": engine.event_weights,
            "parts": parts,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Funnel:
        """Read a funnel written by `save`."""
        path = Path(path)
        meta_file = path / "model.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} holds no saved model (no model.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("model") != cls.name:
            raise TypeError(f"{path} holds a {meta.get('model')} model, not a funnel")
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: funnel format {meta.get('format')} is not {_FORMAT}")
        funnel = cls(FunnelConfig.from_toml((path / "config.toml").read_text()))
        parts = meta["parts"]
        als = ALS.load(path / "als") if parts["als"] else None
        itemknn = ItemKNN.load(path / "itemknn") if parts["itemknn"] else None
        ease = EASE.load(path / "ease") if parts["ease"] else None
        content = None
        if parts["content"]:
            model = ContentTFIDF.load(path / "content")
            assert isinstance(model, ContentTFIDF)
            content = ContentIndex.load(model, path / "content_delta.npz")
        users = np.load(path / "users.npz", allow_pickle=False)
        engine = CandidateEngine(
            funnel.config.sources,
            Catalog.load(path / "catalog.npz"),
            {str(k): float(v) for k, v in meta["event_weights"].items()},
            als=als,  # type: ignore[arg-type]
            ann=AnnIndex.load(path / "ann") if parts["ann"] else None,
            itemknn=itemknn,  # type: ignore[arg-type]
            ease=ease,  # type: ignore[arg-type]
            content=content,
            user_train_count=users["train_count"].astype(np.int64),
            user_train_sum=users["train_sum"].astype(np.int64),
            n_train_items=int(meta["n_train_items"]),
            snapshot_time=float(meta["snapshot_time"]),
        )
        engine.catalog.warm(funnel.config.rerank.long_tail.head_share)
        ranker = LTRRanker.load(path / "ranker.txt") if parts["ranker"] else None
        if parts.get("counters", False):
            records = _load_counters(path / "counters.npz")
            funnel.online = OnlineCounters(MemoryCache())
            funnel.online.restore(records)
        funnel._state = FunnelState(
            engine=engine,
            ranker=ranker,
            user_ids=users["user_ids"].astype(object),
            version=str(meta["version"]),
            fitted_at=float(meta["fitted_at"]),
        )
        return funnel


# ======================================================================= helpers
def _first(
    ranked: NDArray[np.int64], ok: Callable[[NDArray[np.int64]], NDArray[np.bool_]], need: int
) -> NDArray[np.int64]:
    """The first `need` items of a ranking that pass `ok`, checked in growing
    chunks (a chart of the whole catalog is never filtered in full)."""
    found: list[NDArray[np.int64]] = []
    count = 0
    start = 0
    chunk = max(2 * need, 32)
    while start < len(ranked) and count < need:
        batch = ranked[start : start + chunk]
        found.append(batch[ok(batch)])
        count += len(found[-1])
        start += chunk
        chunk *= 4
    return np.concatenate(found)[:need] if found else np.empty(0, np.int64)


def featurize(
    engine: CandidateEngine,
    query: Query,
    blocked: NDArray[np.bool_] | None,
    *,
    exclude_seen: bool = True,
    with_features: bool = True,
    online: OnlineCounters | None = None,
) -> tuple[Request, Candidates, NDArray[np.float32] | None]:
    """Request → candidates → ranking features: the one code path shared by
    the ranker's training set (offline) and every live request (online);
    `online`: the counters the online features are read from."""
    req = engine.request(query, exclude_seen=exclude_seen)
    cands = engine.candidates(req, blocked)
    x = candidate_features(engine, req, cands, online) if with_features and req.has_signal else None
    return req, cands, x


def _categories_of(dataset: Dataset) -> Callable[[str], list[str]]:
    """Item id → its categories in a snapshot (none for unknown ids)."""
    table = dict(zip((str(i) for i in dataset.item_ids), dataset.item_categories(), strict=True))
    return lambda item_id: table.get(item_id, [])


def _save_counters(path: Path, records: dict[str, bytes]) -> None:
    """Counter records (key → bytes) as an npz: keys, sizes, one byte buffer."""
    blobs = list(records.values())
    np.savez(
        path,
        keys=np.array(list(records), dtype=str),
        sizes=np.array([len(b) for b in blobs], dtype=np.int64),
        data=np.frombuffer(b"".join(blobs), dtype=np.uint8),
    )


def _load_counters(path: Path) -> dict[str, bytes]:
    with np.load(path, allow_pickle=False) as f:
        keys, sizes, data = f["keys"], f["sizes"], f["data"].tobytes()
    ends = np.cumsum(sizes)
    return {
        str(k): data[e - n : e] for k, n, e in zip(keys, sizes.tolist(), ends.tolist(), strict=True)
    }


def _build_engine(
    dataset: Dataset,
    cfg: FunnelConfig,
    content: ContentTFIDF | None,
    *,
    exact_ann: bool = False,
) -> CandidateEngine:
    """Fit the candidate models of a snapshot (content is fitted once, on
    item text only, and shared)."""
    src = cfg.sources
    times = dataset.events["timestamp"].to_numpy(np.float64)
    finite = times[np.isfinite(times)]
    snapshot = float(finite.max()) if len(finite) else 0.0
    catalog = Catalog.from_dataset(dataset, cfg.trending, snapshot)
    als = ann = itemknn = ease = None
    if src.ann > 0:
        als = ALS(cfg.als).fit(dataset)
        ann = AnnIndex.build(als.state.item_factors, cfg.ann, exact=True if exact_ann else None)
    if src.item_to_item > 0:
        itemknn = ItemKNN(cfg.itemknn).fit(dataset)
    if src.ease > 0 and dataset.n_items <= src.ease_max_items:
        ease = EASE(cfg.ease).fit(dataset)
    matrix = dataset.matrix
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    train_sum = np.bincount(
        rows, weights=matrix.indices.astype(np.float64), minlength=matrix.shape[0]
    )
    return CandidateEngine(
        src,
        catalog,
        dict(dataset.weights.weights),
        als=als,
        ann=ann,
        itemknn=itemknn,
        ease=ease,
        content=ContentIndex(content) if content is not None else None,
        user_train_count=np.diff(matrix.indptr).astype(np.int64),
        user_train_sum=np.rint(train_sum).astype(np.int64),
        n_train_items=dataset.n_items,
        snapshot_time=snapshot,
    )


def _row_query(user: int, rows: sp.csr_matrix, r: int, n: int, user_id: str | None) -> Query:
    """The query of one user_items row: history = its items, no session."""
    lo, hi = rows.indptr[r], rows.indptr[r + 1]
    return Query(
        user_id=user_id,
        user=user,
        history=rows.indices[lo:hi].astype(np.int64),
        history_weights=rows.data[lo:hi].astype(np.float32),
        n=n,
    )


def _digest(cfg: FunnelConfig, dataset: Dataset, fitted_at: float) -> str:
    """A short digest of config, data snapshot and fit time."""
    h = hashlib.sha256()
    h.update(cfg.to_toml().encode())
    m = dataset.matrix
    h.update(np.array([m.shape[0], m.shape[1], m.nnz], dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(m.indptr).tobytes())
    h.update(np.ascontiguousarray(m.indices).tobytes())
    h.update(np.ascontiguousarray(m.data).tobytes())
    h.update("\n".join(str(i) for i in dataset.item_ids).encode())
    h.update(repr(fitted_at).encode())
    return h.hexdigest()[:16]


__all__ = [
    "BlendConfig",
    "Funnel",
    "FunnelConfig",
    "FunnelState",
    "NotFittedError",
    "UnknownIdError",
    "load_funnel_config",
]
