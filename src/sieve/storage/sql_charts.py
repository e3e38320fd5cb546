"""`SQLCharts`: per-item aggregates for the leaderboards, grouped in the
database (one row per item comes back, never the events)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from sieve.storage.sql_base import SQLBase
from sieve.storage.tables import events_table, items_table


class SQLCharts(SQLBase):
    """Leaderboard reads; mixed into `SQLStore`."""

    def item_event_stats(
        self, types: Sequence[str], since: float | None, limit: int | None = None
    ) -> pd.DataFrame:
        """Per available catalog item with events of `types` since `since`
        (all time: None): columns item_id, events, value_count, value_sum;
        most events first (ties by id), the first `limit` (all: None)."""
        e, i = events_table, items_table
        events = func.count().label("events")
        query = (
            select(
                e.c.item_id,
                events,
                func.count(e.c.value).label("value_count"),
                func.coalesce(func.sum(e.c.value), 0.0).label("value_sum"),
            )
            .join(i, i.c.id == e.c.item_id)
            .where(e.c.type.in_(list(types) or [""]), i.c.available.is_(True))
            .group_by(e.c.item_id)
            .order_by(events.desc(), e.c.item_id)
        )
        if since is not None:
            query = query.where(e.c.timestamp_us >= round(since * 1e6))
        if limit is not None:
            query = query.limit(int(limit))
        with self._read("item_event_stats") as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(
            {
                "item_id": pd.Series([str(r[0]) for r in rows], dtype=object),
                "events": np.array([int(r[1]) for r in rows], dtype=np.int64),
                "value_count": np.array([int(r[2]) for r in rows], dtype=np.int64),
                "value_sum": np.array([float(r[3]) for r in rows], dtype=np.float64),
            }
        )

    def newest_items(self, limit: int, category: str | None = None) -> list[tuple[str, float]]:
        """(item id, created_at) of the newest available items (of `category`),
        newest first; items without a creation time come last, by id."""
        i = items_table
        query = (
            select(i.c.id, i.c.created_at_us, i.c.categories)
            .where(i.c.available.is_(True))
            .order_by(i.c.created_at_us.desc().nulls_last(), i.c.id)
        )
        out: list[tuple[str, float]] = []
        with self._read("newest_items", transaction=True) as conn:
            # read in order until `limit` match: a category stops early
            for row in conn.execution_options(yield_per=500).execute(query):
                if category is None or category in (row[2] or []):
                    created = np.nan if row[1] is None else row[1] / 1e6
                    out.append((str(row[0]), float(created)))
                    if len(out) >= limit:
                        break
        return out


__all__ = ["SQLCharts"]
