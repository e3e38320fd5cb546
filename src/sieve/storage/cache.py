"""The cache and online state: cached results, float counters, capped recent
lists, and numeric hashes for state every process adds to (bandits).

Two backends behind one narrow interface (`Cache`, `sieve.storage.cache_base`), chosen by URL:

- `memory://[?max_entries=N]` (the default): in-process, thread-safe, bounded
  by least-recently-used eviction; TTLs are checked lazily on access against
  a monotonic clock (injectable, so tests need not sleep). Nothing is shared
  between processes and nothing survives a restart: one server process only
  (`sieve serve --workers N` refuses it).
- `redis://host:port/db[?prefix=sieve:]` (or `rediss://`): shared by every
  process and host (`sieve.storage.redis_cache.RedisCache`).

Values are bytes; `get_json` / `set_json` wrap them. Counters are floats
(`incr`); `push_recent` / `recent` keep a capped, most-recent-first list of
strings (a session's history); `hash_incr` and its kin keep exact sums that
several processes add to at once; `commit_if` is a fenced write.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from sieve.storage.cache_base import (
    SUPPORTED_SCHEMES,
    Cache,
    CacheError,
    CacheUnavailable,
    _check_ttl,
    _format_float,
)
from sieve.storage.redis_cache import RedisCache


@dataclass
class _Entry:
    value: bytes | deque[str] | dict[str, float]
    expires: float | None


class MemoryCache(Cache):
    """In-process cache: an LRU-ordered dict under a lock, at most `max_entries` keys."""

    def __init__(
        self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.url = f"memory://?max_entries={max_entries}"
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    # callers hold the lock
    def _live(self, key: str) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires is not None and self._clock() >= entry.expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    def _put(self, key: str, entry: _Entry) -> None:
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def _expiry(self, ttl: float | None) -> float | None:
        _check_ttl(ttl)
        return None if ttl is None else self._clock() + ttl

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._put(key, _Entry(value, self._expiry(ttl)))
            return True

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._live(key)
            if entry is None:
                return None
            if not isinstance(entry.value, bytes):
                raise CacheError(f"key {key!r} holds a recent list, not a value")
            return entry.value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = self._expiry(ttl)
        with self._lock:
            self._put(key, _Entry(bytes(value), expires))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # `_live` inlined: thousands of keys per call on the counters' write path
        out: list[bytes | None] = []
        data = self._data
        with self._lock:
            now = self._clock()
            for key in keys:
                entry = data.get(key)
                if entry is None:
                    out.append(None)
                    continue
                if entry.expires is not None and now >= entry.expires:
                    del data[key]
                    out.append(None)
                    continue
                data.move_to_end(key)
                value = entry.value
                if not isinstance(value, bytes):
                    raise CacheError(f"key {key!r} holds a recent list, not a value")
                out.append(value)
        return out

    def set_many(self, values: Mapping[str, bytes]) -> None:
        data = self._data
        with self._lock:
            for key, value in values.items():
                data[key] = _Entry(bytes(value), None)
                data.move_to_end(key)
            while len(data) > self.max_entries:
                data.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def incr(self, key: str, amount: float = 1.0) -> float:
        with self._lock:
            entry = self._live(key)
            current = 0.0
            if entry is not None:
                if not isinstance(entry.value, bytes):
                    raise CacheError(f"key {key!r} holds a recent list, not a counter")
                try:
                    current = float(entry.value)
                except ValueError:
                    raise CacheError(f"key {key!r} does not hold a number") from None
            new = current + float(amount)
            self._put(key, _Entry(_format_float(new), entry.expires if entry else None))
            return new

    def push_recent(self, key: str, value: str, max_len: int, ttl: float | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        expires = self._expiry(ttl)
        with self._lock:
            entry = self._live(key)
            if entry is None:
                entry = _Entry(deque(), None)
            elif not isinstance(entry.value, deque):
                raise CacheError(f"key {key!r} holds a value, not a recent list")
            items = entry.value
            assert isinstance(items, deque)
            items.appendleft(value)
            while len(items) > max_len:
                items.pop()
            if expires is not None:
                entry.expires = expires
            self._put(key, entry)

    def recent(self, key: str, n: int) -> list[str]:
        with self._lock:
            entry = self._live(key)
            if entry is None or n <= 0:
                return []
            if not isinstance(entry.value, deque):
                raise CacheError(f"key {key!r} holds a value, not a recent list")
            return list(entry.value)[:n]

    # --------------------------------------------------- shared numeric state
    def _hash(self, key: str, create: bool = False) -> dict[str, float] | None:
        """The numeric hash at `key` (the caller holds the lock)."""
        entry = self._live(key)
        if entry is None:
            if not create:
                return None
            entry = _Entry({}, None)
            self._put(key, entry)
        if not isinstance(entry.value, dict):
            raise CacheError(f"key {key!r} does not hold a numeric hash")
        return entry.value

    def hash_incr(self, key: str, amounts: Mapping[str, float]) -> None:
        if not amounts:
            return
        with self._lock:
            fields = self._hash(key, create=True)
            assert fields is not None
            for name, amount in amounts.items():
                fields[name] = fields.get(name, 0.0) + float(amount)

    def hash_get(self, key: str, fields: Sequence[str]) -> list[float | None]:
        with self._lock:
            found = self._hash(key) or {}
            return [found.get(f) for f in fields]

    def hash_all(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self._hash(key) or {})

    def hash_incr_capped(self, key: str, field: str, amount: float, cap: str) -> float:
        with self._lock:
            fields = self._hash(key, create=True)
            assert fields is not None
            current = fields.get(field, 0.0)
            add = min(float(amount), fields.get(cap, 0.0) - current)
            if add > 0:
                fields[field] = current + add
            return fields.get(field, current)

    def commit_if(self, values: Mapping[str, bytes], guard: str, expected: bytes | None) -> bool:
        with self._lock:
            entry = self._live(guard)
            now = None if entry is None else entry.value
            if now != expected:
                return False
            for key, value in values.items():
                self._put(key, _Entry(bytes(value), None))
            return True

    def clear_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._data if k.startswith(prefix)]
            for k in doomed:
                del self._data[k]
            return len(doomed)


def open_cache(url: str | None = None) -> Cache:
    """The cache at `url` (None → `memory://`); see the module doc for the URL forms."""
    url = url or "memory://"
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        query = dict(parse_qsl(urlsplit(url).query))
        max_entries = query.pop("max_entries", None)
        if query:
            raise ValueError(f"unknown memory:// option(s) {sorted(query)}; known: max_entries")
        return MemoryCache() if max_entries is None else MemoryCache(int(max_entries))
    if scheme in ("redis", "rediss"):
        return RedisCache.from_url(url)
    raise ValueError(
        f"unsupported cache URL {url!r}; supported schemes: "
        + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    )


__all__ = [
    "SUPPORTED_SCHEMES",
    "Cache",
    "CacheError",
    "CacheUnavailable",
    "MemoryCache",
    "RedisCache",
    "open_cache",
]
