"""KPIs aggregated in the database over the window only: the same numbers as a
brute-force pass over the whole log, and reads that never scan the log."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import event, text

from sieve.serve.routes.dashboard import compute_kpis, kpi_window, kpis_from_counts
from sieve.settings import EventSemantics
from sieve.storage import SQLStore
from traffic import seed_traffic

from .test_api import MakeClient

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "semantics", [EventSemantics(), EventSemantics(click_types=("click", "purchase"))]
)
def test_window_counts_equal_a_brute_force_pass(store: SQLStore, semantics: EventSemantics) -> None:
    seed_traffic(store, now=NOW - 5 * 86400, seed=1, event_id_prefix="old-")
    seed_traffic(store, now=NOW, seed=2)
    seed_traffic(store, now=NOW - 1800, seed=3, requests=40, event_id_prefix="mid-")
    impressions, events = store.impressions_frame(), store.events_frame()
    for minutes, bucket in ((60, 60), (30, 7), (7 * 24 * 60, 3600), (5, 300)):
        start, end, _ = kpi_window(NOW - 100, minutes, bucket)
        fast = kpis_from_counts(store.window_counts(start, end, bucket), semantics)
        slow = compute_kpis(
            impressions, events, start=start, end=end, bucket_seconds=bucket, semantics=semantics
        )
        assert fast[0].model_dump() == slow[0].model_dump(), (minutes, bucket)
        assert [b.model_dump() for b in fast[1]] == [b.model_dump() for b in slow[1]]
        assert fast[0].impressions > 0 and fast[0].clicks > 0


def _plans(store: SQLStore, statements: list[tuple[str, Any]]) -> list[str]:
    """SQLite's query plan steps of each captured SELECT."""
    steps: list[str] = []
    with store.engine.connect() as conn:
        for sql, params in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            raw = conn.connection.driver_connection
            assert raw is not None
            rows = raw.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            steps += [str(r[-1]) for r in rows]
    return steps


def test_the_kpi_endpoint_reads_the_window_through_indexes(make_client: MakeClient) -> None:
    """The endpoint used to read the whole event log per call; now every read
    of the logs is an index range search over the window (no table scan), so a
    call costs the window's rows however long the log is."""
    client = make_client()
    engine = client.app.state.service  # type: ignore[attr-defined]
    db: SQLStore = engine.store
    now = time.time()
    seed_traffic(db, now=now - 40 * 86400, seed=1, requests=400, event_id_prefix="old-")
    seed_traffic(db, now=now - 60, seed=2, requests=60)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> None:
        statements.append((sql, params))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        r = client.get("/dashboard/api/kpis", params={"minutes": 60, "bucket_seconds": 60})
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"]["impressions"] == 60 * 5  # the old traffic is outside
    logs = ("events", "impression_items", "impressions")
    reads = [s for s, _ in statements if any(f" {t}" in s for t in logs)]
    assert reads, statements
    steps = _plans(db, statements)
    scans = [s for s in steps if any(s.startswith(f"SCAN {t}") for t in logs)]
    assert not scans, steps
    searched = {t for t in logs if any(s.startswith(f"SEARCH {t} USING") for s in steps)}
    assert {"events", "impression_items"} <= searched, steps
    with db.engine.connect() as conn:  # the log itself is ten times the window
        assert conn.execute(text("SELECT COUNT(*) FROM impression_items")).scalar_one() > 2000
