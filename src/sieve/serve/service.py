"""The service: the store, the cache and the serving snapshot behind the API.

A small facade over parts with one job each:
- `holder.ModelHolder`: immutable serving snapshots, hot swap, variants;
- `ingest.EventIngestion`: validate → attribute → append → publish;
- `live.LiveAnswers`: a user's, a session's or an item's list computed now,
  through the one query builder (`Funnel.query`, `sieve.ranking.query`),
  which training uses too: a live request reads the user's latest stored
  events (as many as the query's history and session take) and nothing else;
- `planner`: what a request's experiment arms ask for; `shadows`: shadow
  arms computed after the answer; `credit`: bandit credit for clicks;
- `answers`: precomputed answers; `impressions`: the impression log;
- `follow.Follower`: what this process reads from the shared stores on a
  short poll (the promoted model, other replicas' catalog writes, the
  experiments), so any number of processes behave as one service.

Every call to a database server has a time limit (`store_timeout_seconds`,
through `GuardedStore`) and every cache call one (Redis timeouts, a cool-down
after a failure); a failed cache only makes requests answer live.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sieve.data.records import Event, Item
from sieve.experiments.online import Arm, ExperimentBook, ExperimentRecord
from sieve.experiments.report import experiment_report
from sieve.explore.slots import ExplorationSlots
from sieve.monitoring.drift import DriftMonitor
from sieve.monitoring.metrics import NONE, ServingMetrics
from sieve.ranking.query import UserLog
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry
from sieve.serve import answers
from sieve.serve.credit import ServedRequests
from sieve.serve.follow import Follower
from sieve.serve.holder import ModelHolder, NoModelError, items_frame
from sieve.serve.impressions import ImpressionLogger, impression_of
from sieve.serve.ingest import EventIngestion
from sieve.serve.leaderboards import Leaderboards
from sieve.serve.listing import Filters, listed, new_request_id
from sieve.serve.live import Defer, LiveAnswers
from sieve.serve.rank import CallerRanking
from sieve.serve.rank_schemas import RankedList, RankRequest
from sieve.serve.schemas import RecommendationList, RecommendedItem
from sieve.serve.shadows import ShadowRunner
from sieve.serve.signals import RecentSessions
from sieve.settings import Settings
from sieve.storage import Cache, CacheError, Store, StoreError, open_cache, open_store
from sieve.storage.guard import GuardedStore

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger("sieve.serve")

#: Seconds one replica may take to precompute a version's lists before another may.
PRECOMPUTE_CLAIM_SECONDS = 600.0
#: Seconds a version's precompute counts as done for replicas starting later.
PRECOMPUTE_DONE_SECONDS = 86_400.0


class Service:
    """Store + cache + the serving snapshot (see the module doc)."""

    def __init__(self, settings: Settings, store: Store, cache: Cache) -> None:
        self.settings = settings
        timeout = settings.store_timeout_seconds
        #: the store for the request path: every call of a database server has a
        #: time limit (SQLite's own `busy_timeout` bounds the waits of a local file)
        guard = timeout > 0 and not str(store.url).startswith("sqlite")
        self.store: Store = GuardedStore(store, timeout) if guard else store
        #: the store for background work (model loads, counters, drift), whose
        #: reads grow with the catalog or the log and must not be cut short
        self.background_store = store
        self.cache = cache
        # a request waits for the impression log no longer than for the store
        self.impressions = ImpressionLogger(
            store, flush_timeout=settings.store_timeout_seconds or None
        )
        #: online counters (item views/clicks/CTR per window, user recency and
        #: affinity), folded from the stored log by `ingestion`
        self.counters = OnlineCounters(cache, semantics=settings.semantics)
        self.metrics = ServingMetrics.for_settings(settings, self.store)
        self.metrics.watch_impression_drops(lambda: self.impressions.dropped)
        #: named non-personalised lists, computed periodically into the cache
        self.leaderboards = Leaderboards(settings, self.store, cache)
        # the last hour's sessions and dwell for /metrics (a bounded read, cached)
        self.metrics.watch_sessions(RecentSessions(self.store, settings.semantics))
        self.holder = ModelHolder(Path(settings.model_dir), store, self.counters)
        self.experiments = ExperimentBook(
            self.store, cache, refresh_seconds=math.inf, semantics=settings.semantics
        )
        self.explorer = ExplorationSlots(cache)
        self.ingestion = EventIngestion(
            settings,
            self.store,
            cache,
            self.impressions,
            self.metrics,
            self.counters,
            self._credit_clicks,
            background_store=store,
            served_items=self._served_items,
        )
        self.drift = DriftMonitor(
            settings,
            store,
            version=lambda: self.model_version,
            registry=self.metrics.registry,
            flush=self.impressions.flush,
            cache=cache,
        )
        #: served requests awaiting the clicks that credit their bandits
        self.served = ServedRequests(cache, ttl=settings.attribution_window_seconds)
        # shadow arms are computed here, after their request was answered
        self.shadows = ShadowRunner(self._log_impression)
        self.live = LiveAnswers(
            settings,
            self.store,
            self.holder,
            self.experiments,
            self.explorer,
            self.served,
            self.shadows,
            self._log_impression,
            cache=self.cache,
        )
        #: `POST /rank`: a caller's list ranked by the funnel's ranker
        self.ranking = CallerRanking(self.holder, self.live, self._log_impression)
        self.metrics.watch_lane(self.live.lane)
        #: reads the shared stores on a short poll (model, catalog, experiments)
        self.follower = Follower(
            settings,
            store,
            self.holder,
            self.experiments,
            self.load_model,
            self.ingestion.nudge_counters,
        )
        #: this process among the replicas (host:pid), as `/version` says
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        #: the store's last seq at start: ready once the counters folded it
        self.warm_seq = 0

    @classmethod
    def open(cls, settings: Settings, *, load_model: bool = True) -> Service:
        """Open the store and the cache of `settings` and load the current funnel, if any."""
        store = open_store(settings.store_url)
        try:
            cache = open_cache(settings.cache_url)
        except BaseException:
            store.close()
            raise
        service = cls(settings, store, cache)
        try:  # other replicas' catalog writes from here on reach this funnel
            service.follower.catalog_seq = service.store.catalog_seq()
        except StoreError:  # the store's failure is reported by /ready
            log.warning("catalog change sequence unreadable at start", exc_info=True)
        if load_model:
            try:
                service.load_model()
            except Exception as e:  # serve the catalog and say why in /ready
                service.holder.load_error = f"the model could not be loaded: {e}"
                log.exception("the model could not be loaded; serving without one")
        try:  # ready once the counters hold the log stored before the start
            service.warm_seq = service.store.max_seq()
        except Exception:  # the store's failure is reported by /ready
            service.warm_seq = 0
        service.ingestion.nudge_counters()  # catch the counters up with the stored log
        return service

    def close(self) -> None:
        self.follower.stop()
        self.shadows.close()
        self.ingestion.close()
        self.impressions.close()
        self.store.close()
        self.cache.close()

    def follow(self) -> None:
        """Start following the shared stores (`sieve.serve.follow`): the
        promoted model every `model_poll_seconds` (0: only on `POST
        /admin/reload`), other replicas' catalog writes every
        `catalog_poll_seconds`, the experiments every few seconds."""
        self.experiments.refresh(force=True)
        self.follower.start()

    # ------------------------------------------------------------- model
    @property
    def funnel(self) -> Funnel:
        """The serving funnel; `NoModelError` before any is loaded."""
        return self.holder.snapshot.funnel

    @property
    def model_version(self) -> str | None:
        return self.holder.version

    @property
    def model_path(self) -> Path | None:
        snap = self.holder._snapshot
        return None if snap is None else snap.path

    @property
    def load_error(self) -> str | None:
        return self.holder.load_error

    def load_model(self) -> bool:
        """(Re)load the funnel `CURRENT` names; False if none is trained."""
        if not self.holder.load():
            return False
        self.metrics.model_loaded(str(self.holder.version))
        return True

    def items_changed(self, items: Sequence[Item]) -> None:
        """New or updated items: servable at once (by content) without retraining."""
        self.holder.apply_catalog(items_frame(items))

    def items_removed(self, items: Sequence[Item]) -> None:
        """Deleted items: kept in the funnel as unavailable, so they are not served."""
        self.holder.apply_catalog(items_frame(items, available=False))

    def users_changed(self, user_ids: Sequence[str]) -> None:
        """Users written or deleted: their stored answers are not served any more."""
        self.ingestion.mark_changed(list(user_ids))

    # ------------------------------------------------------------ events
    def check_events(self, events: Sequence[Event]) -> None:
        self.ingestion.check(events)

    def record_events(self, events: Sequence[Event]) -> tuple[int, list[str]]:
        """Validate and append atomically; see `sieve.serve.ingest`. Under
        load the batch first lets the live computations in progress finish,
        for at most `ingest_yield_seconds` (`Lane.yield_to_live`)."""
        self.live.lane.yield_to_live(self.settings.ingest_yield_seconds)
        return self.ingestion.record(events)

    def flush_counters(self) -> None:
        """Wait until every event stored so far is in the online counters."""
        self.ingestion.flush_counters()

    # ---------------------------------------------------------- requests
    async def cached_answer(
        self, user_id: str, n: int, filters: Filters = Filters()
    ) -> answers.CachedAnswer | None:
        """The precomputed answer when it is valid for this request, else None.
        Never blocks the event loop; its impression is built off the request
        path (`impressions.cached_impression`)."""
        if not filters.empty:
            return None
        snap = self.holder.snapshot
        if self.experiments.in_experiment(user_id):
            return None  # the arm decides the list: answered live
        entry = await answers.lookup(self.cache, snap.funnel, user_id, n, snap.version)
        self.metrics.cache_lookup(hit=entry is not None)
        if entry is None:
            return None
        hit = answers.CachedAnswer(
            entry.rows, new_request_id(), snap.version, user_id, entry.cold_start
        )
        self.impressions.log(hit.impression(datetime.now(UTC)), user_id)
        self.metrics.served_list(hit.request_id, n=len(entry.rows))
        return hit

    def recommend_user(
        self,
        user_id: str,
        n: int,
        filters: Filters = Filters(),
        log: bool = True,
        trace: dict[str, Any] | None = None,
        explain: bool = False,
        uniform: bool = False,
        defer: Defer | None = None,
    ) -> RecommendationList:
        """Top-n for `user_id`, live (`sieve.serve.live`); `explain`: with each
        ranked item's feature contributions; `uniform`: a list of the random
        slice (`in_random_slice`); `defer`: where keeping the answer goes
        (`LiveAnswers.recommend_user`)."""
        return self.live.recommend_user(user_id, n, filters, log, trace, explain, uniform, defer)

    def in_random_slice(self) -> bool:
        """Whether a request is served the random slice (`random_share`):
        drawn before the precomputed lookup, which such a request skips."""
        return self.live.random_slice.draw()

    def recommend_session(
        self, recent_items: Sequence[str], n: int, filters: Filters = Filters()
    ) -> RecommendationList:
        """Top-n for an anonymous session from its recent item ids (most recent first)."""
        return self.live.recommend_session(recent_items, n, filters)

    def rank(self, body: RankRequest) -> RankedList:
        """A caller's items ranked for a user (`sieve.serve.rank`)."""
        return self.ranking.rank(body)

    def similar(self, item_id: str, n: int) -> list[RecommendedItem]:
        """Items like `item_id` (`UnknownIdError` if the funnel does not know it)."""
        return self.live.similar(item_id, n)

    def popular(self, n: int, categories: tuple[str, ...] = ()) -> list[RecommendedItem]:
        """The trending items now, optionally restricted to `categories`."""
        return self.live.popular(n, categories)

    # ------------------------------------------------------------ bandits
    def _credit_clicks(self, events: Sequence[Event]) -> None:
        """Clicks citing a served request reward its exploration slots and its
        adaptively allocated arms (`sieve.serve.credit`)."""
        self.served.credit(events, self.settings.semantics, self.explorer, self.experiments)

    # -------------------------------------------------------- experiments
    def create_experiment(self, spec: Mapping[str, Any]) -> ExperimentRecord:
        """Validate (arms' model versions registered, no conflict with a running
        experiment of another layer: `sieve.experiments.compose.conflicts`) and store."""
        known = [m.version for m in ModelRegistry(self.settings.model_dir).list()]
        return self.experiments.create(spec, known)

    def flush_impressions(self) -> None:
        """Wait until every request answered so far has its impression stored,
        those waiting for their shadow lists included."""
        self.shadows.flush()
        self.impressions.flush()

    def experiment_report(self, name: str, alpha: float = 0.05) -> dict[str, Any]:
        """The analysis of an experiment (see `sieve.experiments.report`)."""
        record = self.experiments.get(name)
        self.flush_impressions()
        out = experiment_report(
            self.store,
            record,
            alpha=alpha,
            catalog_size=self.store.count_items(),
            cache=self.cache,
            semantics=self.settings.semantics,
        )
        if record.experiment.allocation == "thompson":
            out["allocation_state"] = self.experiments.allocation(name)
        return out

    # ------------------------------------------------------------- batch
    def precompute_once(self, n: int | None = None) -> int | None:
        """`precompute` at start-up, by one replica per model version and
        cache: the first to claim it computes the lists every replica then
        reads; others return None at once. A claim is marked done when the
        lists are stored, and lapses after `PRECOMPUTE_CLAIM_SECONDS` if its
        replica died first."""
        version = self.model_version
        if version is None:
            return None
        done, claim = f"precomputed:{version}", f"precomputing:{version}"
        try:
            if self.cache.get(done) is not None:
                return None
            if not self.cache.add(claim, self.replica.encode(), PRECOMPUTE_CLAIM_SECONDS):
                return None
        except CacheError:
            log.warning("cache unavailable: lists not precomputed", exc_info=True)
            return None
        count = self.precompute(n)
        self.cache.set(done, self.replica.encode(), PRECOMPUTE_DONE_SECONDS)
        return count

    def precompute(self, n: int | None = None, users: Sequence[str] | None = None) -> int:
        """Store the top-n of every user the funnel knows (or of `users`) under
        `recs:{user}` (see `sieve.serve.answers`): each list is the live path's,
        through the one query builder, for blocks of users at once
        (`Funnel.recommend_queries`)."""
        funnel = self.funnel
        n = n or self.settings.batch_n
        ids = [str(u) for u in (funnel.user_ids if users is None else users)]
        # a batch job: the log read once (no time limit), each user's events from it
        history = UserLog(self.background_store.events_frame())
        attributes: dict[str, dict[str, Any]] = {}
        if funnel.reads_user_attributes:  # read once, not once per user
            frame = self.background_store.users_frame()
            attributes = dict(zip(frame["user_id"].astype(str), frame["attributes"], strict=True))

        def answer(user_ids: list[str], computed_at: float) -> list[list[RecommendedItem]]:
            queries = [
                self.live.user_query(
                    funnel,
                    user_id,
                    n,
                    events=history.events(user_id),
                    now=computed_at,
                    user_attributes=attributes.get(user_id, {}),
                )
                for user_id in user_ids
            ]
            return [listed(funnel, recs) for recs in funnel.recommend_queries(queries)]

        return answers.precompute(self.cache, funnel, ids, answer)

    def _served_items(self, item_ids: Sequence[str]) -> set[str]:
        """Which of these ids the serving funnel's catalog holds as servable
        (`Funnel.servable`; none without a model)."""
        if not self.holder.loaded:
            return set()
        ok = self.holder.snapshot.funnel.servable(item_ids)
        return {i for i, servable in zip(item_ids, ok, strict=True) if servable}

    # ------------------------------------------------------------- health
    def readiness(self) -> tuple[bool, str, str | None]:
        """(ready, store status, reason when not ready)."""
        try:
            self.store.max_seq()
        except Exception as e:
            return False, "unreachable", f"store not reachable: {e}"
        if not self.holder.loaded:
            return False, "ok", self.load_error or "no model trained yet: run `sieve train`"
        try:
            behind = self.warm_seq - self.counters.watermark()
        except CacheError:
            behind = 0  # no cache: the counters read as empty, which /ready cannot mend
        if behind > 0:
            # a replica answers with warm features or not at all (the log is
            # folded once per cache: with Redis, only the first replica waits)
            return False, "ok", f"online counters catching up: {behind} stored events to fold"
        return True, "ok", None

    # ---------------------------------------------------------- logging
    def _log_impression(
        self,
        result: RecommendationList,
        context: Mapping[str, Any],
        arms: Sequence[Arm] = (),
    ) -> None:
        """Log a served list: counted now, its impression built and written
        by the impression logger's thread, off the request path."""
        served_at = datetime.now(UTC)
        self.impressions.log(
            lambda: impression_of(result, context, arms, served_at), result.user_id
        )
        pairs = tuple((a.experiment.name, a.name) for a in arms) or ((NONE, NONE),)
        self.metrics.served_list(result.request_id, pairs, n=len(result.items))


__all__ = ["Filters", "NoModelError", "Service"]
