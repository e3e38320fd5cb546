"""The service: the store, the cache and the serving snapshot behind the API.

A small facade over parts with one job each:
- `holder.ModelHolder`: immutable serving snapshots, hot swap, variants;
- `ingest.EventIngestion`: validate → attribute → append → publish;
- `planner`: what a request's experiment arms ask for;
- `answers`: precomputed answers;
- the one query builder, `Funnel.query` (`sieve.ranking.query`), which
  training uses too: a live request reads the user's latest stored events
  (as many as the query's history and session take) and nothing else. Its
  session is the latest of those events, as in training; the session lists
  in the cache are not read for it, since they lack what was imported or
  lost with the cache and would make a live query differ from training's.

Every store call has a time limit (`store_timeout_seconds`, through
`GuardedStore`) and every cache call one (Redis timeouts, a cool-down after
a failure); a failed cache only makes requests answer live.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem, Item
from sieve.data.schema import UnknownIdError
from sieve.experiments.interleaving import request_rng, team_draft
from sieve.experiments.online import TEAM_PREFIX, Arm, ExperimentBook, ExperimentRecord
from sieve.experiments.report import experiment_report
from sieve.explore.slots import ExplorationSlots
from sieve.monitoring.drift import DriftMonitor
from sieve.monitoring.metrics import ServingMetrics
from sieve.ranking.query import UserLog
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry
from sieve.serve import answers
from sieve.serve.errors import InvalidInput, field_error
from sieve.serve.holder import ModelHolder, NoModelError, ServingSnapshot, items_frame
from sieve.serve.impressions import ImpressionLogger
from sieve.serve.ingest import EventIngestion
from sieve.serve.planner import RequestPlan, plan_request
from sieve.serve.schemas import ExperimentArm, RecommendationList, RecommendedItem
from sieve.settings import Settings
from sieve.storage import Cache, CacheError, Store, open_cache, open_store
from sieve.storage.guard import GuardedStore
from sieve.types import Context, ItemList, Query, Recommended

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger("sieve.serve")

#: Served requests remembered for crediting clicks to bandits (newest kept).
SERVED_MAX = 100_000
#: How often experiments are re-read when no model watcher runs.
EXPERIMENTS_POLL_SECONDS = 2.0
#: Requests whose shadow lists may wait to be computed; past it a request's
#: impression is logged at once with its shadows marked skipped, so a slow
#: shadow model can neither grow memory without bound nor hold impressions back.
SHADOW_BACKLOG = 1000


@dataclass(frozen=True)
class Filters:
    """What a request asks beyond "the top n for this user"."""

    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    context: Context = field(default_factory=Context)

    @property
    def empty(self) -> bool:
        return not self.categories and not self.exclude and self.context == Context()


@dataclass
class Served:
    """What a request was served, for crediting the clicks that cite it."""

    arms: list[tuple[str, str]]
    explored: dict[str, str]  # item id -> exploration policy
    credited: set[str] = field(default_factory=set)


def _context_dict(filters: Filters) -> dict[str, Any]:
    """The request context and filters as logged with an impression."""
    c = filters.context
    return {
        "hour": c.hour,
        "weekday": c.weekday,
        "device": c.device,
        "page": c.page,
        "categories": list(filters.categories) or None,
    }


def _slot_sources(item: RecommendedItem) -> list[str]:
    """The sources logged for a slot: the candidate sources, plus `explore`
    for an exploration slot and `team:<arm>` for an interleaved one."""
    out = sorted(item.sources)
    if item.slot == "explore":
        out.append("explore")
    if item.team is not None:
        out.append(f"{TEAM_PREFIX}{item.team}")
    return out


# Request ids correlate a list with the events that cite it; they need to be
# unique, not secret, and `uuid4` costs a system call (urandom) per id, which
# showed up in profiles. A process-local generator seeded from urandom (again
# in a forked child) gives 128 random bits for a fraction of that.
_ids = random.Random(int.from_bytes(os.urandom(16), "big"))
os.register_at_fork(after_in_child=lambda: _ids.seed(int.from_bytes(os.urandom(16), "big")))


def new_request_id() -> str:
    """A new 32-hex-digit request id."""
    return f"{_ids.getrandbits(128):032x}"


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: such scores travel as null."""
    value = float(x)
    return value if math.isfinite(value) else None


def listed(funnel: Funnel, recs: Sequence[Recommended]) -> list[RecommendedItem]:
    """Funnel results as served items."""
    ids = funnel.item_ids
    return [
        RecommendedItem(
            id=str(ids[r.item]),
            score=_finite(r.score),
            title=str(funnel.item_title(r.item)),
            categories=list(funnel.item_categories(r.item)),
            explanation=r.explanation,
            sources={k: _finite(v) for k, v in r.sources.items()},
        )
        for r in recs
    ]


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
        self.impressions = ImpressionLogger(store)
        #: online counters (item views/clicks/CTR per window, user recency and
        #: affinity), folded from the stored log by `ingestion`
        self.counters = OnlineCounters(cache, semantics=settings.semantics)
        self.metrics = ServingMetrics.for_settings(settings, self.store)
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
        )
        self.drift = DriftMonitor(
            settings,
            store,
            version=lambda: self.model_version,
            registry=self.metrics.registry,
            flush=self.impressions.flush,
        )
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._served_lock = threading.Lock()
        # shadow arms are computed here, after their request was answered
        self._shadows = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-shadows")
        self._shadow_room = threading.BoundedSemaphore(SHADOW_BACKLOG)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
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
        self._stop.set()
        self.save_bandits()
        self._shadows.shutdown(wait=True)
        self.ingestion.close()
        self.impressions.close()
        self.store.close()
        self.cache.close()

    def watch_models(self, interval: float) -> threading.Event:
        """Start the background watcher: every `interval` seconds it swaps to a
        newly promoted version (0: never; `POST /admin/reload` still does),
        and every cycle it re-reads the experiments, saves bandit state and
        folds new events into the counters. Returns the event that stops it."""
        registry = ModelRegistry(self.settings.model_dir)
        period = interval if interval > 0 else EXPERIMENTS_POLL_SECONDS
        self.experiments.refresh(force=True)

        def loop() -> None:
            while not self._stop.wait(period):
                if interval > 0:
                    try:
                        current = registry.current()
                        if current is not None and current != self.model_version:
                            log.info("model %s promoted: loading it", current)
                            self.load_model()
                    except Exception:  # keep serving the old model; say why in the log
                        log.exception("could not swap to the promoted model")
                try:
                    self.experiments.refresh(force=True)
                except Exception:  # keep serving the experiments known so far
                    log.exception("could not re-read the experiments")
                self.save_bandits()
                self.ingestion.nudge_counters()

        self._watcher = threading.Thread(target=loop, name="sieve-watcher", daemon=True)
        self._watcher.start()
        return self._stop

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

    # ------------------------------------------------------------ events
    def check_events(self, events: Sequence[Event]) -> None:
        self.ingestion.check(events)

    def record_events(self, events: Sequence[Event]) -> tuple[int, list[str]]:
        """Validate and append atomically; see `sieve.serve.ingest`."""
        return self.ingestion.record(events)

    def flush_counters(self) -> None:
        """Wait until every event stored so far is in the online counters."""
        self.ingestion.flush_counters()

    # ----------------------------------------------------------- queries
    def user_events(self, funnel: Funnel, user_id: str) -> list[tuple[str, str]]:
        """The user's latest stored (item, type) events, most recent first: as
        many as the query's history (`query.history_limit`) and session
        (`query.recent_limit`) take."""
        shape = funnel.config.query
        limit = max(shape.history_limit, shape.recent_limit)
        return [(e.item_id, e.type) for e in self.store.user_events(user_id, limit=limit)]

    def user_query(
        self,
        funnel: Funnel,
        user_id: str,
        n: int,
        filters: Filters = Filters(),
        events: Sequence[tuple[str, str]] | None = None,
        now: float | None = None,
        request_id: str = "",
    ) -> Query:
        """The live request of a user, built by the one query builder from
        their stored events (the session too: see the module doc)."""
        if events is None:
            events = self.user_events(funnel, user_id)
        return funnel.query(
            events,
            user_id,
            n=n,
            context=filters.context,
            categories=filters.categories,
            exclude=filters.exclude,
            now=time.time() if now is None else now,
            request_id=request_id,
        )

    # ---------------------------------------------------------- requests
    async def cached_answer(
        self, user_id: str, n: int, filters: Filters = Filters()
    ) -> RecommendationList | None:
        """The precomputed answer when it is valid for this request, else None.
        Never blocks the event loop."""
        if not filters.empty:
            return None
        snap = self.holder.snapshot
        if self.experiments.in_experiment(user_id):
            return None  # the arm decides the list: answered live
        cached = await answers.lookup(self.cache, snap.funnel, user_id, n, snap.version)
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is None:
            return None
        hit = RecommendationList(
            items=cached,
            request_id=new_request_id(),
            model_version=snap.version,
            user_id=user_id,
            cached=True,
            cold_start=False,
        )
        self._log_impression(hit, {"cached": True})
        return hit

    def recommend_user(
        self,
        user_id: str,
        n: int,
        filters: Filters = Filters(),
        log: bool = True,
        trace: dict[str, Any] | None = None,
    ) -> RecommendationList:
        """Top-n for `user_id`, live.

        The user's experiment arms are planned (`sieve.serve.planner`): the
        model version, or two versions interleaved by team draft, and the
        exploration slots; shadow arms are computed after this returns.
        `log=False` (a preview: the dashboard's inspector) logs no impression
        and teaches no bandit, so it never counts as traffic. `trace` (a dict)
        receives the query and the ranker's features of the main list."""
        snap = self.holder.snapshot
        # adaptive arms count a pull only once applied: the planner may drop one
        plan = plan_request(self.experiments.assign(user_id, learn=False), self.settings)
        if log:
            self.experiments.pulled(plan.arms)
        request_id = new_request_id()
        events = self.user_events(snap.funnel, user_id)
        now = time.time()
        explored: dict[str, str] = {}
        k = min(plan.exploration_slots, n)
        pool = self.settings.exploration_pool if k > 0 else 0
        if plan.interleave is not None:
            ranked, cold = self._interleave(
                snap, plan.interleave, user_id, n - k + pool, filters, events, request_id
            )
            version = None
        else:
            version = plan.version
            funnel = self._arm_funnel(snap, version)
            ranked, cold = self._ranked(
                funnel, user_id, n - k + pool, filters, events, now, trace, request_id
            )
        items: list[RecommendedItem] = []
        for item, propensity, explore in self.explorer.fill(
            ranked, n, k, plan.exploration_policy, key=lambda r: r.id, learn=log
        ):
            if explore:  # the bandit's pick, not a team's: no interleaving credit
                explored[item.id] = plan.exploration_policy
                item = item.model_copy(
                    update={"propensity": propensity, "slot": "explore", "team": None}
                )
            items.append(item)
        result = RecommendationList(
            items=items,
            request_id=request_id,
            model_version=version or snap.version,
            user_id=user_id,
            cached=False,
            cold_start=cold,
            experiments=[
                ExperimentArm(experiment=a.experiment.name, arm=a.name, propensity=a.propensity)
                for a in plan.arms
            ],
        )
        if not log:
            return result
        if plan.arms or explored:
            self._remember(
                request_id, Served([(a.experiment.name, a.name) for a in plan.arms], explored)
            )
        context = _context_dict(filters)
        if not plan.shadows:
            self._log_impression(result, context, plan.arms)
        elif self._shadow_room.acquire(blocking=False):
            # logged with the shadows' lists, once they are computed off this path
            self._shadows.submit(
                self._log_with_shadows, plan, result, context, user_id, n, filters, events, now
            )
        else:  # the shadows are behind: log what was served, say what was skipped
            skipped = [s.key for s in plan.shadows]
            self._log_impression(result, {**context, "shadows_skipped": skipped}, plan.arms)
        return result

    def _log_with_shadows(
        self,
        plan: RequestPlan,
        result: RecommendationList,
        context: dict[str, Any],
        user_id: str,
        n: int,
        filters: Filters,
        events: Sequence[tuple[str, str]],
        now: float,
    ) -> None:
        """Compute a request's shadow lists (after its answer was sent) and log
        its impression with them (`shadows`) and the keys of those that failed
        (`shadows_failed`)."""
        shadows: dict[str, list[str]] = {}
        failed: list[str] = []
        try:
            for shadow in plan.shadows:
                try:
                    funnel = self.holder.funnel_for(shadow.model_version)
                    shown, _ = self._ranked(funnel, user_id, n, filters, events, now)
                    shadows[shadow.key] = [i.id for i in shown]
                except Exception:  # a failing shadow never costs the served request
                    log.exception("shadow %s failed", shadow.key)
                    failed.append(shadow.key)
            extra: dict[str, Any] = {"shadows": shadows}
            if failed:
                extra["shadows_failed"] = failed
            self._log_impression(result, {**context, **extra}, plan.arms)
        finally:
            self._shadow_room.release()

    def _ranked(
        self,
        funnel: Funnel,
        user_id: str,
        n: int,
        filters: Filters,
        events: Sequence[tuple[str, str]],
        now: float | None = None,
        trace: dict[str, Any] | None = None,
        request_id: str = "",
    ) -> tuple[list[RecommendedItem], bool]:
        """The funnel's top-n for a user as served items, and whether it was a cold start."""
        query = self.user_query(
            funnel, user_id, n, filters, events=events, now=now, request_id=request_id
        )
        recs = funnel.recommend_query(query, trace=trace)
        if trace is not None:
            trace["query"] = {
                "user": query.user,
                "history": query.history.tolist(),
                "history_weights": query.history_weights.tolist(),
                "recent": list(query.recent),
                "recent_types": list(query.recent_types),
                "now": query.now,
            }
        return listed(funnel, recs), funnel.is_cold(query)

    def _arm_funnel(self, snap: ServingSnapshot, version: str | None) -> Funnel:
        """The funnel of an arm's model version; the serving version's is the
        snapshot's the request took, even if a swap published another since."""
        if version is None or version == snap.version:
            return snap.funnel
        return self.holder.funnel_for(version)

    def _interleave(
        self,
        snap: ServingSnapshot,
        arm: Arm,
        user_id: str,
        n: int,
        filters: Filters,
        events: Sequence[tuple[str, str]],
        request_id: str,
    ) -> tuple[list[RecommendedItem], bool]:
        """Team-draft interleaving of the two arms' lists; each item carries its team."""
        a, b = arm.experiment.served
        now = time.time()
        list_a, cold = self._ranked(
            self._arm_funnel(snap, a.model_version), user_id, n, filters, events, now
        )
        list_b, _ = self._ranked(
            self._arm_funnel(snap, b.model_version), user_id, n, filters, events, now
        )
        by_id = {i.id: i for i in list_b} | {i.id: i for i in list_a}
        merged = team_draft(
            [i.id for i in list_a], [i.id for i in list_b], request_rng(request_id), k=n
        )
        items = [
            by_id[item_id].model_copy(update={"team": (a.name, b.name)[int(team)]})
            for item_id, team in zip(merged.items, merged.teams, strict=True)
        ]
        return items, cold

    def recommend_session(
        self, recent_items: Sequence[str], n: int, filters: Filters = Filters()
    ) -> RecommendationList:
        """Top-n for an anonymous session from its recent item ids (most recent first)."""
        funnel = self.funnel
        errors: list[dict[str, Any]] = []
        for pos, item_id in enumerate(recent_items):
            try:
                funnel.item_index(item_id)
            except UnknownIdError:
                errors.append(
                    field_error(("body", "recent_items", pos), f"unknown item id {item_id!r}")
                )
        if errors:
            raise InvalidInput(errors[:50])
        events = [(item_id, "view") for item_id in recent_items]
        query = funnel.query(
            events,
            None,
            n=n,
            context=filters.context,
            categories=filters.categories,
            exclude=filters.exclude,
            now=time.time(),
            request_id=new_request_id(),
        )
        result = RecommendationList(
            items=listed(funnel, funnel.recommend_query(query)),
            request_id=query.request_id,
            model_version=str(funnel.version),
            user_id=None,
            cached=False,
            cold_start=not recent_items,
        )
        self._log_impression(result, _context_dict(filters))
        return result

    def similar(self, item_id: str, n: int) -> list[RecommendedItem]:
        """Items like `item_id` (`UnknownIdError` if the funnel does not know it)."""
        funnel = self.funnel
        index = int(funnel.item_index(item_id))
        found: ItemList = funnel.similar_items(index, n)
        title = str(funnel.item_title(index))
        recs = [
            Recommended(
                item=int(i),
                score=float(s),
                sources={"similar": float(s)},
                explanation=f"similar to {title!r}" if title else f"similar to {item_id}",
            )
            for i, s in zip(found.items, found.scores, strict=True)
        ]
        return listed(funnel, recs)

    def popular(self, n: int, categories: tuple[str, ...] = ()) -> list[RecommendedItem]:
        """The trending items now, optionally restricted to `categories`."""
        funnel = self.funnel
        return listed(funnel, funnel.popular(n, categories, now=time.time()))

    # ------------------------------------------------------------ bandits
    def _remember(self, request_id: str, served: Served) -> None:
        with self._served_lock:
            self._served[request_id] = served
            while len(self._served) > SERVED_MAX:
                self._served.popitem(last=False)

    def _credit_clicks(self, events: Sequence[Event]) -> None:
        """Clicks citing a request reward its exploration slots and its
        adaptively allocated arms (at most once per request and experiment)."""
        for e in events:
            reward = self.settings.semantics.reward(e.type)
            if e.request_id is None or reward <= 0:
                continue
            with self._served_lock:
                served = self._served.get(e.request_id)
                if served is None:
                    continue
                todo = [(x, arm) for x, arm in served.arms if x not in served.credited]
                served.credited.update(x for x, _ in todo)
                policy = served.explored.pop(e.item_id, None)
            if policy is not None:
                self.explorer.credit(policy, e.item_id, reward)
            for experiment, arm in todo:
                self.experiments.clicked(experiment, arm, reward)

    def save_bandits(self) -> None:
        """Persist exploration and allocation bandit state to the cache."""
        try:
            self.explorer.save()
            self.experiments.save_state()
        except CacheError:
            log.warning("bandit state not saved: cache unavailable", exc_info=True)

    # -------------------------------------------------------- experiments
    def create_experiment(self, spec: Mapping[str, Any]) -> ExperimentRecord:
        """Validate (arms' model versions registered, no conflict with a running
        experiment of another layer: `sieve.experiments.compose.conflicts`) and store."""
        known = [m.version for m in ModelRegistry(self.settings.model_dir).list()]
        return self.experiments.create(spec, known)

    def flush_impressions(self) -> None:
        """Wait until every request answered so far has its impression stored,
        those waiting for their shadow lists included."""
        self._shadows.submit(lambda: None).result()
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
    def precompute(self, n: int | None = None, users: Sequence[str] | None = None) -> int:
        """Store the top-n of every user the funnel knows (or of `users`) under
        `recs:{user}` (see `sieve.serve.answers`): each list is the live path's,
        through the one query builder."""
        funnel = self.funnel
        n = n or self.settings.batch_n
        ids = [str(u) for u in (funnel.user_ids if users is None else users)]
        # a batch job: the log read once (no time limit), each user's events from it
        history = UserLog(self.background_store.events_frame())

        def answer(user_id: str, computed_at: float) -> list[RecommendedItem]:
            events = history.events(user_id)
            query = self.user_query(funnel, user_id, n, events=events, now=computed_at)
            return listed(funnel, funnel.recommend_query(query))

        return answers.precompute(self.cache, funnel, ids, answer)

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
        """Log a served list (off the request path; see `ImpressionLogger`)."""
        # built without re-validation: every field comes from a validated list
        impression = Impression.model_construct(
            request_id=result.request_id,
            user_id=result.user_id,
            timestamp=datetime.now(UTC),
            model_version=result.model_version,
            experiment=arms[0].experiment.name if arms else None,
            arm=arms[0].name if arms else None,
            context={k: v for k, v in context.items() if v is not None},
            items=[
                ImpressionItem.model_construct(
                    item_id=item.id,
                    position=pos,
                    score=item.score if item.score is not None else 0.0,
                    sources=_slot_sources(item),
                    propensity=item.propensity,
                )
                for pos, item in enumerate(result.items)
            ],
            arms=[
                ImpressionArm.model_construct(
                    experiment=a.experiment.name, arm=a.name, propensity=a.propensity
                )
                for a in arms
            ],
        )
        self.impressions.log(impression)
        self.metrics.served(impression)


__all__ = ["Filters", "NoModelError", "Service", "listed"]
