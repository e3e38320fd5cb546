"""Leaderboards: named non-personalised lists, computed periodically and shared.

A board (`sieve.settings.Leaderboard`) is computed from per-item aggregates
grouped in the database (`Store.item_event_stats`, `Store.newest_items`:
one row per item comes back, never the events) and kept in the cache as
JSON with its computation time. A read serves the cached board while it is
younger than `leaderboard_refresh_seconds`; an older one is recomputed by
the one process that wins a short claim (`Cache.add`), while the others
serve the previous board. So every server process serves the same list,
and the store sees one computation per board and interval, however many
requests arrive. Without a readable cache a board is computed per request
(still one grouped query).

Top rated: the Bayesian average (prior · global mean + Σ ratings) /
(prior + count), the global mean taken over the same ratings, so an item
with two perfect ratings does not outrank one with two hundred good ones.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sieve.settings import Leaderboard, Settings
from sieve.storage import Cache, CacheError, Store

log = logging.getLogger("sieve.serve")

_DAY = 86_400.0


class UnknownLeaderboard(KeyError):
    """No board of that name; the message lists the configured ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def _key(name: str) -> str:
    return f"leaderboard:v1:{name}"


def compute_board(store: Store, board: Leaderboard, now: float) -> list[dict[str, Any]]:
    """The board's items, best first: id, score (and count for event boards)."""
    since = None if board.days == 0 else now - board.days * _DAY
    if board.kind == "newest":
        rows = store.newest_items(board.n, board.category)
        return [{"id": i, "score": created} for i, created in rows]
    types = ("rating",) if board.kind == "top_rated" else board.event_types
    # a category is checked per item: read every item's row then (one per item)
    stats = store.item_event_stats(types, since, None if board.category else board.n * 4)
    if board.category is not None and len(stats):
        cats = store.item_categories(stats["item_id"].tolist())
        keep = [board.category in cats.get(i, []) for i in stats["item_id"]]
        stats = stats.loc[keep]
    if board.kind == "most_bought":
        stats = stats.assign(score=stats["events"].astype(float))
    else:
        stats = stats.loc[stats["value_count"] > 0]
        total, count = float(stats["value_sum"].sum()), float(stats["value_count"].sum())
        mean = total / count if count else 0.0
        prior = board.prior_ratings
        stats = stats.assign(
            score=(prior * mean + stats["value_sum"]) / (prior + stats["value_count"])
        )
        stats = stats.rename(columns={"value_count": "ratings"})
    stats = stats.sort_values(["score", "item_id"], ascending=[False, True], kind="stable")
    count_col = "events" if board.kind == "most_bought" else "ratings"
    return [
        {"id": str(r.item_id), "score": float(r.score), "count": int(getattr(r, count_col))}
        for r in stats.head(board.n).itertuples()
    ]


class Leaderboards:
    """The configured boards of a service (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: Cache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.boards = dict(settings.leaderboards)
        self.refresh = settings.leaderboard_refresh_seconds
        self.store = store
        self.cache = cache
        self.clock = clock

    def board(self, name: str) -> Leaderboard:
        board = self.boards.get(name)
        if board is None:
            raise UnknownLeaderboard(
                f"no leaderboard named {name!r}; configured: {sorted(self.boards)} "
                "(settings: [leaderboards.NAME])"
            )
        return board

    def get(self, name: str) -> dict[str, Any]:
        """{name, kind, computed_at, items} of board `name`: the cached one
        while fresh, else recomputed (by one process at a time)."""
        board = self.board(name)
        now = self.clock()
        cached: Any = None
        try:
            cached = self.cache.get_json(_key(name))
        except CacheError:
            log.warning("cache unavailable: leaderboard %r computed here", name, exc_info=True)
            return self._compute(name, board, now, store_it=False)
        fresh = (
            isinstance(cached, dict) and now - float(cached.get("computed_at", 0)) < self.refresh
        )
        if fresh:
            return dict(cached)
        try:
            mine = self.cache.add(f"{_key(name)}:claim", b"1", ttl=max(self.refresh / 2, 1.0))
        except CacheError:
            mine = True
        if not mine and isinstance(cached, dict):
            return dict(cached)  # another process is refreshing it
        try:
            return self._compute(name, board, now, store_it=True)
        finally:
            if mine:  # the claim guards the computation only; freshness is computed_at
                with contextlib.suppress(CacheError):  # else it expires
                    self.cache.delete(f"{_key(name)}:claim")

    def _compute(self, name: str, board: Leaderboard, now: float, store_it: bool) -> dict[str, Any]:
        out = {
            "name": name,
            "kind": board.kind,
            "category": board.category,
            "computed_at": now,
            "items": compute_board(self.store, board, now),
        }
        if store_it:
            try:
                self.cache.set_json(_key(name), out, ttl=max(self.refresh * 10, 60.0))
            except CacheError:
                log.warning("cache unavailable: leaderboard %r not shared", name, exc_info=True)
        return out


__all__ = ["Leaderboards", "UnknownLeaderboard", "compute_board"]
