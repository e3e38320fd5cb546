"""The cache interface (`Cache`), its errors and the helpers its backends share.

The backends are `sieve.storage.cache.MemoryCache` (in-process) and
`sieve.storage.redis_cache.RedisCache` (shared by every process); see
`sieve.storage.cache` for how a URL picks one.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

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

    #: whether a call is a round trip to a server (Redis), worth taking off a
    #: response's path; a process-local cache answers at once
    remote: bool = False

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

    # --------------------------------------------------- shared numeric state
    @abstractmethod
    def hash_incr(self, key: str, amounts: Mapping[str, float]) -> None:
        """Add each amount to its field of the numeric hash at `key` (an absent
        field counts as 0), all in one atomic step: however many processes
        add at once, each field ends at the exact sum of their amounts."""

    @abstractmethod
    def hash_get(self, key: str, fields: Sequence[str]) -> list[float | None]:
        """The values of `fields` of the numeric hash at `key` (None where absent)."""

    @abstractmethod
    def hash_all(self, key: str) -> dict[str, float]:
        """Every field of the numeric hash at `key` (empty if absent)."""

    @abstractmethod
    def hash_incr_capped(self, key: str, field: str, amount: float, cap: str) -> float:
        """Add `amount` to `field`, but never past the value of the field `cap`
        (a bandit's reward sum never exceeds its pulls), atomically; returns
        the field's new value."""

    @abstractmethod
    def commit_if(self, values: Mapping[str, bytes], guard: str, expected: bytes | None) -> bool:
        """Store every value (no TTL) only if `guard` still holds `expected`
        (None: absent), in one atomic step; False (nothing stored) otherwise.
        A fenced write: a process that read state under `guard` cannot
        overwrite what another wrote after it read."""

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


__all__ = ["SUPPORTED_SCHEMES", "Cache", "CacheError", "CacheUnavailable"]
