"""Event-driven counters with time windows, in the Cache (memory or Redis).

Every event updates, for its item, a count per event type over each window
(1 hour, 1 day, 7 days) and, for its user, an event count, the time of the
last event and a category affinity. Windows are exponentially decayed
counts (value × exp(−Δt / window) at each update and read), so a window costs
one number instead of a ring of buckets, and a read needs one value per key.

One class serves both sides, Metarank-style: `update` / `update_columns` is
the write path the service calls after committing events; `Replay` runs the
same update over an event log to rebuild the state as of a time (advancing
through the log for training queries with different cut times), which is how
the ranker's training features are computed; `item_features` /
`user_features` are the read path, used by `sieve.ranking.features`.

Cost: the write path is vectorised per batch: events are aggregated per key
with array operations (a few list lookups per event in Python), then each
kind of record is read and written once per batch. Item and user states are
fixed-width float64 records. With a shared cache (Redis) they are stored as
bytes under keys, one `get_many` (MGET) and one `set_many` (MSET) per kind
and batch, decoded with one `frombuffer`; with the per-process memory cache
they live beside it in process memory (`records.LocalRecords`: a row per key in one
matrix, no bytes, not subject to the cache's LRU bound nor evicting its
entries). A 5,000-event batch costs ~8 ms in memory (the first, JSON-per-key
version: ~300 ms).

Keys (under `prefix`, default `feat:`): `v2:item:<id>` (t, then each counted
type × window), `v2:user:<id>` (events, last event time), `v2:ucat:<id>`
(t and the decayed weight per category), `v2:upto` (the watermark: see `catch_up`). A
record of another width (the windows were reconfigured) reads as absent and
is overwritten by the next update.

Concurrency: in a service the counters are written by one path only,
`catch_up`, which folds the stored log in seq order under a lease in the
cache, so one process folds at a time and every event is folded once; with a
shared cache each batch commits its records and the watermark in one fenced
step (`Cache.commit_if`), so two folders can never both count a batch. The
windows decay, so a record is not a sum that processes could add to on their
own (`HINCRBYFLOAT`): one seq-ordered, fenced writer keeps it exact.

Size: the write path (fold), the read path (features) and the log replay of
training live in one class on purpose, so training and serving compute the
features with the same code; the record stores are in `sieve.realtime.records`.

Longer than most modules: update, fenced fold and read of the counters are one
consistency unit.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.realtime.records import CacheRecords, Records, StagedRecords, local_records
from sieve.settings import DEFAULT_SEMANTICS, EventSemantics
from sieve.storage.cache import Cache, MemoryCache

if TYPE_CHECKING:
    from sieve.storage.base import Store

log = logging.getLogger(__name__)

#: Window names and their lengths in seconds.
WINDOWS: dict[str, float] = {"1h": 3600.0, "1d": 86_400.0, "7d": 604_800.0}
#: Event types counted per item (others still update the user's state).
COUNTED_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
#: keys (after the prefix) of the watermark and of the lease of the one folding process
_WATERMARK = "v2:upto"
_LEASE = "v2:folding"
#: Beta prior of the smoothed click-through rate: (clicks + a) / (views + a + b).
CTR_PRIOR: tuple[float, float] = (1.0, 19.0)

_TYPE_INDEX = {t: k for k, t in enumerate(COUNTED_TYPES)}
_F8 = np.dtype("<f8")
_USER_WIDTH = 2  # events, last event time
_CAT_HEADER = struct.Struct("<dI")  # t, number of categories
#: Categories of an item id (called once per distinct item of a batch).
CategoriesOf = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class CounterEvent:
    """What the counters need of an event."""

    user_id: str
    item_id: str
    type: str
    timestamp: float
    categories: tuple[str, ...] = ()


def _factorize(values: Sequence[str] | NDArray[np.object_]) -> tuple[NDArray[np.int64], list[str]]:
    """Codes and distinct values (hash-based: no sort)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    return codes.astype(np.int64), list(uniques)


def _group_max(
    codes: NDArray[np.int64], values: NDArray[np.float64], n: int
) -> NDArray[np.float64]:
    out = np.full(n, -np.inf)
    np.maximum.at(out, codes, values)
    return out


class OnlineCounters:
    """Item and user counters over decayed windows; see the module docstring."""

    def __init__(
        self,
        cache: Cache,
        windows: dict[str, float] | None = None,
        prefix: str = "feat:",
        semantics: EventSemantics = DEFAULT_SEMANTICS,
    ) -> None:
        not_counted = sorted(set(semantics.click_types) - set(COUNTED_TYPES))
        if not_counted:
            raise ValueError(
                f"the online counters count only {list(COUNTED_TYPES)} per item; click types "
                f"{not_counted} (settings.semantics.click_types) cannot enter their CTR"
            )
        self.cache = cache
        self.semantics = semantics
        # a process-local cache gets process-local arrays (no bytes per key);
        # a shared one (Redis) holds the records themselves
        self._records: Records = (
            local_records(cache) if isinstance(cache, MemoryCache) else CacheRecords(cache)
        )
        self.windows = dict(windows or WINDOWS)
        self.prefix = prefix
        self._lock = threading.Lock()
        self._lengths = np.array(list(self.windows.values()), dtype=np.float64)
        # window length of each value column of an item record (type-major)
        self._col_lengths = np.tile(self._lengths, len(COUNTED_TYPES))
        self._item_width = 1 + len(COUNTED_TYPES) * len(self.windows)
        self._week = self.windows.get("7d", WINDOWS["7d"])

    # ------------------------------------------------------------ write path
    def update(self, events: Iterable[CounterEvent]) -> None:
        """Fold events into the counters (see `update_columns`)."""
        rows = list(events)
        if not rows:
            return
        cats = {e.item_id: e.categories for e in rows}
        self.update_columns(
            [e.user_id for e in rows],
            [e.item_id for e in rows],
            [e.type for e in rows],
            np.fromiter((e.timestamp for e in rows), np.float64, len(rows)),
            cats.__getitem__ if any(cats.values()) else None,
        )

    def update_columns(
        self,
        users: Sequence[str] | NDArray[np.object_],
        items: Sequence[str] | NDArray[np.object_],
        types: Sequence[str] | NDArray[np.object_],
        timestamps: Sequence[float] | NDArray[np.float64],
        categories: CategoriesOf | None = None,
        records: Records | None = None,
    ) -> None:
        """Fold a batch of events, given column-wise, into the counters
        (`records`: where they go, default the counters' own).

        Exact and order-free: a windowed value at a key's latest time T is the
        stored value aged to T plus Σ exp(−(T − t_e)/window) over the batch's
        events — what updating event by event in time order gives — at one
        read and one write per key, batched over the keys."""
        n = len(users)
        if n == 0:
            return
        ts = np.asarray(timestamps, dtype=np.float64)
        type_codes, type_names = _factorize(types)
        kind = np.array([_TYPE_INDEX.get(t, -1) for t in type_names], dtype=np.int64)[type_codes]
        item_arr = np.asarray(items, dtype=object)
        ucode, uids = _factorize(users)
        uend = _group_max(ucode, ts, len(uids))
        cat_adds = self._category_sums(item_arr, ts, ucode, uend, categories) if categories else {}
        into = self._records if records is None else records
        with self._lock:
            counted = kind >= 0
            if counted.any():
                self._merge_items(into, item_arr[counted], kind[counted], ts[counted])
            self._merge_users(into, uids, ucode, uend)
            if cat_adds:
                self._merge_categories(into, uids, uend, cat_adds)

    def _merge_items(
        self,
        records: Records,
        items: NDArray[np.object_],
        kind: NDArray[np.int64],
        ts: NDArray[np.float64],
    ) -> None:
        icode, ids = _factorize(items)
        n, n_cols, n_win = len(ids), len(self._col_lengths), len(self._lengths)
        end = _group_max(icode, ts, n)
        age = end[icode] - ts
        flat = icode * n_cols + kind * n_win
        adds = np.zeros(n * n_cols)
        for j, length in enumerate(self._lengths):
            adds += np.bincount(flat + j, weights=np.exp(-age / length), minlength=n * n_cols)
        keys = self._item_keys(ids)
        state, present = records.read(keys, self._item_width)
        t_old = np.where(present, state[:, 0], end)
        final = np.maximum(end, t_old)
        lengths = self._col_lengths[None, :]
        aged = np.exp(-(final - t_old)[:, None] / lengths)  # stored values, to `final`
        added = np.exp(-(final - end)[:, None] / lengths)  # the batch's sums, to `final`
        state[:, 1:] = state[:, 1:] * aged + adds.reshape(n, n_cols) * added
        state[:, 0] = final
        records.write(keys, state)

    def _merge_users(
        self,
        records: Records,
        uids: list[str],
        ucode: NDArray[np.int64],
        uend: NDArray[np.float64],
    ) -> None:
        keys = [self._user_key(u) for u in uids]
        state, present = records.read(keys, _USER_WIDTH)
        state[:, 0] += np.bincount(ucode, minlength=len(uids))
        state[:, 1] = np.maximum(np.where(present, state[:, 1], -np.inf), uend)
        records.write(keys, state)

    def _category_sums(
        self,
        items: NDArray[np.object_],
        ts: NDArray[np.float64],
        ucode: NDArray[np.int64],
        uend: NDArray[np.float64],
        categories: CategoriesOf,
    ) -> dict[int, dict[str, float]]:
        """Per user (code): Σ over their events of exp(−age/7d) / #categories
        of the item, per category, aged to the user's latest event."""
        icode, ids = _factorize(items)
        names: dict[str, int] = {}
        per_item = [[names.setdefault(c, len(names)) for c in categories(i)] for i in ids]
        counts = np.array([len(c) for c in per_item], dtype=np.int64)
        if not counts.any():
            return {}
        flat = np.fromiter((c for cs in per_item for c in cs), np.int64, int(counts.sum()))
        starts = np.cumsum(counts) - counts
        n_ev = counts[icode]
        event = np.repeat(np.arange(len(ts)), n_ev)
        offset = np.arange(len(event)) - np.repeat(np.cumsum(n_ev) - n_ev, n_ev)
        cat = flat[starts[icode[event]] + offset]
        user = ucode[event]
        weight = np.exp(-(uend[user] - ts[event]) / self._week) / n_ev[event]
        pair, inverse = np.unique(user * len(names) + cat, return_inverse=True)
        sums = np.bincount(inverse, weights=weight, minlength=len(pair))
        label = list(names)
        out: dict[int, dict[str, float]] = {}
        for p, v in zip(pair.tolist(), sums.tolist(), strict=True):
            out.setdefault(p // len(names), {})[label[p % len(names)]] = v
        return out

    def _merge_categories(
        self,
        records: Records,
        uids: list[str],
        uend: NDArray[np.float64],
        adds: dict[int, dict[str, float]],
    ) -> None:
        codes = list(adds)
        keys = [self._category_key(uids[c]) for c in codes]
        week = self._week
        out: dict[str, bytes] = {}
        for key, code, blob in zip(keys, codes, records.get_many(keys), strict=True):
            end = float(uend[code])
            new = adds[code]
            if blob is not None:
                t, merged = _unpack_categories(blob)
                final = max(end, t)
                if final > t:
                    old = math.exp(-(final - t) / week)
                    merged = {c: v * old for c, v in merged.items()}
                scale = math.exp(-(final - end) / week)
                for c, v in new.items():
                    merged[c] = merged.get(c, 0.0) + v * scale
                out[key] = _pack_categories(final, merged)
            else:
                out[key] = _pack_categories(end, new)
        records.set_many(out)

    # ------------------------------------------------------------- replaying
    @classmethod
    def replay(
        cls,
        events: pd.DataFrame,
        categories: CategoriesOf,
        *,
        until: float | None = None,
        cache: Cache | None = None,
        windows: dict[str, float] | None = None,
    ) -> OnlineCounters:
        """The counters as they were at `until` (default: after every event),
        rebuilt by the same update from an events frame (the schema's columns)."""
        counters = cls(cache or MemoryCache(), windows)
        return Replay(events, categories, counters).advance(math.inf if until is None else until)

    def watermark(self) -> int:
        """The seq of the last stored event folded into these counters (0: none).
        Kept beside the records, so a cache that lost its data (a Redis
        restart) also lost its watermark and is rebuilt from the log's start."""
        raw = self._records.get_many([self.prefix + _WATERMARK])[0]
        return int(raw) if raw is not None else 0

    def catch_up(
        self,
        store: Store,
        *,
        batch: int = 20_000,
        max_batches: int | None = None,
        lease_seconds: float = 30.0,
    ) -> int:
        """Fold the stored events after the watermark, `batch` at a time in seq
        order, advancing the watermark after each; returns the events folded.

        The one write path of the counters in a service: every event is folded
        once, whichever process appended it and whenever the cache was emptied
        (no event is counted twice and none is skipped). One process at a time
        folds, holding a lease in the cache (`lease_seconds`, renewed before
        each batch is counted); others return 0 at once. Item categories come
        from the store's catalog.

        With a shared cache a batch is a fenced transaction: its records and
        the new watermark are written in one atomic step, and only if the
        watermark is still the one the batch started from (`Cache.commit_if`),
        so even a fold whose lease ran out mid-batch (another process took
        over from the same watermark) cannot count a batch twice: the later
        commit is refused and its work dropped. With the per-process cache a
        crash loses the counters anyway (they are rebuilt from the log)."""
        lease = self.prefix + _LEASE
        mark = self.prefix + _WATERMARK
        token = os.urandom(8).hex().encode()
        if not self.cache.add(lease, token, lease_seconds):
            return 0
        shared = isinstance(self._records, CacheRecords)
        folded = 0
        try:
            done = 0
            while max_batches is None or done < max_batches:
                raw = self._records.get_many([mark])[0]
                frame = store.events_frame(since_seq=int(raw) if raw else 0, limit=batch)
                if frame.empty:
                    break
                if not self._renew(lease, token, lease_seconds):
                    log.warning("online counters: the fold's lease ran out; another process folds")
                    break
                items = sorted(set(frame["item_id"].astype(str)))
                found = store.item_categories(items)
                table = {i: tuple(found.get(i, ())) for i in items}
                staged = StagedRecords(self._records) if shared else None
                self.update_columns(
                    frame["user_id"].astype(str).to_numpy(object),
                    frame["item_id"].astype(str).to_numpy(object),
                    frame["type"].astype(str).to_numpy(object),
                    frame["timestamp"].to_numpy(np.float64),
                    functools.partial(_categories_in, table),
                    records=staged,
                )
                upto = str(int(frame["seq"].max())).encode()
                if staged is None:
                    self._records.set_many({mark: upto})
                elif not self.cache.commit_if({**staged.values, mark: upto}, mark, raw):
                    log.warning("online counters: another process folded these events first")
                    break
                folded += len(frame)
                done += 1
                if len(frame) < batch:
                    break  # the log's end: no second read to find it empty
        finally:
            if self.cache.get(lease) == token:
                self.cache.delete(lease)
        return folded

    def _renew(self, lease: str, token: bytes, seconds: float) -> bool:
        """Extend this fold's lease; False when it is no longer held (it ran
        out, and another process may hold it now). A get then a set: the
        window between them is what is left of a race, not a batch's length."""
        if self.cache.get(lease) != token:
            return False
        self.cache.set(lease, token, seconds)
        return True

    # ------------------------------------------------------------- read path
    def clicks(self, counts: Mapping[str, NDArray[np.float64]], window: str) -> NDArray[np.float64]:
        """The click count of `window` from per-type counts (`<type>@<window>`):
        the sum over `semantics.click_types`, the definition every CTR shares."""
        total = np.zeros_like(counts[f"view@{window}"])
        for t in self.semantics.click_types:
            total = total + counts[f"{t}@{window}"]
        return total

    def item_features(
        self, item_ids: Sequence[str], now: float | NDArray[np.float64]
    ) -> dict[str, NDArray[np.float64]]:
        """Per item: `<type>@<window>` counts, `clicks@<window>` (events of the
        semantics' click types), `ctr@<window>` (smoothed clicks / views, a
        click implying a view) and `recency_hours` (since the item's last
        counted event) as of `now` (one time, or one per item); zeros, the prior
        CTR and inf for unseen items."""
        keys = self._item_keys(item_ids)
        return self._item_values(*self._records.read(keys, self._item_width), now)

    def user_features(self, user_id: str, now: float) -> dict[str, float]:
        """The user's event count, hours since the last event (inf if none)
        and category affinities over 7 days (`affinity:<category>`, shares
        summing to 1; decay common to all categories cancels in a share)."""
        _, per_user = self.block_features([], now, [(user_id, now)])
        return per_user[0]

    def block_features(
        self,
        item_ids: Sequence[str],
        now: float | NDArray[np.float64],
        users: Sequence[tuple[str, float]],
        rows: NDArray[np.int64] | None = None,
    ) -> tuple[dict[str, NDArray[np.float64]], list[dict[str, float]]]:
        """`item_features(item_ids, now)` and `user_features(user, t)` of each
        (user, t) of `users`, read in one round trip to the cache (a block of
        live requests reads its candidates and its users at once). With
        `rows`, the item features are those of `item_ids[rows]` (each as of
        its `now`): a block whose requests share candidates reads each item's
        record once."""
        keys = self._item_keys(item_ids)
        user_keys = [self._user_key(user) for user, _ in users]
        (items, (state, present)), cats = self._records.read_all(
            [(keys, self._item_width), (user_keys, _USER_WIDTH)],
            [self._category_key(user) for user, _ in users],
        )
        per_user = [
            self._user_values(state[j], bool(present[j]), cats[j], t)
            for j, (_, t) in enumerate(users)
        ]
        state, present = items if rows is None else (items[0][rows], items[1][rows])
        return self._item_values(state, present, now), per_user

    def _item_values(
        self,
        state: NDArray[np.float64],
        present: NDArray[np.bool_],
        now: float | NDArray[np.float64],
    ) -> dict[str, NDArray[np.float64]]:
        """`item_features` from the items' records."""
        dt = np.where(present, np.maximum(0.0, now - state[:, 0]), 0.0)
        values = state[:, 1:] * np.exp(-dt[:, None] / self._col_lengths[None, :])
        n_win = len(self.windows)
        out: dict[str, NDArray[np.float64]] = {}
        for k, t in enumerate(COUNTED_TYPES):
            for j, w in enumerate(self.windows):
                out[f"{t}@{w}"] = values[:, k * n_win + j]
        a, b = CTR_PRIOR
        for w in self.windows:
            clicks = self.clicks(out, w)
            views = out[f"view@{w}"] + clicks
            out[f"clicks@{w}"] = clicks
            out[f"ctr@{w}"] = (clicks + a) / (views + a + b)
        out["recency_hours"] = np.where(present, dt / 3600.0, np.inf)
        return out

    @staticmethod
    def _user_values(
        record: NDArray[np.float64], present: bool, cats: bytes | None, now: float
    ) -> dict[str, float]:
        """`user_features` from the user's record and category record."""
        if not present:
            return {"events": 0.0, "recency_hours": math.inf}
        events, last = record.tolist()
        out = {"events": events, "recency_hours": max(0.0, now - last) / 3600.0}
        if cats is not None:
            weights = _unpack_categories(cats)[1]
            total = sum(weights.values())
            if total > 0:
                out.update({f"affinity:{c}": v / total for c, v in weights.items()})
        return out

    # ----------------------------------------------------------- persistence
    def export(self, item_ids: Iterable[str], user_ids: Iterable[str]) -> dict[str, bytes]:
        """The stored records of these items and users (key → bytes), to be
        put back by `restore` (a saved model keeps its training-time counters)."""
        users = [str(u) for u in user_ids]
        out: dict[str, bytes] = {}
        for keys, width in (
            ([self._item_key(str(i)) for i in item_ids], self._item_width),
            ([self._user_key(u) for u in users], _USER_WIDTH),
        ):
            state, present = self._records.read(keys, width)
            out.update(
                (k, state[r].astype(_F8).tobytes()) for r, k in enumerate(keys) if present[r]
            )
        keys = [self._category_key(u) for u in users]
        out.update((k, b) for k, b in zip(keys, self._records.get_many(keys), strict=True) if b)
        return out

    def restore(self, records: Mapping[str, bytes]) -> None:
        """Write records from `export` (same prefix) back."""
        for kind, width in (("item", self._item_width), ("user", _USER_WIDTH)):
            head = f"{self.prefix}v2:{kind}:"
            keys = [k for k, b in records.items() if k.startswith(head) and len(b) == width * 8]
            if keys:
                joined = b"".join(records[k] for k in keys)
                self._records.write(keys, np.frombuffer(joined, _F8).reshape(len(keys), width))
        head = f"{self.prefix}v2:ucat:"
        self._records.set_many({k: b for k, b in records.items() if k.startswith(head)})

    # -------------------------------------------------------------- helpers
    def _item_key(self, item_id: str) -> str:
        return f"{self.prefix}v2:item:{item_id}"

    def _item_keys(self, item_ids: Iterable[str]) -> list[str]:
        """`_item_key` of each id (one comprehension: a live answer reads
        about two hundred items' records)."""
        head = f"{self.prefix}v2:item:"
        return [f"{head}{i}" for i in item_ids]

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}v2:user:{user_id}"

    def _category_key(self, user_id: str) -> str:
        return f"{self.prefix}v2:ucat:{user_id}"


def _pack_categories(t: float, weights: Mapping[str, float]) -> bytes:
    """A user's category record: t, the count, the weights (float64) and the
    names joined by U+001F (a name's own U+001F becomes a space)."""
    names = "\x1f".join(c.replace("\x1f", " ") for c in weights).encode()
    values = np.fromiter(weights.values(), _F8, len(weights)).tobytes()
    return _CAT_HEADER.pack(t, len(weights)) + values + names


def _unpack_categories(blob: bytes) -> tuple[float, dict[str, float]]:
    t, k = _CAT_HEADER.unpack_from(blob)
    start = _CAT_HEADER.size
    values = np.frombuffer(blob, _F8, count=k, offset=start).tolist()
    names = blob[start + 8 * k :].decode().split("\x1f") if k else []
    return float(t), dict(zip(names, values, strict=True))


class Replay:
    """An event log replayed into counters in time order: `advance(t)` folds
    every event up to t not folded yet, so training queries visited by
    increasing cut time each read the counters as they were at their cut —
    what the live path held at that moment. Events without a timestamp are
    left out; categories are looked up once per item."""

    def __init__(
        self,
        events: pd.DataFrame,
        categories: CategoriesOf,
        counters: OnlineCounters | None = None,
    ) -> None:
        ts = events["timestamp"].to_numpy(np.float64)
        order = np.argsort(ts, kind="stable")
        order = order[np.isfinite(ts[order])]
        self._ts = ts[order]
        self._users = events["user_id"].astype(str).to_numpy(object)[order]
        self._items = events["item_id"].astype(str).to_numpy(object)[order]
        self._types = events["type"].astype(str).to_numpy(object)[order]
        self._pos = 0
        memo: dict[str, Sequence[str]] = {}

        def cached(item_id: str) -> Sequence[str]:
            if item_id not in memo:
                memo[item_id] = tuple(categories(item_id))
            return memo[item_id]

        self._categories = cached
        self.counters = counters or OnlineCounters(MemoryCache())

    def advance(self, until: float) -> OnlineCounters:
        """The counters with every event at or before `until` folded in."""
        stop = int(np.searchsorted(self._ts, until, side="right"))
        if stop > self._pos:
            part = slice(self._pos, stop)
            self.counters.update_columns(
                self._users[part],
                self._items[part],
                self._types[part],
                self._ts[part],
                self._categories,
            )
            self._pos = stop
        return self.counters


def _categories_in(table: Mapping[str, tuple[str, ...]], item_id: str) -> list[str]:
    return list(table.get(item_id, ()))
