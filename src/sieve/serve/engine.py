"""The serving engine: the store, the cache and the current funnel behind the API.

Everything the routes do that is more than moving a record happens here, so
the CLI (`sieve train`, `sieve batch`) and the tests call the same code.

Models on disk. `model_dir` is a `ModelRegistry`: `sieve train` snapshots the
store, fits a `Funnel`, registers it (`model_dir/<version>/` with a manifest)
and promotes it; `model_dir/CURRENT` names the serving version. A running
engine watches CURRENT (`watch_models`) and swaps to a newly promoted version
without failing a request: the new funnel is loaded beside the old one and
replaces it with one reference assignment.

Requests. A user's `Query` is built from
- the funnel's vocabulary (user index, -1 for users it has not seen);
- the user's last `history_limit` stored events, weighted by event type
  (items the funnel does not know are skipped);
- the session: the cache's `recent:{user}` list (most recent first), or the
  stored events when that list is empty (a restarted memory cache).

Hybrid serving. `precompute` stores every known user's top-N under
`recs:{user}` with the model version and the time it started. A request is
answered from that entry when the version is the serving one, the user has
no event recorded after it (`last_event:{user}`, set by `record_events`),
and the request has no filter or context that would change the answer;
otherwise the live funnel answers. A cached list is re-checked against the
catalog (unavailable or deleted items are dropped; too few left → live).

Catalog changes reach the serving funnel at once through `Funnel.add_items`
(a deleted item is re-added as unavailable), so a new item is servable by
its content without retraining. A funnel loaded at start-up (or reloaded)
is first brought up to date with the store's catalog the same way.

Concurrency. Route handlers run in a thread pool: reads of the funnel take a
shared lock, `add_items` an exclusive one; swapping in a reloaded funnel is
one reference assignment.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sieve.data.dataset import Dataset
from sieve.data.io import RawData
from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem, Item, User
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, EventWeights, UnknownIdError
from sieve.experiments.interleaving import request_rng, team_draft
from sieve.experiments.online import (
    CLICK_TYPES,
    TEAM_PREFIX,
    Arm,
    ExperimentBook,
    ExperimentRecord,
    experiment_report,
)
from sieve.explore.slots import ExplorationSlots
from sieve.monitoring.drift import DriftMonitor
from sieve.monitoring.metrics import ServingMetrics
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry, RegistryError
from sieve.serve.impressions import ImpressionLogger
from sieve.serve.schemas import ExperimentArm, RecommendationList, RecommendedItem
from sieve.settings import Settings
from sieve.storage import Cache, CacheError, SQLStore, Store, open_cache, open_store
from sieve.types import Context, ItemList, Query, Recommended

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger("sieve.serve")

#: Longest session list kept per user in the cache.
RECENT_MAX = 50
#: Served requests remembered for crediting clicks to bandits (newest kept).
SERVED_MAX = 100_000
#: Model versions of experiment arms kept loaded beside the serving one.
VARIANT_FUNNELS_MAX = 4


@dataclass
class Served:
    """What a request was served, for crediting the clicks that cite it."""

    arms: list[tuple[str, str]]
    explored: dict[str, str]  # item id -> exploration policy
    credited: set[str] = field(default_factory=set)


class NoModelError(RuntimeError):
    """No trained funnel to serve."""

    def __init__(self, model_dir: Path | None = None) -> None:
        where = f" in {model_dir}" if model_dir is not None else ""
        super().__init__(f"no model trained yet{where}: run `sieve train`")


class InvalidInput(ValueError):
    """Bad references inside a request body: `errors` in pydantic's `{loc, msg, type}` form."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.errors = errors


class TooLarge(ValueError):
    """A batch over the configured limit (HTTP 413)."""


def _error(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


# ------------------------------------------------------------ model folder
def current_model_path(model_dir: Path) -> Path | None:
    """Where the serving version's model lies (the registry's CURRENT), or None."""
    if not Path(model_dir).is_dir():
        return None
    registry = ModelRegistry(model_dir)
    version = registry.current()
    if version is None:
        return None
    try:
        return registry.model_path(version)
    except RegistryError:
        log.warning("%s/CURRENT names %r, which is not registered", model_dir, version)
        return None


# ---------------------------------------------------------------- training
def snapshot(store: Store, weights: Mapping[str, float]) -> Dataset:
    """The store's catalog and event log as a training `Dataset`.

    Events of types no longer configured are left out (and counted in the log);
    items that have events but are gone from the catalog enter the vocabulary
    as unavailable, so their events still teach the model but they are never served.
    """
    items = store.items_frame()
    users = store.users_frame()
    events = store.events_frame()
    known_type = events["type"].isin(list(weights)).to_numpy()
    if not known_type.all():
        dropped = sorted(set(events.loc[~known_type, "type"]))
        log.warning(
            "training skips %d events of unconfigured types %s", (~known_type).sum(), dropped
        )
        events = events.loc[known_type]
    if events.empty:
        raise ValueError(
            f"the store at {store.url} has no events to train on: "
            "POST /events (or import data) first"
        )
    gone = sorted(set(events["item_id"]) - set(items["item_id"]))
    if gone:
        extra = pd.DataFrame(
            {
                "item_id": gone,
                "title": "",
                "text": "",
                "categories": [[] for _ in gone],
                "created_at": np.nan,
                "attributes": [{} for _ in gone],
                "available": False,
            }
        )
        items = pd.concat([items, extra], ignore_index=True)
    return Dataset.from_frames(
        events[[*EVENT_COLUMNS, "seq"]].reset_index(drop=True),  # seq: what a model saw
        items.reset_index(drop=True),
        users,
        weights=EventWeights(weights=dict(weights)),
    )


def _when(seconds: Any) -> datetime | None:
    value = float(seconds)
    return None if math.isnan(value) else datetime.fromtimestamp(value, UTC)


def import_data(store: Store, raw: RawData, chunk: int = 10_000) -> tuple[int, int, int]:
    """Write imported frames (items, users, events) into the store; returns the counts.

    For the quickstart and tests: events go in chunks of `chunk`, each atomic and
    idempotent, so an interrupted import can simply be run again.
    """
    items = [
        Item(
            id=str(r.item_id),
            title=str(r.title),
            text=str(r.text),
            categories=list(r.categories),
            created_at=_when(r.created_at),
            attributes=dict(r.attributes),
        )
        for r in raw.items.itertuples(index=False)
    ]
    users = [
        User(id=str(r.user_id), attributes=dict(r.attributes))
        for r in raw.users.itertuples(index=False)
    ]
    store.upsert_items(items)
    store.upsert_users(users)
    inserted = 0
    ev = raw.events
    for start in range(0, len(ev), chunk):
        part = ev.iloc[start : start + chunk]
        events = [
            Event(
                id=str(r.event_id),
                user_id=str(r.user_id),
                item_id=str(r.item_id),
                type=str(r.type),
                value=None if math.isnan(float(r.value)) else float(r.value),
                timestamp=_when(r.timestamp),
            )
            for r in part.itertuples(index=False)
        ]
        inserted += store.append_events(events).inserted
    return len(items), len(users), inserted


def new_funnel(settings: Settings) -> Funnel:
    """An unfitted funnel, configured by the TOML file `settings.funnel_config` if given."""
    from sieve.pipeline import Funnel, load_funnel_config

    if settings.funnel_config is None:
        return Funnel()
    return Funnel(load_funnel_config(settings.funnel_config))


def train(
    settings: Settings, store: Store | None = None, *, promote: bool = True
) -> tuple[Funnel, Path]:
    """Snapshot the store, fit a funnel and register it in the model registry
    (`model_dir`), promoting it unless `promote=False`. Returns the funnel and
    the folder of its saved model."""
    own = store is None
    store = store or open_store(settings.store_url)
    funnel = new_funnel(settings)
    try:
        dataset = snapshot(store, settings.event_weights)
        max_seq = store.max_seq()
        if funnel.config.ranker.train_on != "snapshot":  # the ranker learns from what was shown
            from sieve.ranking.logged import LoggedData

            funnel.logged = LoggedData.from_store(store)
    finally:
        if own:
            store.close()
    funnel = funnel.fit(dataset)
    registry = ModelRegistry(settings.model_dir)
    registry.register(
        funnel,
        version=str(funnel.version),
        data={
            "events": len(dataset.events),
            "max_seq": max_seq,
            "users": dataset.n_users,
            "items": dataset.n_items,
            "interactions": int(dataset.matrix.nnz),
            "store": _redacted(settings.store_url),
        },
    )
    if promote:
        registry.promote(str(funnel.version), "trained by `sieve train`")
    saved = registry.model_path(str(funnel.version)).resolve()
    log.info("trained funnel %s on %s; saved to %s", funnel.version, dataset, saved)
    return funnel, saved


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


def _redacted(url: str) -> str:
    """A URL without its password, for manifests and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


# ------------------------------------------------------------------ locking
class ReadWriteLock:
    """Many readers or one writer (writers wait for readers; no writer starvation
    guard, since writes are rare catalog updates)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


# ----------------------------------------------------------------- helpers
def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: such scores travel as null."""
    value = float(x)
    return value if math.isfinite(value) else None


def items_frame(items: Sequence[Item], available: bool | None = None) -> pd.DataFrame:
    """Catalog rows in the funnel's `add_items` layout (ITEM_COLUMNS + `available`)."""
    frame = pd.DataFrame(
        {
            "item_id": pd.Series([i.id for i in items], dtype=str),
            "title": pd.Series([i.title for i in items], dtype=object),
            "text": pd.Series([i.text for i in items], dtype=object),
            "categories": pd.Series([list(i.categories) for i in items], dtype=object),
            "created_at": np.array(
                [np.nan if i.created_at is None else i.created_at.timestamp() for i in items],
                dtype=np.float64,
            ),
            "attributes": pd.Series([dict(i.attributes) for i in items], dtype=object),
            "available": np.array(
                [i.available if available is None else available for i in items], dtype=bool
            ),
        }
    )
    return frame[[*ITEM_COLUMNS, "available"]]


@dataclass(frozen=True)
class Filters:
    """What a request asks beyond "the top n for this user"."""

    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    context: Context = field(default_factory=Context)

    @property
    def empty(self) -> bool:
        return not self.categories and not self.exclude and self.context == Context()


def recs_key(user_id: str) -> str:
    return f"recs:{user_id}"


def recent_key(user_id: str) -> str:
    return f"recent:{user_id}"


def last_event_key(user_id: str) -> str:
    return f"last_event:{user_id}"


# ------------------------------------------------------------------ engine
class Engine:
    """Store + cache + the serving funnel (None until one is trained)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: Cache,
        funnel: Funnel | None = None,
        model_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self._funnel = funnel
        self.model_path = model_path
        self._lock = ReadWriteLock()
        self._weights = dict(settings.event_weights)
        #: Why the last attempt to load a model failed (None: it did not fail).
        self.load_error: str | None = None
        self.impressions = ImpressionLogger(store)
        #: online counters (item views/clicks/CTR per window, user recency and
        #: affinity), updated by every committed event
        self.counters = OnlineCounters(cache)
        # one worker keeps updates in commit order, off the request path
        self._counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-counters")
        # the first model load seeds the counters with the stored log up to this
        # seq (an empty cache would otherwise tell the ranker every user is new);
        # events committed later are counted by `_count` as they come
        self._counters_seeded = threading.Event()
        self._seed_seq: int | None = None
        try:
            self._seed_seq = store.max_seq()
        except Exception:  # the store's failure is reported where it is used
            self._counters_seeded.set()
        #: Prometheus metrics and drift checks (`sieve.monitoring`)
        self.metrics = ServingMetrics.for_settings(settings, store)
        self.drift = DriftMonitor.for_engine(self)
        #: running experiments (stored; re-read every model_poll_seconds or 2 s)
        # re-read by the model watcher when it runs (`watch_models`), so the
        # request path never waits on the store; without one, every 2 s by a request
        self.experiments = ExperimentBook(
            store, cache, refresh_seconds=math.inf if settings.model_poll_seconds > 0 else 2.0
        )
        #: bandit-filled exploration slots
        self.explorer = ExplorationSlots(cache)
        self._variant_funnels: OrderedDict[str, Funnel] = OrderedDict()
        self._variants_lock = threading.Lock()
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._served_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, *, load_model: bool = True) -> Engine:
        """Open the store and the cache of `settings` and load the current funnel, if any."""
        store = open_store(settings.store_url)
        try:
            cache = open_cache(settings.cache_url)
        except BaseException:
            store.close()
            raise
        engine = cls(settings, store, cache)
        if load_model:
            try:
                engine.load_model()
            except Exception as e:  # serve the catalog and say why in /ready
                engine.load_error = f"the model could not be loaded: {e}"
                log.exception("the model could not be loaded; serving without one")
        return engine

    def close(self) -> None:
        self.save_bandits()
        self._counting.shutdown(wait=True)
        self.impressions.close()
        self.store.close()
        self.cache.close()

    def watch_models(self, interval: float) -> threading.Event | None:
        """Poll the registry every `interval` seconds and swap to a newly
        promoted version in the background; returns the event that stops it
        (None when `interval` is 0). Requests keep using the old funnel until
        the new one is loaded and in place, so a promotion fails no request."""
        if interval <= 0:
            return None
        stop = threading.Event()
        registry = ModelRegistry(self.settings.model_dir)

        def loop() -> None:
            while not stop.wait(interval):
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

        threading.Thread(target=loop, name="sieve-model-watcher", daemon=True).start()
        return stop

    # ------------------------------------------------------------- model
    @property
    def funnel(self) -> Funnel:
        """The serving funnel; `NoModelError` before any is trained."""
        funnel = self._funnel
        if funnel is None:
            raise NoModelError(Path(self.settings.model_dir))
        return funnel

    @property
    def model_version(self) -> str | None:
        return None if self._funnel is None else str(self._funnel.version)

    def load_model(self) -> bool:
        """(Re)load the funnel `CURRENT` names; False if none is trained."""
        path = current_model_path(Path(self.settings.model_dir))
        if path is None:
            return False
        from sieve.pipeline import Funnel

        funnel = Funnel.load(path)
        self._sync_catalog(funnel)
        if self._counters_seeded.is_set():
            funnel.online = self.counters  # the ranker reads the live counters
        self._funnel, self.model_path, self.load_error = funnel, path, None
        if self._counters_seeded.is_set():  # (seeding may have ended meanwhile)
            funnel.online = self.counters
        elif self._seed_seq is not None:  # until seeded: its training-time counters
            seq, self._seed_seq = self._seed_seq, None
            self._counting.submit(self._count, [], seq)
        self.metrics.model_loaded(str(funnel.version))
        log.info("serving funnel %s from %s", funnel.version, path)
        return True

    def _sync_catalog(self, funnel: Funnel) -> None:
        """Bring `funnel` up to the store's catalog: rows it lacks or holds with another
        availability are added; items gone from the store become unavailable."""
        frame = self.store.items_frame()
        stale = np.zeros(len(frame), dtype=bool)
        for r, (item_id, available) in enumerate(
            zip(frame["item_id"], frame["available"], strict=True)
        ):
            try:
                stale[r] = funnel.is_available(funnel.item_index(item_id)) != bool(available)
            except UnknownIdError:
                stale[r] = True
        if stale.any():
            funnel.add_items(frame.loc[stale].reset_index(drop=True))
            log.info("the model took %d catalog rows newer than it", int(stale.sum()))
        in_store = set(frame["item_id"])
        gone = [
            str(item_id)
            for k, item_id in enumerate(funnel.item_ids)
            if item_id not in in_store and funnel.is_available(k)
        ]
        if gone:
            funnel.add_items(pd.DataFrame({"item_id": gone, "available": False}))
            log.info("%d items of the model are gone from the catalog: not served", len(gone))

    # ----------------------------------------------------------- catalog
    def items_changed(self, items: Sequence[Item]) -> None:
        """New or updated items: servable at once (by content) without retraining."""
        self._add_items(items_frame(items))

    def items_removed(self, items: Sequence[Item]) -> None:
        """Deleted items: kept in the funnel as unavailable, so they are not served."""
        self._add_items(items_frame(items, available=False))

    def _add_items(self, frame: pd.DataFrame) -> None:
        funnel = self._funnel
        if funnel is None or frame.empty:
            return
        with self._variants_lock:
            others = list(self._variant_funnels.values())
        try:
            with self._lock.writing():
                for f in (funnel, *others):
                    f.add_items(frame)
        except Exception:  # the store write is committed; the next reload catches up
            log.exception("the serving funnel could not take %d catalog rows", len(frame))

    def funnel_for(self, version: str | None) -> Funnel:
        """The funnel of a registered model version (an experiment arm's), loaded
        beside the serving one on first use and brought up to the catalog;
        None or the serving version → the serving funnel."""
        base = self.funnel
        if version is None or version == str(base.version):
            return base
        with self._variants_lock:
            funnel = self._variant_funnels.get(version)
            if funnel is not None:
                self._variant_funnels.move_to_end(version)
                return funnel
        from sieve.pipeline import Funnel

        path = ModelRegistry(self.settings.model_dir).model_path(version)
        loaded = Funnel.load(path)
        self._sync_catalog(loaded)
        with self._variants_lock:
            funnel = self._variant_funnels.setdefault(version, loaded)
            while len(self._variant_funnels) > VARIANT_FUNNELS_MAX:
                self._variant_funnels.popitem(last=False)
        log.info("loaded model %s for an experiment arm", version)
        return funnel

    # ------------------------------------------------------------ events
    def check_events(self, events: Sequence[Event]) -> None:
        """Raise `TooLarge` or `InvalidInput` (naming each bad type / unknown item)."""
        if len(events) > self.settings.max_batch:
            raise TooLarge(
                f"{len(events)} events in one request; the limit is {self.settings.max_batch} "
                "(max_batch): split the batch"
            )
        errors: list[dict[str, Any]] = []
        allowed = sorted(self._weights)
        for i, e in enumerate(events):
            if e.type not in self._weights:
                errors.append(
                    _error(
                        ("body", "events", i, "type"),
                        f"unknown event type {e.type!r}; allowed types: {allowed}",
                    )
                )
        known = set(self.store.get_items({e.item_id for e in events}))
        for i, e in enumerate(events):
            if e.item_id not in known:
                errors.append(
                    _error(
                        ("body", "events", i, "item_id"),
                        f"unknown item id {e.item_id!r}: add it to the catalog (POST /items) "
                        "before sending events about it",
                    )
                )
        if errors:
            raise InvalidInput(errors[:50])

    def record_events(self, events: Sequence[Event]) -> tuple[int, list[str]]:
        """Check, then append `events` atomically; returns (inserted, duplicate ids).

        Unknown users are created (with no attributes) before the append. After the
        commit, each new event is pushed onto its user's session list and the
        user's last-event time is set, which invalidates a precomputed list.
        """
        self.check_events(events)
        events = self._attribute(events)
        self._create_missing_users({e.user_id for e in events})
        result = self.store.append_events(events)
        # an id met k times is listed k-1 times in `duplicates` if it was new, k if not
        occurrences = Counter(e.id for e in events)
        listed = Counter(result.duplicates)
        new: list[Event] = []
        for e in events:
            if listed[e.id] < occurrences[e.id]:
                new.append(e)
                listed[e.id] = occurrences[e.id]  # only its first occurrence is new
        self._note_events(new)
        self.metrics.events_ingested(new)
        if new:
            self._counting.submit(self._count, list(new))
            self._credit_clicks(new)
        return result.inserted, result.duplicates

    def flush_counters(self) -> None:
        """Wait until every event committed so far is in the online counters."""
        self._counting.submit(lambda: None).result()

    def _count(self, new: Sequence[Event], seed_upto: int | None = None) -> None:
        """Fold newly stored events into the online counters (best effort: the
        events are committed; a cache outage only leaves the counters behind).
        With `seed_upto` (first model load): first fold the stored log up to
        that seq into counters never seeded, then point the funnel at them."""
        funnel = self._funnel

        def categories(item_id: str) -> tuple[str, ...]:  # once per item and batch
            assert funnel is not None
            try:
                return tuple(funnel.item_categories(funnel.item_index(item_id)))
            except UnknownIdError:
                return ()

        try:
            if seed_upto is not None:
                folded = self.counters.seed(self.store, categories, seed_upto)
                log.info("online counters seeded with %d stored events", folded)
            if new:
                now = time.time()
                # aggregated per key with exact decay: order does not matter
                self.counters.update_columns(
                    [e.user_id for e in new],
                    [e.item_id for e in new],
                    [e.type for e in new],
                    [e.timestamp.timestamp() if e.timestamp else now for e in new],
                    categories if funnel is not None else None,
                )
        except CacheError:
            log.warning("cache unavailable: online counters not updated", exc_info=True)
        except Exception:
            if seed_upto is None:
                raise
            log.exception("online counters not seeded from the stored log")
        finally:
            if seed_upto is not None:
                self._counters_seeded.set()
                if self._funnel is not None:
                    self._funnel.online = self.counters

    def _attribute(self, events: Sequence[Event]) -> list[Event]:
        """Cite the request that showed the item: an event of an attributed type
        without a `request_id` gets the latest impression of that item to that
        user within `attribution_window_seconds`."""
        kinds = set(self.settings.attribution_types)
        todo = [k for k, e in enumerate(events) if e.request_id is None and e.type in kinds]
        out = list(events)
        if not todo:
            return out
        self.impressions.flush()
        found = self.store.attribute_many(
            [(events[k].user_id, events[k].item_id, events[k].timestamp) for k in todo],
            self.settings.attribution_window_seconds,
        )
        for k, request_id in zip(todo, found, strict=True):
            if request_id is not None:
                out[k] = events[k].model_copy(update={"request_id": request_id})
        return out

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

    def _note_events(self, new: Sequence[Event]) -> None:
        """Session lists and last-event times of the users of newly stored events."""
        now = time.time()
        by_user: dict[str, list[Event]] = {}
        for e in new:
            by_user.setdefault(e.user_id, []).append(e)
        try:
            for user_id, events in by_user.items():
                # the list keeps RECENT_MAX entries: older ones would fall off at once
                for e in events[-RECENT_MAX:]:
                    self.cache.push_recent(recent_key(user_id), f"{e.item_id}|{e.type}", RECENT_MAX)
                self.cache.set(last_event_key(user_id), repr(now).encode())
        except CacheError:
            # the events are committed; without the cache every request is answered live
            log.warning("cache unavailable: session lists not updated", exc_info=True)

    def _create_missing_users(self, user_ids: set[str]) -> None:
        missing = user_ids - self._existing_users(user_ids)
        if not missing:
            return
        if isinstance(self.store, SQLStore):
            from sieve.storage.sql import users_table

            stmt: Any
            if self.store.engine.dialect.name == "postgresql":
                stmt = pg_insert(users_table)
            else:
                stmt = sqlite_insert(users_table)
            stmt = stmt.on_conflict_do_nothing(index_elements=["id"])
            with self.store.engine.begin() as conn:
                conn.execute(stmt, [{"id": u, "attributes": {}} for u in sorted(missing)])
        else:
            self.store.upsert_users([User(id=u) for u in sorted(missing)])

    def _existing_users(self, user_ids: set[str]) -> set[str]:
        if not isinstance(self.store, SQLStore):
            return {u for u in user_ids if self.store.get_user(u) is not None}
        from sieve.storage.sql import users_table

        ids = sorted(user_ids)
        found: set[str] = set()
        with self.store.engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                query = select(users_table.c.id).where(users_table.c.id.in_(chunk))
                found.update(conn.execute(query).scalars())
        return found

    # ---------------------------------------------------------- requests
    def _history(
        self, funnel: Funnel, events: Sequence[tuple[str, str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item indices and summed type weights of (item id, type) events."""
        acc: dict[int, float] = {}
        for item_id, kind in events:
            weight = self._weights.get(kind, 0.0)
            if weight <= 0:
                continue
            try:
                index = int(funnel.item_index(item_id))
            except UnknownIdError:
                continue
            acc[index] = acc.get(index, 0.0) + weight
        items = np.fromiter(acc.keys(), dtype=np.int64, count=len(acc))
        weights = np.fromiter(acc.values(), dtype=np.float32, count=len(acc))
        return items, weights

    def _recent(
        self, funnel: Funnel, user_id: str, stored: Sequence[tuple[str, str]]
    ) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The session, most recent first: the cache's list, else the stored events."""
        limit = self.settings.recent_limit
        pairs: list[tuple[str, str]] = []
        try:
            for entry in self.cache.recent(recent_key(user_id), limit):
                item_id, _, kind = entry.rpartition("|")
                pairs.append((item_id, kind))
        except CacheError:
            log.warning("cache unavailable: session read from the store", exc_info=True)
        if not pairs:
            pairs = list(stored[:limit])
        items: list[int] = []
        kinds: list[str] = []
        for item_id, kind in pairs:
            try:
                items.append(int(funnel.item_index(item_id)))
            except UnknownIdError:
                continue
            kinds.append(kind)
        return tuple(items), tuple(kinds)

    def _exclude(self, funnel: Funnel, ids: Sequence[str]) -> frozenset[int]:
        out: set[int] = set()
        for item_id in ids:
            try:
                out.add(int(funnel.item_index(item_id)))
            except UnknownIdError:
                continue  # excluding an unknown item changes nothing
        return frozenset(out)

    def user_query(
        self,
        funnel: Funnel,
        user_id: str,
        n: int,
        filters: Filters = Filters(),
        stored: Sequence[tuple[str, str]] | None = None,
        now: float | None = None,
    ) -> Query:
        """The funnel request of a (known or new) user; `stored` = their (item, type)
        events most recent first (read from the store when None)."""
        if stored is None:
            stored = [
                (e.item_id, e.type)
                for e in self.store.user_events(user_id, limit=self.settings.history_limit)
            ]
        history, weights = self._history(funnel, stored)
        recent, kinds = self._recent(funnel, user_id, stored)
        return Query(
            user_id=user_id,
            user=int(funnel.user_index(user_id)),
            history=history,
            history_weights=weights,
            recent=recent,
            recent_types=kinds,
            n=n,
            context=filters.context,
            categories=filters.categories,
            exclude=self._exclude(funnel, filters.exclude),
            request_id=uuid.uuid4().hex,
            now=time.time() if now is None else now,
        )

    def _listed(self, funnel: Funnel, recs: Sequence[Recommended]) -> list[RecommendedItem]:
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

    def cached_answer(
        self, user_id: str, n: int, filters: Filters = Filters()
    ) -> RecommendationList | None:
        """The precomputed answer when it is valid for this request, else None."""
        if not filters.empty:
            return None
        funnel = self.funnel
        if self.experiments.in_experiment(user_id):
            return None  # the arm decides the list: answered live
        version = str(funnel.version)
        cached = self._cached(funnel, user_id, n, version)
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is None:
            return None
        hit = RecommendationList(
            items=cached,
            request_id=uuid.uuid4().hex,
            model_version=version,
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
        use_cache: bool = True,
        log: bool = True,
    ) -> RecommendationList:
        """Top-n for `user_id`: from the precomputed cache when still valid, else live.

        Live: the user's experiment arms decide the model version, the
        exploration slots, or (interleaving) the two lists merged by team
        draft; shadow arms are computed and logged, never shown.
        `log=False` (a preview: the dashboard's inspector) logs no impression
        and teaches no bandit, so it never counts as traffic."""
        if use_cache:
            hit = self.cached_answer(user_id, n, filters)
            if hit is not None:
                return hit
        arms = self.experiments.assign(user_id, learn=log)
        base = self.funnel
        request_id = uuid.uuid4().hex
        stored = [
            (e.item_id, e.type)
            for e in self.store.user_events(user_id, limit=self.settings.history_limit)
        ]
        ab = [a for a in arms if a.experiment.kind == "ab"]
        version = next((a.variant.model_version for a in ab if a.variant.model_version), None)
        config: dict[str, Any] = {}
        for a in ab:
            config.update(a.variant.config or {})
        interleaved = next((a for a in arms if a.experiment.kind == "interleaving"), None)
        explored: dict[str, str] = {}
        shadows: dict[str, list[str]] = {}
        with self._lock.reading():
            if interleaved is not None:
                items, cold = self._interleave(interleaved, user_id, n, filters, stored, request_id)
                version = None
            else:
                funnel = self.funnel_for(version)
                k = int(config.get("exploration_slots", self.settings.exploration_slots))
                policy = str(config.get("exploration_policy", self.settings.exploration_policy))
                pool = self.settings.exploration_pool if k > 0 else 0
                ranked, cold = self._ranked(funnel, user_id, n - min(k, n) + pool, filters, stored)
                items = []
                for item, propensity, explore in self.explorer.fill(
                    ranked, n, k, policy, key=lambda r: r.id, learn=log
                ):
                    if explore:
                        explored[item.id] = policy
                        item = item.model_copy(update={"propensity": propensity, "slot": "explore"})
                    items.append(item)
            for a in arms:
                for shadow in a.experiment.shadows:
                    shadow_funnel = self.funnel_for(shadow.model_version)
                    shown, _ = self._ranked(shadow_funnel, user_id, n, filters, stored)
                    shadows[f"{a.experiment.name}/{shadow.name}"] = [i.id for i in shown]
        result = RecommendationList(
            items=items,
            request_id=request_id,
            model_version=version or str(base.version),
            user_id=user_id,
            cached=False,
            cold_start=cold,
            experiments=[
                ExperimentArm(experiment=a.experiment.name, arm=a.name, propensity=a.propensity)
                for a in arms
            ],
        )
        context: dict[str, Any] = _context_dict(filters)
        if shadows:
            context["shadows"] = shadows
        if not log:
            return result
        if arms or explored:
            self._remember(
                request_id, Served([(a.experiment.name, a.name) for a in arms], explored)
            )
        self._log_impression(result, context, arms)
        return result

    def _ranked(
        self,
        funnel: Funnel,
        user_id: str,
        n: int,
        filters: Filters,
        stored: Sequence[tuple[str, str]],
    ) -> tuple[list[RecommendedItem], bool]:
        """The funnel's top-n for a user as served items, and whether it was a cold start."""
        query = self.user_query(funnel, user_id, n, filters, stored=stored)
        items = self._listed(funnel, funnel.recommend_query(query))
        return items, query.user < 0 and len(query.history) == 0

    def _interleave(
        self,
        arm: Arm,
        user_id: str,
        n: int,
        filters: Filters,
        stored: Sequence[tuple[str, str]],
        request_id: str,
    ) -> tuple[list[RecommendedItem], bool]:
        """Team-draft interleaving of the two arms' lists; each item carries its team."""
        a, b = arm.experiment.served
        list_a, cold = self._ranked(self.funnel_for(a.model_version), user_id, n, filters, stored)
        list_b, _ = self._ranked(self.funnel_for(b.model_version), user_id, n, filters, stored)
        by_id = {i.id: i for i in list_b} | {i.id: i for i in list_a}
        merged = team_draft(
            [i.id for i in list_a], [i.id for i in list_b], request_rng(request_id), k=n
        )
        items = [
            by_id[item_id].model_copy(update={"team": (a.name, b.name)[int(team)]})
            for item_id, team in zip(merged.items, merged.teams, strict=True)
        ]
        return items, cold

    def _remember(self, request_id: str, served: Served) -> None:
        with self._served_lock:
            self._served[request_id] = served
            while len(self._served) > SERVED_MAX:
                self._served.popitem(last=False)

    def _credit_clicks(self, events: Sequence[Event]) -> None:
        """Clicks citing a request reward its exploration slots and its
        adaptively allocated arms (at most once per request and experiment)."""
        for e in events:
            if e.request_id is None or e.type not in CLICK_TYPES:
                continue
            with self._served_lock:
                served = self._served.get(e.request_id)
                if served is None:
                    continue
                todo = [(x, arm) for x, arm in served.arms if x not in served.credited]
                served.credited.update(x for x, _ in todo)
                policy = served.explored.pop(e.item_id, None)
            if policy is not None:
                self.explorer.credit(policy, e.item_id)
            for experiment, arm in todo:
                self.experiments.clicked(experiment, arm)

    def save_bandits(self) -> None:
        """Persist exploration and allocation bandit state to the cache."""
        self.explorer.save()
        self.experiments.save_state()

    # -------------------------------------------------------- experiments
    def create_experiment(self, spec: Mapping[str, Any]) -> ExperimentRecord:
        """Validate (including that each arm's model version is registered) and store."""
        known = [m.version for m in ModelRegistry(self.settings.model_dir).list()]
        return self.experiments.create(spec, known)

    def experiment_report(self, name: str, alpha: float = 0.05) -> dict[str, Any]:
        """The analysis of an experiment (see `sieve.experiments.online`)."""
        record = self.experiments.get(name)
        self.impressions.flush()
        out = experiment_report(
            self.store,
            record,
            alpha=alpha,
            catalog_size=self.store.count_items(),
            cache=self.cache,
        )
        if record.experiment.allocation == "thompson":
            out["allocation_state"] = self.experiments.allocation(name)
        return out

    def _cached(
        self, funnel: Funnel, user_id: str, n: int, version: str
    ) -> list[RecommendedItem] | None:
        """The precomputed list if it is valid for this request (see the module doc).

        On the hot path: one cache round trip for the entry and the user's last
        event time, and the stored rows are trusted (they were validated when
        written), so no per-item validation is repeated."""
        try:
            raw, last = self.cache.get_many([recs_key(user_id), last_event_key(user_id)])
            entry = None if raw is None else json.loads(raw)
        except (CacheError, ValueError):
            log.warning("cache unreadable: answering live", exc_info=True)
            return None
        if not isinstance(entry, dict) or entry.get("model_version") != version:
            return None
        if last is not None and float(last) >= float(entry.get("computed_at", 0.0)):
            return None
        stored = entry.get("items", [])
        if len(stored) < n:
            return None
        out: list[RecommendedItem] = []
        for row in stored:
            try:
                servable = funnel.is_available(funnel.item_index(row["id"]))
            except UnknownIdError:
                servable = False
            if servable:
                out.append(RecommendedItem.model_construct(**row))
                if len(out) == n:
                    return out
        return None

    def recommend_session(
        self, recent_items: Sequence[str], n: int, filters: Filters = Filters()
    ) -> RecommendationList:
        """Top-n for an anonymous session from its recent item ids (most recent first)."""
        funnel = self.funnel
        recent: list[int] = []
        errors: list[dict[str, Any]] = []
        for pos, item_id in enumerate(recent_items):
            try:
                recent.append(int(funnel.item_index(item_id)))
            except UnknownIdError:
                errors.append(_error(("body", "recent_items", pos), f"unknown item id {item_id!r}"))
        if errors:
            raise InvalidInput(errors[:50])
        view = self._weights.get("view", 1.0)
        history = np.array(sorted(set(recent)), dtype=np.int64)
        with self._lock.reading():
            query = Query(
                user_id=None,
                user=-1,
                history=history,
                history_weights=np.full(len(history), view, dtype=np.float32),
                recent=tuple(recent),
                recent_types=("view",) * len(recent),
                n=n,
                context=filters.context,
                categories=filters.categories,
                exclude=self._exclude(funnel, filters.exclude),
                request_id=uuid.uuid4().hex,
                now=time.time(),
            )
            items = self._listed(funnel, funnel.recommend_query(query))
        result = RecommendationList(
            items=items,
            request_id=query.request_id,
            model_version=str(funnel.version),
            user_id=None,
            cached=False,
            cold_start=not recent,
        )
        self._log_impression(result, _context_dict(filters))
        return result

    def similar(self, item_id: str, n: int) -> list[RecommendedItem]:
        """Items like `item_id` (`UnknownIdError` if the funnel does not know it)."""
        funnel = self.funnel
        with self._lock.reading():
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
            return self._listed(funnel, recs)

    def popular(self, n: int, categories: tuple[str, ...] = ()) -> list[RecommendedItem]:
        """The trending items now, optionally restricted to `categories`."""
        funnel = self.funnel
        with self._lock.reading():
            return self._listed(funnel, funnel.popular(n, categories, now=time.time()))

    # ------------------------------------------------------------- batch
    def precompute(self, n: int | None = None, users: Sequence[str] | None = None) -> int:
        """Store the top-n of every user the funnel knows (or of `users`) under
        `recs:{user}`; returns how many users were written. See the module doc
        for when an entry is served."""
        funnel = self.funnel
        n = n or self.settings.batch_n
        version = str(funnel.version)
        computed_at = time.time()  # before reading: a later event invalidates the entry
        by_user = self._stored_by_user()
        written = 0
        for user_id in funnel.user_ids if users is None else users:
            user_id = str(user_id)
            with self._lock.reading():
                query = self.user_query(
                    funnel, user_id, n, stored=by_user.get(user_id, []), now=computed_at
                )
                items = self._listed(funnel, funnel.recommend_query(query))
            entry = {
                "items": [i.model_dump() for i in items],
                "model_version": version,
                "computed_at": computed_at,
            }
            self.cache.set_json(recs_key(user_id), entry)
            written += 1
        return written

    def _stored_by_user(self) -> dict[str, list[tuple[str, str]]]:
        """Every user's last `history_limit` (item, type) events, most recent first,
        in `store.user_events` order — read with one query."""
        events = self.store.events_frame()
        if events.empty:
            return {}
        events = events.sort_values(["timestamp", "seq"], ascending=False, kind="stable")
        events = events.groupby("user_id", sort=False).head(self.settings.history_limit)
        out: dict[str, list[tuple[str, str]]] = {}
        for user_id, item_id, kind in zip(
            events["user_id"], events["item_id"], events["type"], strict=True
        ):
            out.setdefault(str(user_id), []).append((str(item_id), str(kind)))
        return out

    # ------------------------------------------------------------- health
    def readiness(self) -> tuple[bool, str, str | None]:
        """(ready, store status, reason when not ready)."""
        try:
            self.store.max_seq()
        except Exception as e:
            return False, "unreachable", f"store not reachable: {e}"
        if self._funnel is None:
            return False, "ok", self.load_error or "no model trained yet: run `sieve train`"
        return True, "ok", None


__all__ = [
    "Engine",
    "Filters",
    "InvalidInput",
    "NoModelError",
    "TooLarge",
    "current_model_path",
    "import_data",
    "items_frame",
    "new_funnel",
    "snapshot",
    "train",
]
