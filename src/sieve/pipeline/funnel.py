"""The `Funnel`: a `Recommender` whose live path is `recommend_query` (one
`Query` in, explained `Recommended` items out), with the offline batch API,
the id vocabulary and catalog changes. `sieve.pipeline` describes the stages;
fitting is in `pipeline.training`, saving and loading in `pipeline.persist`.

Longer than most modules: the funnel's whole public surface (live path, batch
API, vocabulary, catalog changes); each stage lives in a module of its own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve import forked
from sieve.config import ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender
from sieve.models.content import ContentTFIDF
from sieve.monitoring.stages import observe_stage  # a no-op until an app listens
from sieve.pipeline.config import FunnelConfig
from sieve.pipeline.persist import load_funnel, save_funnel
from sieve.pipeline.ranked import rank_queries, relevance
from sieve.pipeline.served import rank_items, served_items
from sieve.pipeline.training import (
    FunnelState,
    build_engine,
    categories_of,
    digest,
    fit_attributes,
    train_ranker,
    user_attributes,
)
from sieve.ranking.features import feature_names
from sieve.ranking.logged import LoggedData
from sieve.ranking.query import UserEvent, UserLog, build_query
from sieve.realtime.counters import OnlineCounters
from sieve.rerank.explain import POPULAR
from sieve.rerank.rules import blocked_items
from sieve.retrieval.candidates import Candidates, Request
from sieve.types import Context, ItemList, Query, Recommended, TopN


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
        #: the training snapshot's user attributes by id (set by `fit`, not
        #: saved): offline queries carry them, as the service reads them
        self.user_attributes: dict[str, dict[str, Any]] = {}

    # ================================================================= fit
    def _fit(self, dataset: Dataset) -> FunnelState:
        cfg = self.config
        started = time.time()
        content = None
        if cfg.sources.content > 0:
            content = ContentTFIDF(cfg.content).fit(dataset)
            if content.state.item_matrix.shape[1] == 0:
                content = None
        attributes = fit_attributes(cfg, dataset)
        unknown = sorted(set(cfg.linucb.features) - set(feature_names(attributes)))
        if unknown:
            raise ConfigError(
                f"FunnelConfig.linucb.features: {unknown} are not ranking features "
                "(see sieve.ranking.features and [attributes])"
            )
        engine = build_engine(dataset, cfg, content)
        ranker = (
            train_ranker(cfg, self.logged, dataset, content, engine, attributes)
            if cfg.ranker.enabled
            else None
        )
        engine.catalog.warm(cfg.rerank.long_tail.head_share)
        if attributes is not None:
            attributes.warm(engine.catalog)
        self._user_lookup = None
        self.online = OnlineCounters.replay(dataset.events, categories_of(dataset))
        self.user_log = UserLog(dataset.events)
        self.user_attributes = user_attributes(dataset)
        return FunnelState(
            engine=engine,
            ranker=ranker,
            user_ids=np.asarray(dataset.user_ids, dtype=object).copy(),
            version=digest(cfg, dataset, started),
            fitted_at=started,
            attributes=attributes,
        )

    # ============================================================ serving
    def recommend_query(
        self, query: Query, *, trace: dict[str, Any] | None = None, explain: bool = False
    ) -> list[Recommended]:
        """The live path: one request, its explained list of `query.n` items.
        A cold query (`is_cold`) gets the charts through the same stages,
        whether or not the model knows the user. `trace` (a dict) receives
        the candidates and the ranker's features; `explain` adds each ranked
        item's largest feature contributions (`Recommended.contributions`)."""
        return self._recommend(query, exclude_seen=True, trace=trace, explain=explain)

    def rank_items(
        self, query: Query, items: NDArray[np.int64], *, explain: bool = False
    ) -> list[Recommended]:
        """A caller's items (distinct indices) ranked for the query by the
        ranker, every one of them, explained (`sieve.pipeline.served.rank_items`)."""
        return rank_items(self.state, self.config, self.online, query, items, explain=explain)

    @staticmethod
    def is_cold(query: Query) -> bool:
        """True when nothing personal is known at request time (no history,
        no session): the cold-start path, for unknown users and for known
        users without events alike."""
        return len(query.history) == 0 and len(query.recent) == 0

    def recommend_queries(self, queries: Sequence[Query]) -> list[list[Recommended]]:
        """Each query's `recommend_query` list, the queries ranked together
        (`rank_queries`: one ranker call for all of them): for batch jobs
        over many users (precomputed answers)."""
        return self._recommend_many(list(queries), exclude_seen=True)

    def _recommend(
        self,
        query: Query,
        *,
        exclude_seen: bool,
        trace: dict[str, Any] | None = None,
        explain: bool = False,
    ) -> list[Recommended]:
        return self._recommend_many(
            [query], exclude_seen=exclude_seen, trace=trace, explain=explain
        )[0]

    def _recommend_many(
        self,
        queries: list[Query],
        *,
        exclude_seen: bool,
        trace: dict[str, Any] | None = None,
        explain: bool = False,
    ) -> list[list[Recommended]]:
        """The lists of the queries through `rank_queries`, as served items
        (`served_items`), short lists backfilled with popular items; `trace`
        (for a single query) receives its candidates and features."""
        out: list[list[Recommended]] = [[] for _ in queries]
        asked = [k for k, q in enumerate(queries) if q.n > 0]
        if not asked:
            return out
        state = self.state
        engine = state.engine
        block, blocked, rerank_s = rank_queries(
            state, self.config, self.online, [queries[k] for k in asked], exclude_seen=exclude_seen
        )
        if trace is not None:
            cands, x = block[0].cands, block[0].x
            trace["candidates"] = [str(engine.catalog.item_ids[i]) for i in cands.items]
            trace["features"] = None if x is None else x.tolist()
            trace["feature_names"] = list(feature_names(state.attributes))

        base_weight = self.config.ranker.base_weight
        t2 = time.perf_counter()
        for k, ranked in zip(asked, block, strict=True):
            if len(ranked.cands):
                r = ranked
                out[k] = served_items(
                    state, base_weight, r.req, r.cands, r.x, r.positions, r.scores, explain
                )
        # with the explanations; once per answer that had candidates
        observe_stage(
            "rerank", rerank_s + time.perf_counter() - t2, sum(len(r.cands) > 0 for r in block)
        )
        for k, ranked in zip(asked, block, strict=True):
            listed, n = out[k], queries[k].n
            if len(listed) < n:
                t3 = time.perf_counter()
                taken = np.array([r.item for r in listed], dtype=np.int64)
                floor = min((r.score for r in listed), default=0.0)
                items = self._backfill(ranked.req, taken, n - len(listed), blocked)
                listed.extend(
                    Recommended(int(i), float(floor - 1.0 - j), {}, POPULAR)
                    for j, i in enumerate(items)
                )
                observe_stage("backfill", time.perf_counter() - t3)
        return out

    def relevance(
        self, req: Request, cands: Candidates, x: NDArray[np.float32] | None
    ) -> NDArray[np.float64]:
        """Ranker scores, or the source blend (ranker off, or nothing personal)."""
        return relevance(self.state, self.config, req, cands, x)

    def _backfill(
        self,
        req: Request,
        taken: NDArray[np.int64],
        need: int,
        blocked: NDArray[np.bool_] | None,
    ) -> NDArray[np.int64]:
        """Most popular allowed items not listed (`taken`) yet, to fill a short list."""
        engine = self.state.engine
        cat = engine.catalog
        filt = req.category_filter if len(req.query.categories) else np.empty(0, np.int64)
        allowed = engine.allowed(req, blocked)
        return _first(cat.ranked("all", filt), lambda b: allowed(b) & ~np.isin(b, taken), need)

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
        """Each user's `recommend_query` list (items and scores), its query
        built as the service builds it (`_batch_query`), computed for blocks
        of BATCH_BLOCK users through the same stages (`rank_queries`: one
        ranker call per block) and the same backfill. Under `sieve.forked.jobs`
        the blocks are shared among forked processes (a list does not depend
        on its block), unless the online counters sit behind a connection. A
        user with an empty row (unknown, or known with no training events: a
        cold test user) is asked the same query the service asks for a user
        without events, through the same function, so offline cold start is
        the served one."""
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(user_items)
        if rows.shape[0] != len(users):
            raise ValueError(f"user_items has {rows.shape[0]} rows for {len(users)} users")
        self.state  # noqa: B018 - raises NotFittedError before any work
        out_items = np.full((len(users), n), -1, dtype=np.int64)
        out_scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        if n <= 0:
            return TopN(out_items, out_scores)

        def fill(lo: int, hi: int, out: Sequence[NDArray[Any]]) -> None:
            self._fill_block(users, rows, n, exclude_seen, lo, hi, out[0], out[1])

        remote = self.online is not None and self.online.cache.remote
        # counters behind a connection: a forked worker must not share it
        with forked.jobs(1) if remote else contextlib.nullcontext():
            size = BATCH_BLOCK
            jobs = forked.planned_jobs(-(-len(users) // BATCH_BLOCK))
            if jobs > 1:  # a few blocks each, so that no process waits long for the last
                size = min(BATCH_BLOCK, max(MIN_SHARED_BLOCK, -(-len(users) // (4 * jobs))))
            blocks = [(lo, min(lo + size, len(users))) for lo in range(0, len(users), size)]
            forked.fill_rows(fill, blocks, [out_items, out_scores])
        return TopN(out_items, out_scores)

    def _fill_block(
        self,
        users: NDArray[np.int64],
        rows: sp.csr_matrix,
        n: int,
        exclude_seen: bool,
        start: int,
        stop: int,
        out_items: NDArray[np.int64],
        out_scores: NDArray[np.float32],
    ) -> None:
        """`recommend_batch`'s lists of users start:stop, written into its outputs."""
        queries = [self._batch_query(int(users[r]), rows, r, n) for r in range(start, stop)]
        block, blocked, _ = rank_queries(
            self.state, self.config, self.online, queries, exclude_seen=exclude_seen
        )
        for r, ranked in enumerate(block, start):
            items = ranked.cands.items[ranked.positions][:n]
            k = len(items)
            out_items[r, :k] = items
            out_scores[r, :k] = ranked.scores[:n]
            if k < n:
                floor = float(ranked.scores[-1]) if k else 0.0
                fill = self._backfill(ranked.req, items, n - k, blocked)
                out_items[r, k : k + len(fill)] = fill
                out_scores[r, k : k + len(fill)] = floor - 1.0 - np.arange(len(fill))

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
                return self.query(
                    events, user_id, n=n, user_attributes=self.user_attributes.get(user_id)
                )
        attrs = self.user_attributes.get(user_id, {}) if user_id is not None else {}
        return _row_query(user, rows, r, n, user_id, attrs)

    def query(
        self,
        events: Sequence[UserEvent],
        user_id: str | None,
        *,
        n: int = 10,
        context: Context | None = None,
        categories: tuple[str, ...] = (),
        exclude: Sequence[str] = (),
        now: float | None = None,
        request_id: str = "",
        user_attributes: Mapping[str, Any] | None = None,
        item_fields: Mapping[int, Mapping[str, float]] | None = None,
    ) -> Query:
        """This funnel's request for a user from their events, most recent first
        (`sieve.ranking.query.build_query`: the one query builder), with their
        stored attributes and a caller's per-item fields."""
        engine = self.state.engine
        return build_query(
            events,
            item_index=engine.catalog.find,
            weights=engine.event_weights,
            shape=self.config.query,
            user_id=user_id,
            user=-1 if user_id is None else self.user_index(user_id),
            n=n,
            context=context,
            categories=categories,
            exclude=exclude,
            now=now,
            request_id=request_id,
            user_attributes=user_attributes,
            item_fields=item_fields,
        )

    @property
    def reads_user_attributes(self) -> bool:
        """True when the ranker's features read the user's attributes (the
        service then reads the user with their events)."""
        attrs = self.state.attributes
        return attrs is not None and attrs.config.uses_users

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

    def shown(self, items: NDArray[np.int64]) -> list[tuple[str, str, list[str]]]:
        """(id, title, categories) of each item, as a list shows them; the
        block checked once, not item by item."""
        self._check_items(items)
        catalog = self.state.engine.catalog
        ids, titles = catalog.item_ids, catalog.titles
        return [(str(ids[k]), str(titles[k]), catalog.categories_of(k)) for k in items.tolist()]

    def item_categories(self, item: int) -> list[str]:
        self._check_items(np.array([item]))
        return self.state.engine.catalog.categories_of(item)

    def is_available(self, item: int) -> bool:
        self._check_items(np.array([item]))
        return bool(self.state.engine.catalog.available[item])

    def servable(self, item_ids: Sequence[str]) -> list[bool]:
        """For each id, whether it is a known item available now (one pass,
        for re-checking a stored list)."""
        catalog = self.state.engine.catalog
        available = catalog.available
        out = []
        for item_id in item_ids:
            idx = catalog.find(item_id)
            out.append(idx >= 0 and bool(available[idx]))
        return out

    def changed_since(self, item_ids: Sequence[str], since: float) -> bool:
        """Whether a known item among these had its shown fields (title,
        categories) changed after `since`: a list stored then shows them stale."""
        catalog = self.state.engine.catalog
        changed = catalog.changed_at
        return any(changed[k] > since for k in map(catalog.find, item_ids) if k >= 0)

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
        if self.state.attributes is not None:  # encoded here, not in the next request
            self.state.attributes.warm(cat)
        if engine.content is not None:
            engine.content.delta_position(cat.n_items)

    # ======================================================== persistence
    def save(self, path: str | Path) -> Path:
        """A directory: config.toml, model.json (metadata), catalog and user arrays
        (npz), each sub-model in its own folder by its own `save`, the FAISS
        index (`faiss.write_index`) and the ranker (LightGBM text). No pickle."""
        return save_funnel(path, self.name, self.config, self.state, self.online)

    @classmethod
    def load(cls, path: str | Path) -> Funnel:
        """Read a funnel written by `save`."""
        config, state, online = load_funnel(path, cls.name)
        funnel = cls(config)
        funnel.online = online
        funnel._state = state
        return funnel


# ======================================================================= helpers
#: Users ranked together by `recommend_batch` (their feature rows go to the
#: ranker in one call): bounds the block's feature matrices to a few MB.
BATCH_BLOCK = 256
#: the smallest block when blocks are shared among processes
MIN_SHARED_BLOCK = 64


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


def _row_query(
    user: int,
    rows: sp.csr_matrix,
    r: int,
    n: int,
    user_id: str | None,
    user_attributes: Mapping[str, Any],
) -> Query:
    """The query of one user_items row: history = its items, no session."""
    lo, hi = rows.indptr[r], rows.indptr[r + 1]
    return Query(
        user_id=user_id,
        user=user,
        history=rows.indices[lo:hi].astype(np.int64),
        history_weights=rows.data[lo:hi].astype(np.float32),
        n=n,
        user_attributes=dict(user_attributes),
    )
