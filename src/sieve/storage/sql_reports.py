"""`SQLReports`: the read-only analytics and experiment queries of `SQLStore`,
aggregated or joined in the database so they read the window's rows, not the log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    union,
    union_all,
)

from sieve.storage.base import WindowCounts
from sieve.storage.sql_base import SQLBase
from sieve.storage.tables import (
    _chunks,
    events_table,
    impression_arms_table,
    impression_items_table,
    impressions_table,
)

#: Columns of `logged_slots`: one row per shown slot of a page of requests.
LOGGED_SLOT_COLUMNS = [
    "request_id",
    "user_id",
    "model_version",
    "item_id",
    "position",
    "propensity",
    "sources",
    "clicked",
    "timestamp",
    "timestamp_us",
]


class SQLReports(SQLBase):
    """Dashboard counts, monitoring slots and experiment frames; mixed into `SQLStore`."""

    # ------------------------------------------------------------- analytics
    def window_counts(self, start: float, end: float, bucket_seconds: int) -> WindowCounts:
        """Counts over `[start, end)` per bucket, aggregated in the database
        (range scans of the time indexes: the window's rows, not the log's)."""
        if bucket_seconds < 1 or end <= start:
            raise ValueError(
                f"need end > start and bucket_seconds >= 1, got [{start}, {end}) / {bucket_seconds}"
            )
        lo, hi, width = round(start * 1e6), round(end * 1e6), int(bucket_seconds) * 10**6
        s, e = impression_items_table, events_table

        def bucket(ts: Any) -> Any:
            # integer division (times are >= lo): the same bucket on both dialects
            return ((ts - literal(lo, BigInteger)) // literal(width, BigInteger)).label("bucket")

        in_slots = (s.c.timestamp_us >= lo, s.c.timestamp_us < hi)
        in_events = (e.c.timestamp_us >= lo, e.c.timestamp_us < hi)
        slot_q = (
            select(
                bucket(s.c.timestamp_us),
                func.count().label("impressions"),
                func.count(s.c.request_id.distinct()).label("requests"),
            )
            .where(*in_slots)
            .group_by(text("bucket"))
        )
        event_q = (
            select(
                bucket(e.c.timestamp_us),
                e.c.type,
                func.count().label("events"),
                func.count(e.c.request_id).label("cited"),
            )
            .where(*in_events)
            .group_by(text("bucket"), e.c.type)
        )
        who = union_all(
            select(bucket(e.c.timestamp_us), e.c.user_id.label("user_id")).where(*in_events),
            select(bucket(s.c.timestamp_us), s.c.user_id.label("user_id")).where(
                *in_slots, s.c.user_id.isnot(None)
            ),
        ).subquery()
        user_q = select(who.c.bucket, func.count(who.c.user_id.distinct()).label("users")).group_by(
            who.c.bucket
        )
        everyone = union(
            select(e.c.user_id.label("user_id")).where(*in_events),
            select(s.c.user_id.label("user_id")).where(*in_slots, s.c.user_id.isnot(None)),
        ).subquery()
        total_q = select(func.count()).select_from(everyone)
        with self._read("window_counts") as conn:
            slots = pd.DataFrame(
                conn.execute(slot_q).all(), columns=["bucket", "impressions", "requests"]
            )
            events = pd.DataFrame(
                conn.execute(event_q).all(), columns=["bucket", "type", "events", "cited"]
            )
            users = pd.DataFrame(conn.execute(user_q).all(), columns=["bucket", "users"])
            total = int(conn.execute(total_q).scalar_one())
        for frame in (slots, events, users):
            for col in frame.columns:
                if col != "type":
                    frame[col] = frame[col].astype(np.int64)
        return WindowCounts(
            start=start,
            end=end,
            bucket_seconds=int(bucket_seconds),
            slots=slots,
            events=events,
            users=users,
            total_users=total,
        )

    def event_counts(self, after_seq: int, upto_seq: int, by: str) -> pd.Series:
        """Events with `after_seq < seq <= upto_seq` per `item_id` or `type`
        (a range of the primary key, grouped in the database)."""
        if by not in ("item_id", "type"):
            raise ValueError(f"event_counts: `by` must be 'item_id' or 'type', got {by!r}")
        t = events_table
        column = t.c[by]
        query = (
            select(column, func.count())
            .where(t.c.seq > int(after_seq), t.c.seq <= int(upto_seq))
            .group_by(column)
            .order_by(column)
        )
        with self._read("event_counts") as conn:
            rows = conn.execute(query).all()
        return pd.Series(
            [int(n) for _, n in rows],
            index=pd.Index([str(k) for k, _ in rows], dtype=object, name=by),
            dtype=np.int64,
            name="events",
        )

    def shown_slots(
        self,
        model_version: str,
        since: float,
        until: float,
        click_types: Sequence[str],
        limit: int,
    ) -> pd.DataFrame:
        """The newest `limit` slots `model_version` showed in `[since, until)`
        with their score and whether a click of `click_types` cites them
        (index walks: version and time, then each slot's request)."""
        h, s, e = impressions_table, impression_items_table, events_table
        clicked = (
            exists()
            .where(
                e.c.request_id == s.c.request_id,
                e.c.item_id == s.c.item_id,
                e.c.type.in_(list(click_types)),
            )
            .label("clicked")
        )
        query = (
            select(h.c.timestamp_us, s.c.score, clicked)
            .join(s, s.c.request_id == h.c.request_id)
            .where(
                h.c.model_version == model_version,
                h.c.timestamp_us >= round(since * 1e6),
                h.c.timestamp_us < round(until * 1e6),
            )
            .order_by(h.c.timestamp_us.desc())
            .limit(int(limit))
        )
        with self._read("shown_slots") as conn:
            rows = conn.execute(query).all()
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 3
        return pd.DataFrame(
            {
                "timestamp": np.array(cols[0], dtype=np.int64) / 1e6,
                "score": np.array(cols[1], dtype=np.float64),
                "clicked": np.array([bool(c) for c in cols[2]], dtype=bool),
            }
        )

    def logged_slots(
        self,
        since: float,
        until: float,
        click_types: Sequence[str],
        after: tuple[int, str] | None = None,
        limit: int = 5000,
    ) -> pd.DataFrame:
        """One page of the served lists of `[since, until)`: the first `limit`
        requests after the key `after` = (timestamp_us, request_id) in that
        order, one row per shown slot (LOGGED_SLOT_COLUMNS), with `clicked`:
        whether an event of `click_types` cites the slot's request and item.
        Off-policy evaluation reads a window page by page, never whole."""
        h, s, e = impressions_table, impression_items_table, events_table
        heads = select(h.c.request_id, h.c.user_id, h.c.model_version, h.c.timestamp_us).where(
            h.c.timestamp_us >= round(since * 1e6), h.c.timestamp_us < round(until * 1e6)
        )
        if after is not None:
            ts, rid = after
            heads = heads.where(
                or_(h.c.timestamp_us > ts, and_(h.c.timestamp_us == ts, h.c.request_id > rid))
            )
        heads = heads.order_by(h.c.timestamp_us, h.c.request_id).limit(int(limit))
        clicked = (
            exists()
            .where(
                e.c.request_id == s.c.request_id,
                e.c.item_id == s.c.item_id,
                e.c.type.in_(list(click_types)),
            )
            .label("clicked")
        )
        with self._read("logged_slots") as conn:
            head_rows = conn.execute(heads).all()
            slot_rows: list[Any] = []
            for chunk in _chunks([r.request_id for r in head_rows]):
                slot_rows.extend(
                    conn.execute(
                        select(
                            s.c.request_id, s.c.item_id, s.c.position, s.c.propensity, s.c.sources
                        )
                        .add_columns(clicked)
                        .where(s.c.request_id.in_(chunk))
                    ).all()
                )
        head = pd.DataFrame(
            head_rows, columns=["request_id", "user_id", "model_version", "timestamp_us"]
        )
        slots = pd.DataFrame(
            slot_rows,
            columns=["request_id", "item_id", "position", "propensity", "sources", "clicked"],
        )
        frame = head.merge(slots, on="request_id", how="inner")
        frame["clicked"] = frame["clicked"].astype(bool)
        frame["timestamp"] = frame["timestamp_us"].astype(np.int64) / 1e6
        frame = frame.sort_values(["timestamp_us", "request_id", "position"], kind="stable")
        return frame[LOGGED_SLOT_COLUMNS].reset_index(drop=True)

    # ----------------------------------------------------------- experiments
    def experiment_frames(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """What an experiment served and what came of it.

        - slots: one row per shown slot of a request in the experiment
          (request_id, user_id, arm, arm_propensity, item_id, position,
          propensity, sources, timestamp); a request that showed nothing
          has one row with no item (item_id None);
        - events: the events citing those requests (request_id, user_id,
          item_id, type, value, timestamp).
        """
        a, s, e = impression_arms_table, impression_items_table, events_table
        slot_query = (
            select(
                a.c.request_id,
                a.c.user_id,
                a.c.arm,
                a.c.propensity.label("arm_propensity"),
                s.c.item_id,
                s.c.position,
                s.c.propensity,
                s.c.sources,
                a.c.timestamp_us,
            )
            # outer: a request that served an empty list still counts (one
            # row with no item), so an arm that fails to fill lists shows it
            .outerjoin(s, s.c.request_id == a.c.request_id)
            .where(a.c.experiment == name)
            .order_by(a.c.timestamp_us, a.c.request_id, s.c.position)
        )
        event_query = (
            select(e.c.request_id, e.c.user_id, e.c.item_id, e.c.type, e.c.value, e.c.timestamp_us)
            .join(a, a.c.request_id == e.c.request_id)
            .where(a.c.experiment == name)
            .order_by(e.c.seq)
        )
        with self._read("experiment_frames") as conn:
            slots = pd.DataFrame(
                conn.execute(slot_query).all(),
                columns=[
                    "request_id",
                    "user_id",
                    "arm",
                    "arm_propensity",
                    "item_id",
                    "position",
                    "propensity",
                    "sources",
                    "timestamp_us",
                ],
            )
            events = pd.DataFrame(
                conn.execute(event_query).all(),
                columns=["request_id", "user_id", "item_id", "type", "value", "timestamp_us"],
            )
        for frame in (slots, events):
            frame["timestamp"] = frame.pop("timestamp_us").astype(np.int64) / 1e6
        return slots, events

    def experiment_contexts(self, name: str) -> pd.DataFrame:
        """The logged context of each of the experiment's requests: columns
        request_id, arm (its arm in this experiment), context (a dict), oldest
        first. Reads the experiment's own impressions only (through
        `impression_arms`), never the whole log."""
        a, i = impression_arms_table, impressions_table
        query = (
            select(a.c.request_id, a.c.arm, i.c.context)
            .join(i, i.c.request_id == a.c.request_id)
            .where(a.c.experiment == name)
            .order_by(a.c.timestamp_us, a.c.request_id)
        )
        with self._read("experiment_contexts") as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(
            [(r.request_id, r.arm, r.context or {}) for r in rows],
            columns=["request_id", "arm", "context"],
        )
