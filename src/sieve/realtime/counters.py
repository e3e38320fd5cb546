"""Event-driven counters with time windows, in the Cache (memory or Redis).

Every event updates, for its item, a count per event type over each window
(1 hour, 1 day, 7 days) and, for its user, the time of the last event, an
event count and a category affinity. Windows are exponentially decayed
counts (value × exp(−Δt / window) at each update and read), so a window costs
one number instead of a ring of buckets, and a read needs one value per key.

One class serves both sides, Metarank-style: `update` is the write path the
service calls after committing events; `replay` runs the same `update` over an
event log to rebuild the state as of a time, which is how training features
are computed; `item_features` / `user_features` are the read path.

Concurrency: a key is read, decayed and written back under a process lock;
two processes updating the same key through one Redis can lose an increment
(last writer wins). Counters are features, not accounting: that is accepted.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.storage.cache import Cache, MemoryCache

#: Window names and their lengths in seconds.
WINDOWS: dict[str, float] = {"1h": 3600.0, "1d": 86_400.0, "7d": 604_800.0}
#: Event types counted per item (others still update the user's state).
COUNTED_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
#: Beta prior of the smoothed click-through rate: (clicks + a) / (views + a + b).
CTR_PRIOR: tuple[float, float] = (1.0, 19.0)


@dataclass(frozen=True)
class CounterEvent:
    """What the counters need of an event."""

    user_id: str
    item_id: str
    type: str
    timestamp: float
    categories: tuple[str, ...] = ()


def _decay(state: dict[str, float], now: float, windows: dict[str, float]) -> None:
    """Age every windowed value of `state` from its time `t` to `now`, in place."""
    dt = max(0.0, now - state.get("t", now))
    if dt == 0.0:
        return
    for key, value in list(state.items()):
        window = key.rsplit("@", 1)[-1] if "@" in key else None
        if window in windows:
            state[key] = value * math.exp(-dt / windows[window])
    state["t"] = max(state.get("t", now), now)


class OnlineCounters:
    """Item and user counters over decayed windows; see the module docstring."""

    def __init__(
        self,
        cache: Cache,
        windows: dict[str, float] | None = None,
        prefix: str = "feat:",
    ) -> None:
        self.cache = cache
        self.windows = dict(windows or WINDOWS)
        self.prefix = prefix
        self._lock = threading.Lock()

    # ------------------------------------------------------------ write path
    def update(self, events: Iterable[CounterEvent]) -> None:
        """Fold events into the counters.

        Vectorised per batch: a windowed value at the batch's last time T is
        the stored value decayed to T plus Σ exp(−(T − t_e)/window) over the
        batch's events — exactly what updating event by event in time order
        gives, at one read and one write per item and per user."""
        rows = list(events)
        if not rows:
            return
        frame = pd.DataFrame(
            {
                "user": [e.user_id for e in rows],
                "item": [e.item_id for e in rows],
                "type": [e.type for e in rows],
                "ts": np.array([e.timestamp for e in rows], dtype=np.float64),
            }
        )
        week = self.windows.get("7d", WINDOWS["7d"])
        item_add: dict[str, tuple[float, dict[str, float]]] = {}
        counted = frame[frame["type"].isin(COUNTED_TYPES)].copy()
        if len(counted):
            counted["end"] = counted.groupby("item")["ts"].transform("max")
            for w, length in self.windows.items():
                counted[w] = np.exp(-(counted["end"] - counted["ts"]) / length)
            sums = counted.groupby(["item", "type", "end"], sort=False)[list(self.windows)].sum()
            for (item_id, kind, end), values in zip(sums.index, sums.to_numpy(), strict=True):
                _, adds = item_add.setdefault(str(item_id), (float(end), {}))
                for w, v in zip(self.windows, values, strict=True):
                    adds[f"{kind}@{w}"] = float(v)
        users = frame.groupby("user", sort=False)["ts"].agg(["max", "size"])
        cat_rows: list[tuple[str, str, float]] = []
        user_end = users["max"].to_dict()
        for e in rows:
            for c in e.categories:
                age = user_end[e.user_id] - e.timestamp
                cat_rows.append((e.user_id, c, math.exp(-age / week) / len(e.categories)))
        cat_add: dict[str, dict[str, float]] = {}
        if cat_rows:
            cats = pd.DataFrame(cat_rows, columns=["user", "cat", "w"])
            for (user_id, cat), v in cats.groupby(["user", "cat"], sort=False)["w"].sum().items():
                cat_add.setdefault(str(user_id), {})[f"cat:{cat}@7d"] = float(v)
        with self._lock:
            for item_id, (end, adds) in item_add.items():
                self._merge(self._item_key(item_id), end, adds, {})
            for user_id, (end, size) in zip(users.index, users.to_numpy(), strict=True):
                self._merge(
                    self._user_key(str(user_id)),
                    float(end),
                    cat_add.get(str(user_id), {}),
                    {"n": float(size), "last": float(end)},
                )

    def _merge(
        self, key: str, end: float, adds: dict[str, float], counts: dict[str, float]
    ) -> None:
        """Decay a stored state to the later of its time and `end`, add the
        batch's windowed sums (aged from `end` to that time) and counts."""
        state = self._load(key)
        final = max(end, state.get("t", -math.inf))
        _decay(state, final, self.windows)
        for k, v in adds.items():
            length = self.windows.get(k.rsplit("@", 1)[-1], WINDOWS["7d"])
            state[k] = state.get(k, 0.0) + v * math.exp(-(final - end) / length)
        if "n" in counts:
            state["n"] = state.get("n", 0.0) + counts["n"]
            state["last"] = max(state.get("last", -math.inf), counts["last"])
        state["t"] = final
        self.cache.set(key, json.dumps(state).encode())

    @classmethod
    def replay(
        cls,
        events: pd.DataFrame,
        categories: Callable[[str], Sequence[str]],
        *,
        until: float | None = None,
        cache: Cache | None = None,
        windows: dict[str, float] | None = None,
    ) -> OnlineCounters:
        """The counters as they were at `until` (default: after every event),
        rebuilt by the same `update` from an events frame (the schema's columns)."""
        counters = cls(cache or MemoryCache(max_entries=10_000_000), windows)
        frame = events.sort_values("timestamp", kind="stable")
        if until is not None:
            frame = frame[frame["timestamp"] <= until]
        counters.update(
            CounterEvent(str(u), str(i), str(t), float(ts), tuple(categories(str(i))))
            for u, i, t, ts in zip(
                frame["user_id"], frame["item_id"], frame["type"], frame["timestamp"], strict=True
            )
        )
        return counters

    # ------------------------------------------------------------- read path
    def item_features(self, item_ids: Sequence[str], now: float) -> dict[str, NDArray[np.float64]]:
        """Per item: `<type>@<window>` counts and `ctr@<window>` (smoothed
        clicks / views) as of `now`; zeros (and the prior CTR) for unseen items."""
        raw = self.cache.get_many([self._item_key(i) for i in item_ids]) if item_ids else []
        a, b = CTR_PRIOR
        out: dict[str, NDArray[np.float64]] = {
            f"{t}@{w}": np.zeros(len(item_ids)) for t in COUNTED_TYPES for w in self.windows
        }
        for r, blob in enumerate(raw):
            if blob is None:
                continue
            state = json.loads(blob)
            _decay(state, now, self.windows)
            for key in out:
                out[key][r] = state.get(key, 0.0)
        for w in self.windows:
            clicks = out[f"click@{w}"] + out[f"cart@{w}"] + out[f"purchase@{w}"]
            views = np.maximum(out[f"view@{w}"] + clicks, clicks)
            out[f"ctr@{w}"] = (clicks + a) / (views + a + b)
        return out

    def user_features(self, user_id: str, now: float) -> dict[str, float]:
        """The user's event count, hours since the last event (inf if none)
        and category affinities over 7 days (shares summing to 1)."""
        blob = self.cache.get(self._user_key(user_id))
        if blob is None:
            return {"events": 0.0, "recency_hours": math.inf}
        state = json.loads(blob)
        _decay(state, now, self.windows)
        cats = {k[4:].rsplit("@", 1)[0]: v for k, v in state.items() if k.startswith("cat:")}
        total = sum(cats.values()) or 1.0
        out = {
            "events": state.get("n", 0.0),
            "recency_hours": max(0.0, now - state.get("last", now)) / 3600.0,
        }
        out.update({f"affinity:{c}": v / total for c, v in cats.items()})
        return out

    # -------------------------------------------------------------- helpers
    def _item_key(self, item_id: str) -> str:
        return f"{self.prefix}item:{item_id}"

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def _load(self, key: str) -> dict[str, float]:
        blob = self.cache.get(key)
        return {} if blob is None else dict(json.loads(blob))
