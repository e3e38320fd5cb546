"""Which users changed when: the stamps that retire their stored answers.

A stored answer (precomputed, or a kept live one: `sieve.serve.answers`) is
served only if its user has no change stamped after it was computed. Every
writer of a user's events or attributes stamps them here, in the shared
cache: the service's ingestion, `sieve import events` and the stream
consumer (`sieve consume`), so no server process serves a list that an
event it did not see made stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from sieve.storage.cache_base import Cache, CacheError

log = logging.getLogger("sieve.storage")


def last_change_key(user_id: str) -> str:
    """The cache key of a user's last change time."""
    return f"last_event:{user_id}"


def mark_users_changed(cache: Cache, user_ids: Iterable[str], at: float | None = None) -> bool:
    """Stamp these users changed at `at` (default: now), in one cache round
    trip; False (logged) when the cache is unavailable: the writes are
    committed, and the users' stored answers may be served until they expire."""
    stamp = repr(time.time() if at is None else at).encode()
    keys = {last_change_key(u): stamp for u in dict.fromkeys(user_ids)}
    if not keys:
        return True
    try:
        cache.set_many(keys)
    except CacheError:
        log.warning("cache unavailable: last-change times not updated", exc_info=True)
        return False
    return True


__all__ = ["last_change_key", "mark_users_changed"]
