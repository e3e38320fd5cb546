"""Precomputed answers (hybrid serving).

`precompute` stores every known user's top-N under `recs:{user}` with the
model version and the time it started. A request is answered from that entry
when the version is the serving one, the user has no event recorded after it
(`last_event:{user}`, set at ingestion), the request has no filter or
context that would change the answer, and the user is in no experiment;
otherwise the live funnel answers. A cached list is re-checked against the
serving catalog (unavailable or deleted items are dropped; too few left →
live). The lookup is one cache round trip, made without blocking the event
loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from sieve.data.schema import UnknownIdError
from sieve.serve.ingest import last_event_key
from sieve.serve.schemas import RecommendedItem
from sieve.storage import Cache, CacheError

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger("sieve.serve")


def recs_key(user_id: str) -> str:
    return f"recs:{user_id}"


def valid_entry(
    funnel: Funnel, raw: bytes | None, last: bytes | None, n: int, version: str
) -> list[RecommendedItem] | None:
    """The first `n` servable items of a stored entry if it is valid for this
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


async def lookup(
    cache: Cache, funnel: Funnel, user_id: str, n: int, version: str
) -> list[RecommendedItem] | None:
    """The precomputed list for this request, or None (answer live)."""
    try:
        raw, last = await cache.aget_many([recs_key(user_id), last_event_key(user_id)])
    except CacheError:
        log.warning("cache unreadable: answering live", exc_info=True)
        return None
    return valid_entry(funnel, raw, last, n, version)


def precompute(
    cache: Cache,
    funnel: Funnel,
    users: Sequence[str],
    answer: Callable[[str, float], list[RecommendedItem]],
) -> int:
    """Store `answer(user, computed_at)` for each user under `recs:{user}`;
    returns how many were written."""
    version = str(funnel.version)
    computed_at = time.time()  # before reading: a later event invalidates the entry
    written = 0
    for user_id in users:
        items = answer(str(user_id), computed_at)
        entry: dict[str, Any] = {
            "items": [i.model_dump(exclude={"contributions"}) for i in items],
            "model_version": version,
            "computed_at": computed_at,
        }
        cache.set_json(recs_key(str(user_id)), entry)
        written += 1
    return written


__all__ = ["lookup", "precompute", "recs_key", "valid_entry"]
