"""`SQLSignals`: dwell and sessions aggregated in the database over a bounded window.

Sessions follow `sieve.data.sessions` (the in-memory reference): a user's
activity — events and served slots — is cut where two consecutive moments
are more than the gap apart. Window functions do it in the database (LAG
marks a session's first moment, a running SUM numbers the sessions), so what
travels is one row per bucket. The activity read starts one gap before the
window: enough to know whether a moment in the window starts a session, and
a session is over (the clock-injected `now`) once the gap has passed since
its last moment, so nothing older is ever read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, and_, case, func, literal, or_, select, text, union_all

from sieve.storage.base import SignalCounts
from sieve.storage.sql_base import SQLBase
from sieve.storage.tables import events_table, impression_arms_table, impression_items_table


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


class SQLSignals(SQLBase):
    """Dwell, sessions and bounces; mixed into `SQLStore`."""

    def signal_counts(
        self,
        start: float,
        end: float,
        bucket_seconds: int,
        *,
        dwell_types: Sequence[str],
        gap_seconds: float,
        bounce_seconds: float,
        now: float,
    ) -> SignalCounts:
        """See `Store.signal_counts` and the module doc."""
        if bucket_seconds < 1 or end <= start or gap_seconds <= 0:
            raise ValueError(
                f"need end > start, bucket_seconds >= 1 and gap_seconds > 0, got "
                f"[{start}, {end}) / {bucket_seconds} / {gap_seconds}"
            )
        lo, hi, width = _us(start), _us(end), int(bucket_seconds) * 10**6
        gap, bounce, now_us = _us(gap_seconds), _us(bounce_seconds), _us(now)
        e, s = events_table, impression_items_table

        def bucket(ts: Any) -> Any:
            return ((ts - literal(lo, BigInteger)) // literal(width, BigInteger)).label("bucket")

        dwell_q = (
            select(
                bucket(e.c.timestamp_us),
                func.count(e.c.value).label("dwell_events"),
                func.coalesce(func.sum(e.c.value), 0.0).label("dwell_seconds"),
            )
            .where(
                e.c.timestamp_us >= lo,
                e.c.timestamp_us < hi,
                e.c.type.in_(list(dwell_types) or [""]),
            )
            .group_by(text("bucket"))
        )
        # the user as an expression (`|| ''`): a planner must not walk a
        # (user, time) index whole to save the window's sort; both reads stay
        # range searches of the time indexes
        activity = union_all(
            select(e.c.user_id.concat("").label("u"), e.c.timestamp_us.label("t")).where(
                e.c.timestamp_us >= lo - gap
            ),
            select(s.c.user_id.concat("").label("u"), s.c.timestamp_us.label("t")).where(
                s.c.timestamp_us >= lo - gap, s.c.user_id.isnot(None)
            ),
        ).subquery("activity")
        before = func.lag(activity.c.t).over(partition_by=activity.c.u, order_by=activity.c.t)
        firsts = select(
            activity.c.u,
            activity.c.t,
            case((or_(before.is_(None), activity.c.t - before > gap), 1), else_=0).label("first"),
        ).subquery("firsts")
        # the default frame (RANGE … CURRENT ROW) numbers moments at the same
        # instant alike, whatever order the LAG above put them in
        number = func.sum(firsts.c.first).over(partition_by=firsts.c.u, order_by=firsts.c.t)
        numbered = select(firsts.c.u, firsts.c.t, number.label("sid")).subquery("numbered")
        spans = (
            select(
                func.min(numbered.c.t).label("t0"),
                func.max(numbered.c.t).label("t1"),
            )
            .group_by(numbered.c.u, numbered.c.sid)
            .subquery("spans")
        )
        ended = literal(now_us, BigInteger) - spans.c.t1 >= gap
        session_q = (
            select(
                bucket(spans.c.t0),
                func.count().label("sessions"),
                func.sum(case((ended, 1), else_=0)).label("ended"),
                func.sum(case((and_(ended, spans.c.t1 - spans.c.t0 <= bounce), 1), else_=0)).label(
                    "bounces"
                ),
            )
            .where(spans.c.t0 >= lo, spans.c.t0 < hi)
            .group_by(text("bucket"))
        )
        with self._read("signal_counts") as conn:
            dwell = pd.DataFrame(
                conn.execute(dwell_q).all(), columns=["bucket", "dwell_events", "dwell_seconds"]
            )
            sessions = pd.DataFrame(
                conn.execute(session_q).all(), columns=["bucket", "sessions", "ended", "bounces"]
            )
        dwell = dwell.astype({"bucket": np.int64, "dwell_events": np.int64})
        dwell["dwell_seconds"] = dwell["dwell_seconds"].astype(np.float64)
        sessions = sessions.astype(np.int64)
        return SignalCounts(
            start=start,
            end=end,
            bucket_seconds=int(bucket_seconds),
            now=now,
            dwell=dwell,
            sessions=sessions,
        )

    def experiment_activity(self, name: str, gap_seconds: float) -> pd.DataFrame:
        """See `Store.experiment_activity`: the experiment's users' events and
        served slots from one gap before its first request (index walks: the
        experiment's requests, then each user's time range)."""
        a, e, s = impression_arms_table, events_table, impression_items_table
        with self._read("experiment_activity") as conn:
            first = conn.execute(
                select(func.min(a.c.timestamp_us)).where(a.c.experiment == name)
            ).scalar_one()
            if first is None:
                return pd.DataFrame(
                    {"user_id": pd.Series(dtype=object), "timestamp": pd.Series(dtype=np.float64)}
                )
            lo = int(first) - _us(gap_seconds)
            users = (
                select(a.c.user_id)
                .where(a.c.experiment == name, a.c.user_id.isnot(None))
                .distinct()
                .scalar_subquery()
            )
            query = union_all(
                select(e.c.user_id, e.c.timestamp_us).where(
                    e.c.user_id.in_(users), e.c.timestamp_us >= lo
                ),
                select(s.c.user_id, s.c.timestamp_us).where(
                    s.c.user_id.in_(users), s.c.timestamp_us >= lo
                ),
            )
            rows = conn.execute(query).all()
        return pd.DataFrame(
            {
                "user_id": pd.Series([str(r[0]) for r in rows], dtype=object),
                "timestamp": np.array([r[1] for r in rows], dtype=np.int64) / 1e6,
            }
        )


__all__ = ["SQLSignals"]
