"""Sessions and bounces from a user's activity, with an injected clock.

A *session* is a maximal run of one user's activity (events and served
lists) with no gap longer than `gap` seconds between two consecutive
moments. A session has *ended* once `now` is at least `gap` seconds past its
last activity (a later activity would start a new one): the rule that lets
a bounded window decide "the user left" without waiting for an event that
never comes. An ended session is a *bounce* when its last activity came at
most `bounce` seconds after its first: the user arrived and left within
`bounce` seconds with no further event (`bounce = 0`: single-moment sessions
only, the classic definition).

This module is the in-memory reference: the service aggregates the same
rule in the database over a bounded window (`SQLSignals.signal_counts`),
and experiment reports apply it to the experiment's users
(`sieve.experiments.report`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SESSION_COLUMNS = ["user_id", "session", "start", "last", "activities", "ended", "bounced"]


def label_sessions(user_ids: pd.Series, timestamps: pd.Series, gap: float) -> pd.DataFrame:
    """Each activity with its session number (0, 1, … per user in time order):
    columns user_id, timestamp, session, sorted by user then time."""
    frame = pd.DataFrame(
        {
            "user_id": user_ids.astype(str).to_numpy(object),
            "timestamp": timestamps.to_numpy(np.float64),
        }
    )
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    if frame.empty:
        return frame.assign(session=pd.Series(dtype=np.int64))
    same_user = frame["user_id"].eq(frame["user_id"].shift())
    step = frame["timestamp"].diff()
    starts = ~same_user | (step > gap)
    frame["session"] = starts.astype(np.int64).groupby(frame["user_id"]).cumsum() - 1
    return frame


def session_table(
    user_ids: pd.Series, timestamps: pd.Series, *, gap: float, bounce: float, now: float
) -> pd.DataFrame:
    """One row per session (see the module doc): user_id, session, start,
    last, activities, ended, bounced."""
    labelled = label_sessions(user_ids, timestamps, gap)
    if labelled.empty:
        return pd.DataFrame(columns=SESSION_COLUMNS)
    out = (
        labelled.groupby(["user_id", "session"], sort=True)["timestamp"]
        .agg(start="min", last="max", activities="size")
        .reset_index()
    )
    out["ended"] = now - out["last"] >= gap
    out["bounced"] = out["ended"] & (out["last"] - out["start"] <= bounce)
    return out


def session_bucket_counts(
    sessions: pd.DataFrame, *, start: float, end: float, bucket_seconds: int
) -> pd.DataFrame:
    """Sessions starting in `[start, end)` per bucket: columns bucket,
    sessions, ended, bounces (buckets without a session are left out)."""
    inside = sessions.loc[(sessions["start"] >= start) & (sessions["start"] < end)]
    if inside.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=np.int64) for c in ("bucket", "sessions", "ended", "bounces")}
        )
    bucket = ((inside["start"].to_numpy(np.float64) - start) // bucket_seconds).astype(np.int64)
    out = (
        inside.assign(bucket=bucket)
        .groupby("bucket")
        .agg(sessions=("start", "size"), ended=("ended", "sum"), bounces=("bounced", "sum"))
        .reset_index()
    )
    return out.astype(np.int64)


__all__ = [
    "SESSION_COLUMNS",
    "label_sessions",
    "session_bucket_counts",
    "session_table",
]
