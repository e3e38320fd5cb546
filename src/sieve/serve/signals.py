"""Dwell, sessions and bounces for the dashboard and Prometheus.

Both read `Store.signal_counts` (aggregated in the database over a bounded
window, see `sieve.storage.sql_signals`) with the settings' semantics
(`dwell_types`, `session_gap_seconds`, `bounce_seconds`); `frame_signals` is
the in-memory reference the database aggregation is tested against.
`RecentSessions` gives Prometheus the sessions started in the last hour, read
at most every `refresh_seconds` per process, so a scrape never reads the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from sieve.data.sessions import session_bucket_counts, session_table
from sieve.monitoring.metrics import SessionSummary
from sieve.settings import EventSemantics
from sieve.storage import Store, StoreError
from sieve.storage.base import SignalCounts

log = logging.getLogger("sieve.serve")

#: Sessions counted by the Prometheus gauges: those started this long ago at most.
RECENT_SESSIONS_SECONDS = 3600
#: How often one process re-reads them (seconds).
RECENT_SESSIONS_REFRESH = 30.0


def read_signals(
    store: Store,
    start: float,
    end: float,
    bucket_seconds: int,
    semantics: EventSemantics,
    now: float,
) -> SignalCounts:
    """`Store.signal_counts` under the semantics' definitions."""
    return store.signal_counts(
        start,
        end,
        bucket_seconds,
        dwell_types=semantics.dwell_types,
        gap_seconds=semantics.session_gap_seconds,
        bounce_seconds=semantics.bounce_seconds,
        now=now,
    )


def frame_signals(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    *,
    start: float,
    end: float,
    bucket_seconds: int,
    semantics: EventSemantics,
    now: float,
) -> SignalCounts:
    """`Store.signal_counts` computed in memory from whole `impressions_frame`
    and `events_frame` rows: the brute-force reference."""
    activity = pd.concat(
        [events[["user_id", "timestamp"]], impressions[["user_id", "timestamp"]]],
        ignore_index=True,
    ).dropna()
    sessions = session_table(
        activity["user_id"],
        activity["timestamp"],
        gap=semantics.session_gap_seconds,
        bounce=semantics.bounce_seconds,
        now=now,
    )
    in_window = (events["timestamp"] >= start) & (events["timestamp"] < end)
    dwell = events.loc[
        in_window & events["type"].isin(semantics.dwell_types) & events["value"].notna()
    ]
    bucket = ((dwell["timestamp"].to_numpy(np.float64) - start) // bucket_seconds).astype(np.int64)
    per_bucket = (
        dwell.assign(bucket=bucket)
        .groupby("bucket")
        .agg(dwell_events=("value", "size"), dwell_seconds=("value", "sum"))
        .reset_index()
    )
    return SignalCounts(
        start=start,
        end=end,
        bucket_seconds=bucket_seconds,
        now=now,
        dwell=per_bucket,
        sessions=session_bucket_counts(
            sessions, start=start, end=end, bucket_seconds=bucket_seconds
        ),
    )


def signal_series(counts: SignalCounts) -> dict[str, np.ndarray]:
    """Per bucket (oldest first): sessions, ended, bounces, dwell_events, dwell_seconds."""
    count = max(1, round((counts.end - counts.start) / counts.bucket_seconds))
    out: dict[str, np.ndarray] = {}
    for frame, columns in (
        (counts.sessions, ("sessions", "ended", "bounces")),
        (counts.dwell, ("dwell_events", "dwell_seconds")),
    ):
        k = np.clip(frame["bucket"].to_numpy(np.int64), 0, count - 1)
        for col in columns:
            dtype = np.float64 if col == "dwell_seconds" else np.int64
            arr = np.zeros(count, dtype=dtype)
            np.add.at(arr, k, frame[col].to_numpy(dtype))
            out[col] = arr
    return out


class RecentSessions:
    """The last hour's sessions and dwell, re-read at most every `refresh` seconds
    (a store read of the window's rows) — what the Prometheus gauges show."""

    def __init__(
        self,
        store: Store,
        semantics: EventSemantics,
        *,
        window: int = RECENT_SESSIONS_SECONDS,
        refresh: float = RECENT_SESSIONS_REFRESH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.semantics = semantics
        self.window = window
        self.refresh = refresh
        self.clock = clock
        self._lock = threading.Lock()
        self._last: SessionSummary | None = None

    def __call__(self) -> SessionSummary | None:
        now = self.clock()
        with self._lock:
            last = self._last
            if last is not None and now - last.at < self.refresh:
                return last
            try:
                counts = read_signals(
                    self.store, now - self.window, now, self.window, self.semantics, now
                )
            except StoreError:
                log.warning("store unavailable: session gauges not refreshed", exc_info=True)
                return last
            s = signal_series(counts)
            self._last = SessionSummary(
                window=self.window,
                at=now,
                sessions=int(s["sessions"].sum()),
                ended=int(s["ended"].sum()),
                bounces=int(s["bounces"].sum()),
                dwell_events=int(s["dwell_events"].sum()),
                dwell_seconds=float(s["dwell_seconds"].sum()),
            )
            return self._last


__all__ = [
    "RecentSessions",
    "frame_signals",
    "read_signals",
    "signal_series",
]
