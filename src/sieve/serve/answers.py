"""Precomputed answers (hybrid serving) and remembered live answers.

`precompute` stores every known user's top-N under `recs:{user}` with the
model version and the time it started; a live answer to a plain request is
stored the same way (`remember`, kept `answer_ttl_seconds`), so a user's
repeated requests between their events cost one cache read, not a funnel
run. A request is answered from that entry
when the version is the serving one, the user has no event recorded after it
(`last_event:{user}`, set at ingestion), the request has no filter or
context that would change the answer, and the user is in no experiment;
otherwise the live funnel answers. A cached list is re-checked against the
serving catalog (unavailable or deleted items are dropped; too few left →
live; an item whose title or categories this process's catalog changed after
the list was computed → live, as the list shows them stale). The lookup is
one cache round trip, made without blocking the event loop.

A hit is served from the stored rows as they are: they were validated when
written, so no model object is built per item and the response is encoded
once with orjson (building and serialising ten `RecommendedItem`s was about
a fifth of a cached answer's CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson

from sieve.data.records import Impression
from sieve.serve.impressions import build_impression, logged_sources
from sieve.serve.schemas import RecommendedItem
from sieve.storage import Cache, CacheError
from sieve.storage.changes import last_change_key

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger("sieve.serve")


def recs_key(user_id: str) -> str:
    return f"recs:{user_id}"


#: A stored item: the fields of `RecommendedItem`, in its order.
Row = dict[str, Any]


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer to one request: its rows and its encoded body."""

    rows: list[Row]
    request_id: str
    model_version: str
    user_id: str
    cold_start: bool = False

    @cached_property
    def body(self) -> bytes:
        """The response, shaped as `RecommendationList` (no experiments, no trace)."""
        return orjson.dumps(
            {
                "items": self.rows,
                "request_id": self.request_id,
                "model_version": self.model_version,
                "user_id": self.user_id,
                "cached": True,
                "cold_start": self.cold_start,
                "experiments": [],
            }
        )

    def impression(self, served_at: datetime) -> Callable[[], Impression]:
        """Its impression, to be built later by the impression logger's
        thread, off the request path. What waits in its queue is the encoded
        body (bytes, which the garbage collector never walks), not the rows:
        under load thousands of lists can wait, and each full collection walks
        every container object alive."""
        return _impression_from(self.body, served_at)


def _impression_from(body: bytes, served_at: datetime) -> Callable[[], Impression]:
    """A function building the impression of a stored answer's response body."""

    def build() -> Impression:
        answer = orjson.loads(body)
        return build_impression(
            answer["request_id"],
            answer["user_id"],
            answer["model_version"],
            served_at,
            {"cached": True},
            (),
            (
                (
                    row["id"],
                    row["score"],
                    logged_sources(row["sources"], row.get("slot", "ranked"), row.get("team")),
                    row.get("propensity", 1.0),
                )
                for row in answer["items"]
            ),
        )

    return build


@dataclass(frozen=True)
class Entry:
    """A stored answer's first `n` servable rows, and whether it was a cold start."""

    rows: list[Row]
    cold_start: bool = False


def entry_body(
    rows: Sequence[Row], version: str, computed_at: float, cold_start: bool = False
) -> bytes:
    """A user's stored answer: its rows (`RecommendedItem` fields, without
    contributions), the model version and when its computation started (an
    event of the user after that time makes it stale)."""
    entry: dict[str, Any] = {"items": rows, "model_version": version, "computed_at": computed_at}
    if cold_start:
        entry["cold_start"] = True
    return orjson.dumps(entry)


def rows_of(items: Sequence[RecommendedItem]) -> list[Row]:
    """Served items as stored rows."""
    return [i.model_dump(exclude={"contributions"}) for i in items]


def remember(
    cache: Cache,
    user_id: str,
    items: Sequence[RecommendedItem],
    version: str,
    computed_at: float,
    ttl: float,
    cold_start: bool = False,
) -> None:
    """Keep a live answer as the user's stored list for `ttl` seconds. A
    failing cache loses only the shortcut: the next request is live again."""
    try:
        cache.set(
            recs_key(user_id), entry_body(rows_of(items), version, computed_at, cold_start), ttl
        )
    except CacheError:
        log.warning("cache unavailable: live answer not kept", exc_info=True)


def valid_entry(
    funnel: Funnel, raw: bytes | None, last: bytes | None, n: int, version: str
) -> Entry | None:
    """The first `n` servable rows of a stored entry if it is valid for this
    request (see the module doc). The stored rows are trusted (they were
    validated when written), so no per-item validation is repeated."""
    try:
        # orjson: every cached answer decodes its stored list here, and the
        # standard library's decoder was ~15% of a cached answer's CPU
        entry = None if raw is None else orjson.loads(raw)
    except ValueError:
        log.warning("unreadable precomputed entry: answering live")
        return None
    if not isinstance(entry, dict) or entry.get("model_version") != version:
        return None
    computed_at = float(entry.get("computed_at", 0.0))
    if last is not None and float(last) >= computed_at:
        return None
    stored = entry.get("items", [])
    if len(stored) < n:
        return None
    out: list[Row] = []
    for row, servable in zip(stored, funnel.servable([r["id"] for r in stored]), strict=True):
        if servable:
            out.append(row)
            if len(out) == n:
                # an item's title or categories edited since: its row is stale
                if funnel.changed_since([r["id"] for r in out], computed_at):
                    return None
                return Entry(out, bool(entry.get("cold_start", False)))
    return None


async def lookup(cache: Cache, funnel: Funnel, user_id: str, n: int, version: str) -> Entry | None:
    """The precomputed list for this request, or None (answer live)."""
    try:
        raw, last = await cache.aget_many([recs_key(user_id), last_change_key(user_id)])
    except CacheError:
        log.warning("cache unreadable: answering live", exc_info=True)
        return None
    return valid_entry(funnel, raw, last, n, version)


def precompute(
    cache: Cache,
    funnel: Funnel,
    users: Sequence[str],
    answer: Callable[[list[str], float], list[list[RecommendedItem]]],
    block: int = 256,
) -> int:
    """Store each user's list under `recs:{user}`, `answer(users, computed_at)`
    giving the lists of a block of users at once (the funnel ranks a block
    together); returns how many were written."""
    version = str(funnel.version)
    computed_at = time.time()  # before reading: a later event invalidates the entry
    written = 0
    ids = [str(u) for u in users]
    for start in range(0, len(ids), block):
        chunk = ids[start : start + block]
        for user_id, items in zip(chunk, answer(chunk, computed_at), strict=True):
            cache.set(recs_key(user_id), entry_body(rows_of(items), version, computed_at))
            written += 1
    return written


__all__ = [
    "CachedAnswer",
    "Entry",
    "Row",
    "entry_body",
    "lookup",
    "precompute",
    "recs_key",
    "remember",
    "rows_of",
    "valid_entry",
]
