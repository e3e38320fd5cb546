"""The cache and online state: cached results, float counters, capped recent lists.

Two backends behind one narrow interface, chosen by URL:

- `memory://[?max_entries=N]` (the default): in-process, thread-safe, bounded
  by least-recently-used eviction; TTLs are checked lazily on access against
  a monotonic clock (injectable, so tests need not sleep). Nothing is shared
  between processes and nothing survives a restart.
- `redis://host:port/db[?prefix=sieve:]` (or `rediss://`): shared by every
  worker. All keys get `prefix`, so several deployments (or tests) can share a
  database. A server that cannot be reached raises `CacheUnavailable` naming
  the URL (password hidden), so callers can degrade instead of hanging.

Values are bytes; `get_json` / `set_json` wrap them. Counters are floats
(`incr`); `push_recent` / `recent` keep a capped, most-recent-first list of
strings (a session's history).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

#: URL schemes `open_cache` understands.
SUPPORTED_SCHEMES = ("memory", "redis", "rediss")


class CacheError(Exception):
    """A cache operation that failed (e.g. a counter operation on a list key)."""


class CacheUnavailable(CacheError):
    """The cache server cannot be reached; the message names its URL."""


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")


def _format_float(value: float) -> bytes:
    """A counter's stored form, as Redis writes it (`3`, `2.5`)."""
    text = repr(value)
    return (text[:-2] if text.endswith(".0") else text).encode()


class Cache(ABC):
    """Key → bytes with optional TTL, float counters and capped recent lists."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value`, replacing whatever the key held; it expires after `ttl` seconds."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def incr(self, key: str, amount: float = 1.0) -> float:
        """Add `amount` to a float counter (absent counts as 0); return the new value.
        The key's TTL, if any, is kept."""

    @abstractmethod
    def push_recent(self, key: str, value: str, max_len: int, ttl: float | None = None) -> None:
        """Put `value` at the front of a list capped at `max_len` (the oldest fall off).
        `ttl` (re)sets the list's expiry, e.g. to end a session's history."""

    @abstractmethod
    def recent(self, key: str, n: int) -> list[str]:
        """Up to `n` values of the list, most recent first."""

    @abstractmethod
    def clear_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; return how many were deleted."""

    @abstractmethod
    def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store `value` only if `key` is absent (a lease that expires after
        `ttl` seconds); True when it was stored."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Several values at once (one round trip on Redis)."""
        return [self.get(k) for k in keys]

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """`get_many` for the event loop: it never blocks it (a process-local
        cache answers at once; Redis through its asyncio client)."""
        return self.get_many(keys)

    def set_many(self, values: Mapping[str, bytes]) -> None:
        """Store several values (no TTL) at once: one lock or one round trip,
        for writers that touch thousands of keys per call (the online counters)."""
        for k, v in values.items():
            self.set(k, v)

    def get_json(self, key: str) -> Any:
        """The JSON value at `key`, or None if absent."""
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def set_json(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.set(key, json.dumps(value, separators=(",", ":")).encode(), ttl)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class _Entry:
    value: bytes | deque[str]
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

    def clear_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._data if k.startswith(prefix)]
            for k in doomed:
                del self._data[k]
            return len(doomed)


def _as_bytes(value: bytes | str) -> bytes:
    """Replies are bytes (the client does not decode); str only if configured so."""
    return value.encode() if isinstance(value, str) else value


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisCache(Cache):
    """The cache on Redis; every key is stored as `prefix + key`."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "",
        url: str = "redis://",
        cooldown: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.url = url
        self.cooldown = cooldown
        self._clock = clock
        self._down_until = -math.inf
        self._async: Any = None  # redis.asyncio client, made on first use in the loop
        self._async_loop: Any = None

    @classmethod
    def from_url(cls, url: str) -> RedisCache:
        """Connect lazily to `url`; `?prefix=` sets the key prefix, `?cooldown=`
        the seconds a failed Redis is skipped (default 2); other query options go
        to redis-py. Timeouts default to 0.5 s (connect and reply): the cache
        sits on the request path, and a request whose cache does not answer is
        answered without it."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("prefix", "")
        cooldown = float(query.pop("cooldown", "2"))
        query.setdefault("socket_connect_timeout", "0.5")
        query.setdefault("socket_timeout", "0.5")
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        # no retries: a Redis that does not answer in time is skipped (cool-down),
        # not retried with back-off while a request waits
        client = redis.Redis.from_url(client_url, retry=Retry(NoBackoff(), 0))
        return cls(client, prefix=prefix, url=_hide_password(url), cooldown=cooldown)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Redis errors → `CacheError`. A Redis that did not answer (timeout,
        refused) is skipped for `cooldown` seconds — calls fail at once with
        `CacheUnavailable` instead of each waiting for its timeout — then tried again."""
        if self._clock() < self._down_until:
            raise CacheUnavailable(
                f"Redis at {self.url} failed in the last {self.cooldown:g} s ({what} skipped)"
            )
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._down_until = self._clock() + self.cooldown
            raise CacheUnavailable(f"Redis not reachable at {self.url} ({what}): {e}") from e
        except redis.RedisError as e:
            raise CacheError(f"{what} failed on Redis at {self.url}: {e}") from e

    def _k(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        with self._errors("get"):
            value = self._client.get(self._k(key))
        return None if value is None else _as_bytes(value)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors("get_many"):
            values = self._client.mget([self._k(k) for k in keys])
        return [None if v is None else _as_bytes(v) for v in values]

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            given = self._client.connection_pool.connection_kwargs
            keep = ("host", "port", "db", "username", "password", "socket_timeout")
            kwargs = {k: given[k] for k in keep if k in given}
            kwargs["socket_connect_timeout"] = given.get("socket_connect_timeout", 0.5)
            self._async = redis.asyncio.Redis(
                **kwargs, retry=redis.asyncio.retry.Retry(NoBackoff(), 0)
            )
            self._async_loop = loop
        with self._errors("get_many"):
            values = await self._async.mget([self._k(k) for k in keys])
        return [None if v is None else _as_bytes(v) for v in values]

    def set_many(self, values: Mapping[str, bytes]) -> None:
        if not values:
            return
        with self._errors("set_many"):
            self._client.mset({self._k(k): v for k, v in values.items()})

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        px = None if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._errors("set"):
            self._client.set(self._k(key), value, px=px)

    def delete(self, key: str) -> None:
        with self._errors("delete"):
            self._client.delete(self._k(key))

    def incr(self, key: str, amount: float = 1.0) -> float:
        with self._errors("incr"):
            return float(self._client.incrbyfloat(self._k(key), float(amount)))

    def push_recent(self, key: str, value: str, max_len: int, ttl: float | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        _check_ttl(ttl)
        k = self._k(key)
        with self._errors("push_recent"):
            pipe = self._client.pipeline(transaction=True)
            pipe.lpush(k, value)
            pipe.ltrim(k, 0, max_len - 1)
            if ttl is not None:
                pipe.pexpire(k, max(1, math.ceil(ttl * 1000)))
            pipe.execute()

    def recent(self, key: str, n: int) -> list[str]:
        if n <= 0:
            return []
        with self._errors("recent"):
            values = self._client.lrange(self._k(key), 0, n - 1)
        return [_as_bytes(v).decode() for v in values]

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        _check_ttl(ttl)
        with self._errors("add"):
            return bool(
                self._client.set(self._k(key), value, px=max(1, math.ceil(ttl * 1000)), nx=True)
            )

    def clear_prefix(self, prefix: str) -> int:
        pattern = _glob_escape(self._k(prefix)) + "*"
        deleted = 0
        with self._errors("clear_prefix"):
            batch: list[bytes] = []
            for k in self._client.scan_iter(match=pattern, count=1000):
                batch.append(k)
                if len(batch) >= 500:
                    deleted += int(self._client.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(self._client.unlink(*batch))
        return deleted

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisCache({self.url!r}, prefix={self.prefix!r})"


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
