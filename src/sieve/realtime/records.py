"""Where the online counters' records live (`sieve.realtime.counters`).

- `CacheRecords`: bytes under keys in a shared cache (Redis), one
  `get_many` / `set_many` per batch, decoded with one `frombuffer`;
- `StagedRecords`: one fold batch's writes held back, to be committed with
  the watermark in one fenced step (`Cache.commit_if`);
- `LocalRecords`: process memory beside a per-process memory cache (no
  bytes, not subject to the cache's LRU bound).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from sieve.storage.cache import Cache, MemoryCache

_F8 = np.dtype("<f8")


class Records(ABC):
    """Where the counters' records live: fixed-width float64 records (items,
    users) read and written in bulk, and byte values (category records)."""

    @abstractmethod
    def read(
        self, keys: Sequence[str], width: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Records of `width` floats (zeros where absent or of another width)
        and which were present."""

    def read_all(
        self, groups: Sequence[tuple[Sequence[str], int]], others: Sequence[str]
    ) -> tuple[list[tuple[NDArray[np.float64], NDArray[np.bool_]]], list[bytes | None]]:
        """`read(keys, width)` of each (keys, width) of `groups` and
        `get_many(others)`: in one round trip where the records are remote
        (`CacheRecords`)."""
        return [self.read(keys, width) for keys, width in groups], self.get_many(others)

    @abstractmethod
    def write(self, keys: Sequence[str], state: NDArray[np.float64]) -> None:
        """Store records (one row of `state` per key)."""

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Byte values (None where absent)."""

    @abstractmethod
    def set_many(self, values: Mapping[str, bytes]) -> None:
        """Store byte values."""


class CacheRecords(Records):
    """Records as bytes in a shared cache (Redis): one `get_many` / `set_many`
    per batch, decoded with one `frombuffer`."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def read(
        self, keys: Sequence[str], width: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        return decode(self.cache.get_many(keys) if keys else [], width)

    def read_all(
        self, groups: Sequence[tuple[Sequence[str], int]], others: Sequence[str]
    ) -> tuple[list[tuple[NDArray[np.float64], NDArray[np.bool_]]], list[bytes | None]]:
        """One `get_many` for all: a live answer's counters cost one round trip."""
        keys = [k for group, _ in groups for k in group] + list(others)
        blobs = self.cache.get_many(keys) if keys else []
        out, start = [], 0
        for group, width in groups:
            out.append(decode(blobs[start : start + len(group)], width))
            start += len(group)
        return out, blobs[start:]

    def write(self, keys: Sequence[str], state: NDArray[np.float64]) -> None:
        buf = np.ascontiguousarray(state, dtype=_F8).tobytes()
        size = state.shape[1] * 8
        self.cache.set_many({k: buf[r * size : (r + 1) * size] for r, k in enumerate(keys)})

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.cache.get_many(keys) if keys else []

    def set_many(self, values: Mapping[str, bytes]) -> None:
        self.cache.set_many(values)


def decode(
    blobs: Sequence[bytes | None], width: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Records of `width` floats from their bytes (zeros and absent where a
    value is missing or of another width), with one `frombuffer`."""
    state = np.zeros((len(blobs), width))
    size = width * 8
    good = [r for r, b in enumerate(blobs) if b is not None and len(b) == size]
    present = np.zeros(len(blobs), dtype=bool)
    if good:
        joined = b"".join(blobs[r] or b"" for r in good)
        state[good] = np.frombuffer(joined, dtype=_F8).reshape(len(good), width)
        present[good] = True
    return state, present


class StagedRecords(Records):
    """The writes of one fold batch, held back to be committed at once with
    the watermark (`catch_up`); reads see them over the shared records."""

    def __init__(self, base: Records) -> None:
        self.base = base
        self.values: dict[str, bytes] = {}

    def read(
        self, keys: Sequence[str], width: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        state, present = self.base.read(keys, width)
        for r, key in enumerate(keys):
            blob = self.values.get(key)
            if blob is not None and len(blob) == width * 8:
                state[r] = np.frombuffer(blob, _F8)
                present[r] = True
        return state, present

    def write(self, keys: Sequence[str], state: NDArray[np.float64]) -> None:
        buf = np.ascontiguousarray(state, dtype=_F8).tobytes()
        size = state.shape[1] * 8
        self.values.update((k, buf[r * size : (r + 1) * size]) for r, k in enumerate(keys))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = self.base.get_many(keys)
        return [self.values.get(k, b) for k, b in zip(keys, found, strict=True)]

    def set_many(self, values: Mapping[str, bytes]) -> None:
        self.values.update(values)


_LOCAL: weakref.WeakKeyDictionary[MemoryCache, LocalRecords] = weakref.WeakKeyDictionary()
_LOCAL_LOCK = threading.Lock()


def local_records(cache: MemoryCache) -> LocalRecords:
    """The process-local records that go with a memory cache (shared by every
    `OnlineCounters` on it, as a cache's keys would be)."""
    with _LOCAL_LOCK:
        records = _LOCAL.get(cache)
        if records is None:
            records = _LOCAL[cache] = LocalRecords()
        return records


class LocalRecords(Records):
    """Records in process memory, beside a memory cache (per process anyway):
    a key → row dict over one growing float64 matrix per width, so a batch
    costs a dict lookup per key and array copies, no bytes. One row per item
    and per user ever counted: not bounded by the cache's LRU (nor evicting
    its precomputed lists). Readers on other threads see a row's old or new
    values: a new key is published only after its row is written."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, int]] = {}
        self._data: dict[int, NDArray[np.float64]] = {}
        self._blobs: dict[str, bytes] = {}

    def read(
        self, keys: Sequence[str], width: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        rows = self._rows.get(width, {})
        # map over the dict's own `get`: no Python frame per key
        index = np.fromiter(map(rows.get, keys, itertools.repeat(-1)), np.int64, len(keys))
        data = self._data.get(width)  # after the rows: at least as long as they say
        present = index >= 0
        state = np.zeros((len(keys), width))
        if data is not None and present.any():
            state[present] = data[index[present]]
        return state, present

    def write(self, keys: Sequence[str], state: NDArray[np.float64]) -> None:
        width = state.shape[1]
        rows = self._rows.setdefault(width, {})
        index = np.empty(len(keys), np.int64)
        new: dict[str, int] = {}
        n = len(rows)
        for r, k in enumerate(keys):
            i = rows.get(k)
            if i is None:
                i = new.get(k)
                if i is None:
                    i = new[k] = n
                    n += 1
            index[r] = i
        data = self._data.get(width)
        if data is None or n > len(data):
            grown = np.zeros((max(n, 1024, 0 if data is None else 2 * len(data)), width))
            if data is not None:
                grown[: len(data)] = data
            data = self._data[width] = grown
        data[index] = state
        rows.update(new)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._blobs.get(k) for k in keys]

    def set_many(self, values: Mapping[str, bytes]) -> None:
        self._blobs.update(values)


__all__ = [
    "CacheRecords",
    "LocalRecords",
    "Records",
    "StagedRecords",
    "decode",
    "local_records",
]
