"""`SQLImpressions`: the impression log of `SQLStore` (served lists, their slots and
experiment arms) and the attribution of events to the request that showed the item."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import select, text

from sieve.data.records import Impression, ImpressionArm, ImpressionItem
from sieve.storage.sql_base import SQLBase
from sieve.storage.tables import (
    _CHUNK,
    _arrays,
    _chunks,
    _from_us,
    _sqlite_insert_new,
    _to_us,
    impression_arms_table,
    impression_items_table,
    impressions_table,
)

#: PostgreSQL: each click's latest impression of its item to its user within
#: its window, by one index probe each (`ix_impression_items_attr`: user,
#: item, time). A filter on the batch's users, items and overall time range
#: let the planner pick the time index instead once the log grew faster than
#: its statistics, and scan every slot served in the window: under load the
#: attribution then took 100+ ms a batch and grew with the traffic.
_PG_LATEST_SHOWN = text(
    """
    SELECT c.user_id, c.item_id, s.timestamp_us, s.request_id
    FROM unnest(
        CAST(:user AS text[]), CAST(:item AS text[]), CAST(:lo AS int8[]), CAST(:hi AS int8[])
    ) AS c(user_id, item_id, lo, hi)
    CROSS JOIN LATERAL (
        SELECT t.timestamp_us, t.request_id
        FROM impression_items AS t
        WHERE t.user_id = c.user_id AND t.item_id = c.item_id
          AND t.timestamp_us BETWEEN c.lo AND c.hi
        ORDER BY t.timestamp_us DESC, t.request_id COLLATE "C" DESC
        LIMIT 1
    ) AS s
    """
)


def _latest_shown(
    clicks: Sequence[tuple[str, str, datetime | None]],
    at_us: Sequence[int],
    window_us: int,
    found: dict[tuple[str, str], list[tuple[int, str]]],
) -> list[str | None]:
    """Each click's latest (time, request) of `found` within its window."""
    out: list[str | None] = []
    for (user, item, _), when in zip(clicks, at_us, strict=True):
        shown = [
            (ts, rid) for ts, rid in found.get((user, item), []) if when - window_us <= ts <= when
        ]
        out.append(max(shown)[1] if shown else None)
    return out


#: Columns of `impressions_frame`: one row per shown slot.
IMPRESSION_COLUMNS = [
    "request_id",
    "user_id",
    "item_id",
    "position",
    "score",
    "propensity",
    "sources",
    "model_version",
    "experiment",
    "arm",
    "timestamp",
]


#: PostgreSQL's bulk writes of served lists: each column travels as one array
#: and one set-based statement inserts the rows (psycopg's row-by-row
#: `executemany` was most of the impression writer's CPU: ~0.4 ms a list).
_PG_LOG_HEADS = text(
    """
    INSERT INTO impressions
        (request_id, user_id, timestamp_us, model_version, experiment, arm, context)
    SELECT request_id, user_id, timestamp_us, model_version, experiment, arm,
        CAST(context AS jsonb)
    FROM unnest(
        CAST(:request_id AS text[]), CAST(:user_id AS text[]), CAST(:timestamp_us AS int8[]),
        CAST(:model_version AS text[]), CAST(:experiment AS text[]), CAST(:arm AS text[]),
        CAST(:context AS text[])
    ) AS batch(request_id, user_id, timestamp_us, model_version, experiment, arm, context)
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """
)
_PG_LOG_ITEMS = text(
    """
    INSERT INTO impression_items
        (request_id, position, user_id, item_id, score, propensity, sources, timestamp_us)
    SELECT request_id, position, user_id, item_id, score, propensity,
        CAST(sources AS jsonb), timestamp_us
    FROM unnest(
        CAST(:request_id AS text[]), CAST(:position AS int4[]), CAST(:user_id AS text[]),
        CAST(:item_id AS text[]), CAST(:score AS float8[]), CAST(:propensity AS float8[]),
        CAST(:sources AS text[]), CAST(:timestamp_us AS int8[])
    ) AS batch(request_id, position, user_id, item_id, score, propensity, sources, timestamp_us)
    """
)
_ITEM_COLUMNS = (
    "request_id",
    "position",
    "user_id",
    "item_id",
    "score",
    "propensity",
    "sources",
    "timestamp_us",
)
#: SQLite's: the driver's own `executemany` of plain tuples (SQLAlchemy's
#: per-row parameter processing was most of the cost); the JSON encoded here.
_SQLITE_LOG_ITEMS = (
    f"INSERT INTO impression_items ({', '.join(_ITEM_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_ITEM_COLUMNS))})"
)
_HEAD_COLUMNS = (
    "request_id",
    "user_id",
    "timestamp_us",
    "model_version",
    "experiment",
    "arm",
    "context",
)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class SQLImpressions(SQLBase):
    """Logging and reading served lists; mixed into `SQLStore`."""

    # ----------------------------------------------------------- impressions
    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        """Store served lists (idempotent by request id); returns how many were new."""
        now_us = _to_us(datetime.now(UTC))
        heads: dict[str, dict[str, Any]] = {}
        slots: list[dict[str, Any]] = []
        arms: list[dict[str, Any]] = []
        for imp in impressions:
            if imp.request_id in heads:
                continue
            ts = now_us if imp.timestamp is None else _to_us(imp.timestamp)
            heads[imp.request_id] = {
                "request_id": imp.request_id,
                "user_id": imp.user_id,
                "timestamp_us": ts,
                "model_version": imp.model_version,
                "experiment": imp.experiment,
                "arm": imp.arm,
                "context": dict(imp.context),
            }
            slots.extend(
                {
                    "request_id": imp.request_id,
                    "position": it.position,
                    "user_id": imp.user_id,
                    "item_id": it.item_id,
                    "score": float(it.score),
                    "propensity": float(it.propensity),
                    "sources": _json(list(it.sources)),
                    "timestamp_us": ts,
                }
                for it in imp.items
            )
            arms.extend(
                {
                    "request_id": imp.request_id,
                    "experiment": a.experiment,
                    "arm": a.arm,
                    "user_id": imp.user_id,
                    "propensity": a.propensity,
                    "timestamp_us": ts,
                }
                for a in imp.arms
            )
        if not heads:
            return 0
        with self._write("log_impressions") as conn:
            if self._pg:
                columns = _arrays(list(heads.values()), _HEAD_COLUMNS)
                columns["context"] = [_json(c) for c in columns["context"]]
                new = set(conn.execute(_PG_LOG_HEADS, columns).scalars())
            else:
                encoded = [{**h, "context": _json(h["context"])} for h in heads.values()]
                new = set(
                    _sqlite_insert_new(conn, "impressions", _HEAD_COLUMNS, "request_id", encoded)
                )
            rows = [s for s in slots if s["request_id"] in new]
            if rows and self._pg:
                conn.execute(_PG_LOG_ITEMS, _arrays(rows, _ITEM_COLUMNS))
            elif rows:
                conn.exec_driver_sql(
                    _SQLITE_LOG_ITEMS, [tuple(r[c] for c in _ITEM_COLUMNS) for r in rows]
                )
            arm_rows = [a for a in arms if a["request_id"] in new]
            if arm_rows:
                conn.execute(impression_arms_table.insert(), arm_rows)
        return len(new)

    def get_impression(self, request_id: str) -> Impression | None:
        """The logged response of a request, or None."""
        with self._read("get_impression") as conn:
            head = conn.execute(
                select(impressions_table).where(impressions_table.c.request_id == request_id)
            ).first()
            if head is None:
                return None
            rows = conn.execute(
                select(impression_items_table)
                .where(impression_items_table.c.request_id == request_id)
                .order_by(impression_items_table.c.position)
            ).all()
            arm_rows = conn.execute(
                select(impression_arms_table).where(
                    impression_arms_table.c.request_id == request_id
                )
            ).all()
        return Impression(
            request_id=head.request_id,
            user_id=head.user_id,
            timestamp=_from_us(head.timestamp_us),
            model_version=head.model_version,
            experiment=head.experiment,
            arm=head.arm,
            context=head.context,
            items=[
                ImpressionItem(
                    item_id=r.item_id,
                    position=r.position,
                    score=r.score,
                    sources=r.sources,
                    propensity=r.propensity,
                )
                for r in rows
            ],
            arms=[
                ImpressionArm(experiment=a.experiment, arm=a.arm, propensity=a.propensity)
                for a in arm_rows
            ],
        )

    def attribute(
        self, user_id: str, item_id: str, at: datetime | None, window_seconds: float
    ) -> str | None:
        """The request id of the latest impression of `item_id` to `user_id` at
        or before `at` (default now) and at most `window_seconds` earlier (of
        two at the same time, the larger request id)."""
        return self.attribute_many([(user_id, item_id, at)], window_seconds)[0]

    def attribute_many(
        self,
        clicks: Sequence[tuple[str, str, datetime | None]],
        window_seconds: float,
        unwritten: Sequence[tuple[str, str, datetime, str]] = (),
    ) -> list[str | None]:
        """`attribute` for many (user, item, time) at once, with one query per
        chunk of users instead of one per event (batch ingestion stays fast);
        `unwritten` lists count as stored."""
        if not clicks:
            return []
        now = datetime.now(UTC)
        at_us = [_to_us(at or now) for _, _, at in clicks]
        window_us = int(window_seconds * 1e6)
        t = impression_items_table
        found: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for user, item, served, request_id in unwritten:
            found.setdefault((user, item), []).append((_to_us(served), request_id))
        if self._pg:
            with self._read("attribute_many") as conn:
                for user, item, ts, request_id in conn.execute(
                    _PG_LATEST_SHOWN,
                    {
                        "user": [u for u, _, _ in clicks],
                        "item": [i for _, i, _ in clicks],
                        "lo": [at - window_us for at in at_us],
                        "hi": at_us,
                    },
                ):
                    found.setdefault((user, item), []).append((int(ts), str(request_id)))
            return _latest_shown(clicks, at_us, window_us, found)
        users = sorted({u for u, _, _ in clicks})
        items = sorted({i for _, i, _ in clicks})
        with self._read("attribute_many") as conn:
            for chunk in _chunks(users):
                query = select(t.c.user_id, t.c.item_id, t.c.timestamp_us, t.c.request_id).where(
                    t.c.user_id.in_(chunk),
                    t.c.item_id.in_(items) if len(items) <= _CHUNK else t.c.item_id.isnot(None),
                    t.c.timestamp_us <= max(at_us),
                    t.c.timestamp_us >= min(at_us) - window_us,
                )
                for row in conn.execute(query):
                    found.setdefault((row.user_id, row.item_id), []).append(
                        (int(row.timestamp_us), str(row.request_id))
                    )
        return _latest_shown(clicks, at_us, window_us, found)

    def impressions_frame(self, since: float | None = None) -> pd.DataFrame:
        """One row per shown slot (IMPRESSION_COLUMNS), oldest first; `since` in
        epoch seconds."""
        s, h = impression_items_table, impressions_table
        query = (
            select(
                s.c.request_id,
                s.c.user_id,
                s.c.item_id,
                s.c.position,
                s.c.score,
                s.c.propensity,
                s.c.sources,
                h.c.model_version,
                h.c.experiment,
                h.c.arm,
                s.c.timestamp_us,
            )
            .join(h, h.c.request_id == s.c.request_id)
            .order_by(s.c.timestamp_us, s.c.request_id, s.c.position)
        )
        if since is not None:
            query = query.where(s.c.timestamp_us >= int(since * 1e6))
        with self._read("impressions_frame") as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame(rows, columns=[*IMPRESSION_COLUMNS[:-1], "timestamp_us"])
        frame["timestamp"] = frame.pop("timestamp_us").astype(np.int64) / 1e6
        return frame[IMPRESSION_COLUMNS]
