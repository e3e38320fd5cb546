"""The one place a funnel's `Query` is built from a user's events.

Every caller asks this module: live requests (the service reads the user's
stored events), the ranker's training queries (a snapshot
user's events up to the query's cut time), logged-impression training (the
user's events before the impression), offline evaluation of the funnel and
the worker's holdout comparison. So what the ranker learns from and what it
is asked at serving time cannot drift apart: same history window, same
weights, same session.

A user's events are given most recent first as (item id, event type) pairs:
- the history is the first `history_limit` of them, summed per item by the
  type weights (types of weight ≤ 0 do not count), items in index order;
- the session (`Query.recent`) is the first `recent_limit` of the same
  events. A cache of recent events is no substitute: it lacks imported
  history and what the cache lost, so a live query built from it would
  differ from training's (tests/serve/test_query_parity.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.types import Context, Query

#: (item id, event type), most recent first.
UserEvent = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class QueryConfig(Config):
    """The shape of a request, the same in training and serving (saved with the model).

    - `history_limit`: a user's most recent events that form their history;
    - `recent_limit`: most recent events that form their session.
    """

    history_limit: int = 500
    recent_limit: int = 50

    def validate(self) -> None:
        if not 1 <= self.history_limit <= 100_000:
            raise ConfigError("QueryConfig.history_limit must be in [1, 100000]")
        if not 1 <= self.recent_limit <= 1000:
            raise ConfigError("QueryConfig.recent_limit must be in [1, 1000]")


def build_query(
    events: Sequence[UserEvent],
    *,
    item_index: Callable[[str], int],
    weights: Mapping[str, float],
    shape: QueryConfig,
    user_id: str | None,
    user: int,
    n: int = 10,
    context: Context | None = None,
    categories: tuple[str, ...] = (),
    exclude: Sequence[str] = (),
    now: float | None = None,
    request_id: str = "",
    user_attributes: Mapping[str, Any] | None = None,
    item_fields: Mapping[int, Mapping[str, float]] | None = None,
) -> Query:
    """The funnel request of a user from their events (see the module doc).

    `item_index` maps an item id to the model's index (-1: unknown, skipped);
    `user` is the user's index in the model (-1: new, folded in);
    `user_attributes`: the user's stored attributes (training reads them
    from the snapshot's users, serving from the store); `item_fields`: a
    caller's per-item numbers by item index (`POST /rank`)."""
    acc: dict[int, float] = {}
    for item_id, kind in events[: shape.history_limit]:
        weight = float(weights.get(kind, 0.0))
        if weight <= 0:
            continue
        index = item_index(item_id)
        if index < 0:
            continue
        acc[index] = acc.get(index, 0.0) + weight
    history = np.fromiter(sorted(acc), dtype=np.int64, count=len(acc))
    history_weights = np.array([acc[int(i)] for i in history], dtype=np.float32)
    recent: list[int] = []
    kinds: list[str] = []
    for item_id, kind in events[: shape.recent_limit]:
        index = item_index(item_id)
        if index >= 0:
            recent.append(index)
            kinds.append(kind)
    excluded = frozenset(k for k in (item_index(i) for i in exclude) if k >= 0)
    return Query(
        user_id=user_id,
        user=user,
        history=history,
        history_weights=history_weights,
        recent=tuple(recent),
        recent_types=tuple(kinds),
        n=n,
        context=context if context is not None else Context(),
        categories=categories,
        exclude=excluded,
        request_id=request_id,
        now=now,
        user_attributes=dict(user_attributes or {}),
        item_fields=dict(item_fields or {}),
    )


class UserLog:
    """Each user's events of an events frame (user_id, item_id, type,
    timestamp, optional seq) in time order, to give the events a user had
    made by a given time — what the service would have read then."""

    def __init__(self, events: pd.DataFrame) -> None:
        users = events["user_id"].astype(str).to_numpy(object)
        ts = events["timestamp"].to_numpy(np.float64)
        seq = (
            events["seq"].to_numpy(np.float64)
            if "seq" in events
            else np.arange(len(events), dtype=np.float64)
        )
        codes, uniques = pd.factorize(users)
        order = np.lexsort((seq, np.nan_to_num(ts, nan=np.inf), codes))
        self._items: NDArray[np.object_] = events["item_id"].astype(str).to_numpy(object)[order]
        self._types: NDArray[np.object_] = events["type"].astype(str).to_numpy(object)[order]
        self._ts = ts[order]
        counts = np.bincount(codes, minlength=len(uniques)) if len(codes) else np.zeros(0, int)
        self._ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._lookup = {str(u): k for k, u in enumerate(uniques)}

    def __contains__(self, user_id: object) -> bool:
        return str(user_id) in self._lookup

    def events(
        self, user_id: str, at: float | None = None, *, before: bool = False
    ) -> list[UserEvent]:
        """The user's events up to time `at` (all when None; strictly earlier
        with `before`), most recent first."""
        u = self._lookup.get(str(user_id), -1)
        if u < 0:
            return []
        lo, hi = int(self._ptr[u]), int(self._ptr[u + 1])
        stop = hi
        if at is not None:
            side: Literal["left", "right"] = "left" if before else "right"
            stop = lo + int(np.searchsorted(self._ts[lo:hi], at, side=side))
        items = self._items[lo:stop][::-1]
        types = self._types[lo:stop][::-1]
        return list(zip(items.tolist(), types.tolist(), strict=True))

    def last_time(self, user_id: str) -> float | None:
        """The time of the user's latest timed event (None: none)."""
        u = self._lookup.get(str(user_id), -1)
        if u < 0:
            return None
        ts = self._ts[int(self._ptr[u]) : int(self._ptr[u + 1])]
        ts = ts[np.isfinite(ts)]
        return float(ts.max()) if len(ts) else None


__all__ = ["QueryConfig", "UserEvent", "UserLog", "build_query"]
