"""Event ingestion: validate → attribute → append → publish.

1. Validate: the batch size, each event's type, item and timestamp (none
   far in the future), and a dwell's seconds (`semantics.dwell_types`: a
   value ≥ 0, required where the type is no interaction of its own, i.e. its
   weight is 0); errors name the event's index, as pydantic's do.
2. Attribute: an event of an attributed type (or a dwell type) without a
   `request_id` cites the latest impression of its item to its user within
   the window, so an arm's dwell is the dwell on what it showed.
3. Append: one transaction, idempotent by event id; users met for the first
   time are created in the same transaction (a failed batch leaves nothing).
4. Publish, after the commit, best effort (the events are stored whatever
   happens here): the users' last-event times in the cache (which retire
   their precomputed lists; sessions are read from the stored events), the
   metrics, bandit credit for the clicks, and a nudge to the online
   counters, which fold the stored log from their watermark in a background
   thread (`OnlineCounters.catch_up`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sieve.data.records import Event, future_timestamp_errors
from sieve.monitoring.metrics import ServingMetrics
from sieve.realtime.counters import OnlineCounters
from sieve.serve.errors import InvalidInput, TooLarge, field_error
from sieve.serve.impressions import ImpressionLogger
from sieve.settings import Settings
from sieve.storage import Cache, CacheError, Store, StoreError
from sieve.storage.changes import mark_users_changed

log = logging.getLogger("sieve.serve")


class EventIngestion:
    """The write path of `POST /events` (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: Cache,
        impressions: ImpressionLogger,
        metrics: ServingMetrics,
        counters: OnlineCounters,
        credit: Callable[[Sequence[Event]], None],
        background_store: Store | None = None,
        fold_interval: float = 0.5,
        served_items: Callable[[Sequence[str]], set[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.impressions = impressions
        self.metrics = metrics
        self.counters = counters
        self._credit = credit
        #: which of these ids the serving catalog holds as servable items (a
        #: memory lookup); only the others are looked up in the store
        self._served_items = served_items
        # the counters fold the log off the request path: no time limit there
        self._fold_store = background_store if background_store is not None else store
        self._weights = dict(settings.event_weights)
        # one thread folds the log into the counters, off the request path, at
        # most every `fold_interval` seconds: under load one fold covers many
        # batches (each fold reads the log and the catalog: a fixed cost that
        # took ~8% of a loaded server's CPU at 0.1 s); the counters' shortest
        # window is an hour, so half a second behind changes no feature
        self.fold_interval = fold_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fold_lock = threading.Lock()
        self._counting = threading.Thread(target=self._loop, name="sieve-counters", daemon=True)
        self._counting.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._counting.join()

    # ------------------------------------------------------------ validate
    def check(self, events: Sequence[Event]) -> None:
        """Raise `TooLarge` or `InvalidInput` (naming each bad type, unknown item
        or timestamp more than `max_future_skew_seconds` ahead)."""
        if len(events) > self.settings.max_batch:
            raise TooLarge(
                f"{len(events)} events in one request; the limit is {self.settings.max_batch} "
                "(max_batch): split the batch"
            )
        errors: list[dict[str, Any]] = future_timestamp_errors(
            events, datetime.now(UTC), self.settings.max_future_skew_seconds
        )
        allowed = sorted(self._weights)
        semantics = self.settings.semantics
        for i, e in enumerate(events):
            if e.type not in self._weights:
                errors.append(
                    field_error(
                        ("body", "events", i, "type"),
                        f"unknown event type {e.type!r}; allowed types: {allowed}",
                    )
                )
            elif semantics.is_dwell(e.type) and (
                (e.value is not None and e.value < 0)
                or (e.value is None and self._weights[e.type] <= 0)
            ):
                errors.append(
                    field_error(
                        ("body", "events", i, "value"),
                        f"a {e.type!r} event carries the seconds spent on the item in "
                        f"`value` (a number >= 0), got {e.value!r}",
                    )
                )
        known = self._known_items({e.item_id for e in events})
        for i, e in enumerate(events):
            if e.item_id not in known:
                errors.append(
                    field_error(
                        ("body", "events", i, "item_id"),
                        f"unknown item id {e.item_id!r}: add it to the catalog (POST /items) "
                        "before sending events about it",
                    )
                )
        if errors:
            raise InvalidInput(errors[:50])

    def _known_items(self, ids: set[str]) -> set[str]:
        """The ids of items in the catalog: the servable ones the serving
        model's catalog holds (kept in step with the store's catalog changes,
        `catalog_poll_seconds` behind another process's), the rest as the
        store says (one light read, none when all are served)."""
        known = self._served_items(list(ids)) if self._served_items is not None else set()
        rest = ids - known
        if rest:
            known |= set(self.store.item_categories(rest))
        return known

    # -------------------------------------------------------------- record
    def record(self, events: Sequence[Event]) -> tuple[int, list[str]]:
        """Check, attribute, append atomically, publish; returns (inserted, duplicate ids)."""
        self.check(events)
        events = self._attribute(events)
        result = self.store.append_events(events, create_users=True)
        # an id met k times is listed k-1 times in `duplicates` if it was new, k if not
        occurrences = Counter(e.id for e in events)
        listed = Counter(result.duplicates)
        new: list[Event] = []
        for e in events:
            if listed[e.id] < occurrences[e.id]:
                new.append(e)
                listed[e.id] = occurrences[e.id]  # only its first occurrence is new
        self._publish(new)
        return result.inserted, result.duplicates

    def _attribute(self, events: Sequence[Event]) -> list[Event]:
        """Cite the request that showed the item (see the module doc)."""
        kinds = set(self.settings.attribution_types) | set(self.settings.semantics.dwell_types)
        todo = [k for k, e in enumerate(events) if e.request_id is None and e.type in kinds]
        out = list(events)
        if not todo:
            return out
        clicks = [(events[k].user_id, events[k].item_id, events[k].timestamp) for k in todo]
        found = self.store.attribute_many(
            clicks,
            self.settings.attribution_window_seconds,
            self.impressions.unwritten_shown({(u, i) for u, i, _ in clicks}),
        )
        for k, request_id in zip(todo, found, strict=True):
            if request_id is not None:
                out[k] = events[k].model_copy(update={"request_id": request_id})
        return out

    # ------------------------------------------------------------- publish
    def _publish(self, new: Sequence[Event]) -> None:
        self._note_last_events(new)
        self.metrics.events_ingested(new)
        if new:
            self.nudge_counters()
            self._credit(new)

    def _note_last_events(self, new: Sequence[Event]) -> None:
        """The users' last-event times: a stored answer older than its user's
        last event is not served."""
        self.mark_changed([e.user_id for e in new])

    def mark_changed(self, user_ids: Sequence[str]) -> None:
        """Note that these users changed now (an event, new attributes), in
        one cache round trip: their stored answers computed before are stale
        (`sieve.storage.changes`)."""
        mark_users_changed(self.cache, user_ids)

    # ------------------------------------------------------------ counters
    def nudge_counters(self) -> None:
        """Have the counting thread fold what the log holds beyond the
        counters' watermark (nudges while a fold waits join it)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            self._fold()
            self._stop.wait(self.fold_interval)

    def _fold(self) -> None:
        with self._fold_lock:
            try:
                folded = self.counters.catch_up(self._fold_store)
                if folded:
                    log.debug("online counters folded %d events", folded)
            except (CacheError, StoreError):
                log.warning("online counters not updated (will catch up later)", exc_info=True)
            except Exception:
                log.exception("online counters not updated")

    def flush_counters(self) -> None:
        """Fold, in the caller's thread, every event stored so far that is not
        in the online counters yet (after a fold in progress here; another
        process holding the lease may still be folding)."""
        self._fold()


__all__ = ["EventIngestion"]
