"""`StreamConsumer`: events from a Redis Stream into the store, exactly once.

A member of a consumer group (`XREADGROUP`) reads a batch, checks it with
the API's rules (`records.Event`, the configured types, the clock skew, the
catalog), appends the good events in one transaction (`append_columns`, the
bulk `append_events`: idempotent by event id, new users created with them)
and only then acknowledges the batch (`XACK`). So:

- a crash before the commit loses nothing: the entries stay pending in the
  group and are delivered again, to this consumer when it restarts under
  the same name (its own pending entries are read first) or to another one
  (`XAUTOCLAIM` of entries idle longer than `claim_idle_seconds`);
- a crash between commit and acknowledgement duplicates nothing: the
  re-delivered events have ids the log already holds.

An entry's event id is its `id` field, else `STREAM:ENTRY-ID` (stable across
re-deliveries). Fields are the `Event`'s (`user_id`, `item_id`, `type`,
`value`, `timestamp` as epoch seconds or ISO 8601, `request_id`), or one
`event` field holding its JSON. A refused entry is copied with its reason
to the stream `STREAM:rejected` and acknowledged: it would fail again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from pydantic import ValidationError

from sieve.data.records import DEFAULT_MAX_FUTURE_SKEW_SECONDS, Event, future_timestamp_errors
from sieve.storage import EventColumns, SQLStore, Store

log = logging.getLogger("sieve.ingest")

Entry = tuple[str, dict[str, str]]


@dataclass
class ConsumeTotals:
    """Entries read, events newly stored, events already stored, entries refused."""

    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def add(self, other: ConsumeTotals) -> None:
        self.read += other.read
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.rejected += other.rejected


class StreamConsumer:
    """One consumer of a group on a stream (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        store: Store,
        *,
        stream: str,
        group: str,
        consumer: str,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_seconds: float = 60.0,
        event_types: Collection[str] = ("view", "click", "cart", "purchase", "rating"),
        max_future_skew_seconds: float = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
        known_items: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_stored: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.client = client
        self.store = store
        #: told each committed batch's events (before the acknowledgement): the
        #: CLI stamps their users changed, retiring their stored answers
        self.on_stored = on_stored
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.event_types = set(event_types)
        self.max_skew = max_future_skew_seconds
        self.known_items = known_items
        self.clock = clock
        self.rejected_stream = f"{stream}:rejected"
        self._own_pending_done = False
        self._claim_from = "0-0"
        self.ensure_group()

    @classmethod
    def from_url(cls, url: str, store: Store, **options: Any) -> StreamConsumer:
        client = redis.Redis.from_url(
            url.split("?", 1)[0] if "prefix=" in url else url,
            decode_responses=True,
            socket_timeout=30,
            socket_connect_timeout=5,
        )
        return cls(client, store, **options)

    def close(self) -> None:
        self.client.close()

    def ensure_group(self) -> None:
        """Create the group at the stream's start (and the stream) if missing."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # ------------------------------------------------------------------ read
    def next_batch(self) -> list[Entry]:
        """This consumer's own pending entries first (after a restart), then
        entries another consumer left unacknowledged too long, then new ones."""
        if not self._own_pending_done:
            entries = self._read("0", block=False)
            if entries:
                return entries
            self._own_pending_done = True
        claimed = self._claim()
        if claimed:
            return claimed
        return self._read(">", block=True)

    def _read(self, start: str, *, block: bool) -> list[Entry]:
        answer: Any = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self.batch,
            block=self.block_ms if block else None,
        )
        if not answer:
            return []
        return [(i, f) for i, f in answer[0][1] if f is not None]

    def _claim(self) -> list[Entry]:
        answer: Any = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_from,
            count=self.batch,
        )
        self._claim_from = answer[0] if answer[1] else "0-0"
        deleted = answer[2] if len(answer) > 2 else []
        if deleted:  # trimmed from the stream while pending: nothing to store
            self.client.xack(self.stream, self.group, *deleted)
        return [(i, f) for i, f in answer[1] if f]

    # --------------------------------------------------------------- process
    def process(self, entries: Sequence[Entry]) -> ConsumeTotals:
        """Check, commit, then acknowledge one batch."""
        totals = ConsumeTotals(read=len(entries))
        if not entries:
            return totals
        events, refused = self._check(entries)
        if events:
            if isinstance(self.store, SQLStore):  # the bulk path: no per-event binding
                inserted = self.store.append_columns(EventColumns.from_events(events))
            else:
                inserted = self.store.append_events(events, create_users=True).inserted
            totals.inserted = inserted
            totals.duplicates = len(events) - inserted
            if self.on_stored is not None and inserted:
                self.on_stored(events)
        if refused:
            pipe = self.client.pipeline(transaction=False)
            for entry_id, fields, reason in refused:
                pipe.xadd(
                    self.rejected_stream,
                    {"entry": entry_id, "reason": reason, "fields": orjson.dumps(fields).decode()},
                )
            pipe.execute()
            totals.rejected = len(refused)
            log.warning("%d entries refused, set aside in %s", len(refused), self.rejected_stream)
        self.ack([i for i, _ in entries])
        return totals

    def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge entries whose events are committed (or refused)."""
        self.client.xack(self.stream, self.group, *ids)

    def _check(self, entries: Sequence[Entry]) -> tuple[list[Event], list[tuple[str, Any, str]]]:
        refused: list[tuple[str, Any, str]] = []
        parsed: list[tuple[str, dict[str, str], Event]] = []
        for entry_id, fields in entries:
            try:
                event = Event.model_validate(self._fields(entry_id, fields))
            except (ValidationError, ValueError) as e:
                refused.append((entry_id, fields, _reason(e)))
                continue
            if event.type not in self.event_types:
                refused.append(
                    (
                        entry_id,
                        fields,
                        f"unknown event type {event.type!r}; allowed: {sorted(self.event_types)}",
                    )
                )
                continue
            parsed.append((entry_id, fields, event))
        late = {
            int(e["loc"][0])
            for e in future_timestamp_errors(
                [p[2] for p in parsed], self.clock(), self.max_skew, loc=()
            )
        }
        known = (
            set(self.store.item_categories({p[2].item_id for p in parsed}))
            if self.known_items
            else None
        )
        events: list[Event] = []
        for k, (entry_id, fields, event) in enumerate(parsed):
            if k in late:
                refused.append((entry_id, fields, "timestamp too far in the future"))
            elif known is not None and event.item_id not in known:
                refused.append((entry_id, fields, f"unknown item id {event.item_id!r}"))
            else:
                events.append(event)
        return events, refused

    def _fields(self, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
        data: dict[str, Any]
        if "event" in fields:
            data = orjson.loads(fields["event"])
            if not isinstance(data, dict):
                raise ValueError("event: expected a JSON object")
        else:
            data = {k: v for k, v in fields.items() if v != ""}
            stamp = data.get("timestamp")
            if isinstance(stamp, str):
                # stream fields are text: epoch seconds travel as "1700000000.5"
                # (an ISO 8601 date is left to pydantic)
                with contextlib.suppress(ValueError):
                    data["timestamp"] = float(stamp)
        data.setdefault("id", f"{self.stream}:{entry_id}")
        return data

    # ------------------------------------------------------------------- run
    def run(
        self,
        *,
        max_events: int | None = None,
        idle_exit: float | None = None,
        stop: threading.Event | None = None,
    ) -> ConsumeTotals:
        """Process batches until `stop` is set, `max_events` entries were read,
        or no entry came for `idle_exit` seconds."""
        totals = ConsumeTotals()
        last = time.monotonic()
        while stop is None or not stop.is_set():
            if max_events is not None and totals.read >= max_events:
                break
            entries = self.next_batch()
            if max_events is not None:
                entries = entries[: max_events - totals.read]
            if entries:
                totals.add(self.process(entries))
                last = time.monotonic()
            elif idle_exit is not None and time.monotonic() - last >= idle_exit:
                break
        return totals


def _reason(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in e.errors()
        )
    return str(e)


__all__ = ["ConsumeTotals", "StreamConsumer"]
