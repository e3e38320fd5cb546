"""The cache on Redis: shared by every process of a deployment (`redis://`, `rediss://`).

Every key gets the URL's `?prefix=`, so several deployments (or tests) can
share one database. A server that cannot be reached raises `CacheUnavailable`
naming the URL (password hidden) and is skipped for a short cool-down, so
callers degrade instead of hanging. The numeric hashes (`hash_incr`, …) are
Redis hashes changed by `HINCRBYFLOAT` in one `MULTI`/`EXEC`; the capped
increment and the fenced commit are short Lua scripts (atomic on the server).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from sieve.storage.cache_base import Cache, CacheError, CacheUnavailable, _check_ttl

#: `hash_incr_capped`: add ARGV[2] to field ARGV[1], never past field ARGV[3].
_CAPPED = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local cap = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
local add = math.min(tonumber(ARGV[2]), cap - cur)
if add > 0 then
  return redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], string.format('%.17g', add))
end
return string.format('%.17g', cur)
"""
#: `commit_if`: KEYS[1] the guard, ARGV[1] 1 if a value is expected, ARGV[2]
#: the value; then the pairs KEYS[k] / ARGV[k + 1] to store.
_COMMIT_IF = """
local now = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if now ~= ARGV[2] then return 0 end
elseif now then
  return 0
end
for k = 2, #KEYS do
  redis.call('SET', KEYS[k], ARGV[k + 1])
end
return 1
"""


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

    remote = True

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

    # --------------------------------------------------- shared numeric state
    def hash_incr(self, key: str, amounts: Mapping[str, float]) -> None:
        if not amounts:
            return
        k = self._k(key)
        with self._errors("hash_incr"):
            pipe = self._client.pipeline(transaction=True)
            for name, amount in amounts.items():
                pipe.hincrbyfloat(k, name, float(amount))
            pipe.execute()

    def hash_get(self, key: str, fields: Sequence[str]) -> list[float | None]:
        if not fields:
            return []
        with self._errors("hash_get"):
            values = self._client.hmget(self._k(key), list(fields))
        return [None if v is None else float(v) for v in values]

    def hash_all(self, key: str) -> dict[str, float]:
        with self._errors("hash_all"):
            found = self._client.hgetall(self._k(key))
        return {_as_bytes(k).decode(): float(v) for k, v in found.items()}

    def hash_incr_capped(self, key: str, field: str, amount: float, cap: str) -> float:
        with self._errors("hash_incr_capped"):
            value = self._client.eval(_CAPPED, 1, self._k(key), field, repr(float(amount)), cap)
        return float(value)

    def commit_if(self, values: Mapping[str, bytes], guard: str, expected: bytes | None) -> bool:
        keys = [self._k(guard), *(self._k(k) for k in values)]
        args = ["1" if expected is not None else "0", expected or b"", *values.values()]
        with self._errors("commit_if"):
            return bool(self._client.eval(_COMMIT_IF, len(keys), *keys, *args))

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


__all__ = ["RedisCache"]
