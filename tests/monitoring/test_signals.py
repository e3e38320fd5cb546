"""Dwell and bounce: sessions cut by an inactivity gap, decided with an injected
clock, aggregated in the database over a bounded window (equal to the
in-memory reference), shown per arm in experiment reports, on the dashboard
and in Prometheus."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest

from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem
from sieve.experiments.online import ExperimentRecord, parse_experiment
from sieve.experiments.report import experiment_report
from sieve.serve.routes.dashboard import kpi_window
from sieve.serve.signals import RecentSessions, frame_signals, read_signals, signal_series
from sieve.settings import EventSemantics
from sieve.storage import SQLStore
from traffic import seed_traffic

NOW = 1_800_000_000.0
SEM = EventSemantics(session_gap_seconds=600.0, bounce_seconds=10.0)
EXPERIMENT = {
    "name": "exp",
    "variants": [{"name": "control", "share": 0.5}, {"name": "treatment", "share": 0.5}],
}


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _event(user: str, t: float, kind: str = "click", **kw: Any) -> Event:
    return Event(id=uuid.uuid4().hex, user_id=user, item_id="i1", type=kind, timestamp=_at(t), **kw)


def _served(request_id: str, user: str, t: float, arm: str | None = None) -> Impression:
    arms = [ImpressionArm(experiment="exp", arm=arm)] if arm else []
    return Impression(
        request_id=request_id,
        user_id=user,
        timestamp=_at(t),
        model_version="v1",
        experiment="exp" if arm else None,
        arm=arm,
        items=[ImpressionItem(item_id="i1", position=0, score=1.0)],
        arms=arms,
    )


def test_sessions_and_bounces_have_known_answers(store: SQLStore) -> None:
    """Four users, window [T, T+1200): a arrives and leaves in 5 s (bounce); b
    stays 60 s (no bounce); c comes back after more than the gap (two sessions,
    both bounces); d is still inside its gap at `now` (not ended: no verdict)."""
    t = NOW - 3000
    store.log_impressions([_served("ra", "a", t + 100), _served("rb", "b", t + 100)])
    store.append_events(
        [
            _event("a", t + 105),
            _event("b", t + 160),
            _event("c", t + 200),
            _event("c", t + 200 + 601),
            _event("d", NOW - 100),
            _event("z", t - 100),  # before the window and its gap: a session never counted
            _event("d", t + 300, "dwell", value=42.0),
            _event("d", t + 301, "dwell", value=18.0),
        ]
    )
    # now - (d's last moment) < gap: d's second session is open
    counts = read_signals(store, t, t + 1200, 600, SEM, now=NOW)
    s = signal_series(counts)
    # sessions starting in [t, t+600): a, b, c(first), d(first, the dwells) ; c's second in bucket 1
    assert s["sessions"].tolist() == [4, 1]
    assert s["ended"].tolist() == [4, 1]
    # a (5 s), c's first (one moment), d's dwell pair (1 s apart) ; c's second
    assert s["bounces"].tolist() == [3, 1]
    assert s["dwell_events"].tolist() == [2, 0] and s["dwell_seconds"].tolist() == [60.0, 0.0]
    # the open session: counted as started, not as ended
    late = signal_series(read_signals(store, NOW - 600, NOW, 600, SEM, now=NOW))
    assert late["sessions"].tolist() == [1] and late["ended"].tolist() == [0]
    # the clock decides: once the gap has passed, it is over (and a bounce)
    later = signal_series(read_signals(store, NOW - 600, NOW, 600, SEM, now=NOW + 600))
    assert later["ended"].tolist() == [1] and later["bounces"].tolist() == [1]


def test_database_sessions_equal_the_in_memory_reference(store: SQLStore) -> None:
    seed_traffic(store, now=NOW - 5 * 86400, seed=1, event_id_prefix="old-")
    seed_traffic(store, now=NOW, seed=2)
    seed_traffic(store, now=NOW - 1800, seed=3, requests=40, event_id_prefix="mid-")
    store.append_events(
        [_event(f"u{k % 7}", NOW - 50 * k, "dwell", value=float(k)) for k in range(1, 40)]
    )
    impressions, events = store.impressions_frame(), store.events_frame()
    for sem in (SEM, EventSemantics(session_gap_seconds=120.0, bounce_seconds=0.0)):
        for minutes, bucket in ((60, 60), (30, 7), (7 * 24 * 60, 3600)):
            start, end, _ = kpi_window(NOW - 100, minutes, bucket)
            fast = signal_series(read_signals(store, start, end, bucket, sem, NOW + 60))
            slow = signal_series(
                frame_signals(
                    impressions,
                    events,
                    start=start,
                    end=end,
                    bucket_seconds=bucket,
                    semantics=sem,
                    now=NOW + 60,
                )
            )
            for key in fast:
                assert fast[key].tolist() == pytest.approx(slow[key].tolist()), (key, minutes)
            assert fast["sessions"].sum() > 20 and fast["bounces"].sum() > 0
            assert fast["dwell_events"].sum() > 0


def test_experiment_report_shows_bounce_and_dwell_per_arm(store: SQLStore) -> None:
    """Control's users leave right after their list; treatment's click and
    stay, with dwell. The report's per-arm bounce rate and mean dwell say so."""
    t = NOW - 7200
    impressions, events = [], []
    for k in range(40):
        user, at = f"u{k}", t + 30 * k
        arm = "control" if k % 2 == 0 else "treatment"
        impressions.append(_served(f"r{k}", user, at, arm))
        if arm == "treatment":
            events.append(_event(user, at + 20, request_id=f"r{k}"))
            events.append(_event(user, at + 90, "dwell", value=70.0, request_id=f"r{k}"))
    store.log_impressions(impressions)
    store.append_events(events)
    record = ExperimentRecord(parse_experiment(EXPERIMENT), created_at=t - 10)
    report = experiment_report(store, record, semantics=SEM, now=NOW)
    arms = {a["arm"]: a for a in report["arms"]}
    assert arms["control"]["sessions"] == arms["treatment"]["sessions"] == 20
    assert arms["control"]["bounce_rate"]["estimate"] == 1.0
    assert arms["treatment"]["bounce_rate"]["estimate"] == 0.0
    assert arms["treatment"]["mean_dwell"]["estimate"] == pytest.approx(70.0)
    assert arms["control"]["mean_dwell"]["estimate"] == 0.0
    assert {c["metric"] for c in report["comparisons"]} >= {"bounce_rate", "mean_dwell"}
    # the clock decides: at t + 1270 only sessions idle since t + 670 (the gap,
    # 600 s) are over: control's k = 0..22 (12), treatment's last moment
    # t + 30k + 90 for k = 1..19 (10)
    early = experiment_report(store, record, semantics=SEM, now=t + 30 * 39 + 100)
    assert {a["arm"]: a["sessions"] for a in early["arms"]} == {"control": 12, "treatment": 10}


def test_prometheus_shows_dwell_per_arm_and_the_last_hour_of_sessions(store: SQLStore) -> None:
    from sieve.monitoring.metrics import ServingMetrics

    metrics = ServingMetrics(click_types=("click",), dwell_types=("dwell",))
    metrics.served(_served("r1", "a", NOW - 900, "treatment"))
    metrics.events_ingested(
        [
            _event("a", NOW - 880, "dwell", value=45.0, request_id="r1"),
            _event("b", NOW - 870, "dwell", value=5.0),
        ]
    )
    store.log_impressions([_served("r1", "a", NOW - 900, "treatment")])
    store.append_events([_event("a", NOW - 895), _event("b", NOW - 880)])
    clock = [NOW]
    recent = RecentSessions(store, SEM, clock=lambda: clock[0], refresh=30.0)
    metrics.watch_sessions(recent)
    text = generate_latest(metrics.registry).decode()
    assert 'sieve_dwell_seconds_sum{arm="treatment",experiment="exp"} 45.0' in text
    assert 'sieve_dwell_seconds_sum{arm="none",experiment="none"} 5.0' in text
    # a: list + event 5 s apart (bounce), b: one event (bounce): both ended (gap 600 s)
    assert 'sieve_sessions{state="started"} 2.0' in text
    assert 'sieve_sessions{state="bounced"} 2.0' in text
    assert "sieve_bounce_rate 1.0" in text
    # cached: a new session within the refresh interval shows at the next read
    store.append_events([_event("c", NOW - 700), _event("c", NOW - 650)])
    clock[0] = NOW + 10
    assert 'sieve_sessions{state="started"} 2.0' in generate_latest(metrics.registry).decode()
    clock[0] = NOW + 40
    text = generate_latest(metrics.registry).decode()
    assert 'sieve_sessions{state="started"} 3.0' in text
    assert 'sieve_sessions{state="bounced"} 2.0' in text


def test_dwell_events_are_checked_attributed_and_on_the_dashboard(make_client: Any) -> None:
    client = make_client()
    assert client.post("/items", json={"id": "i1", "title": "x"}).is_success
    bad = client.post(
        "/events",
        json={"events": [{"id": "e0", "user_id": "a", "item_id": "i1", "type": "dwell"}]},
    )
    assert bad.status_code == 422 and "seconds" in bad.text
    negative = {"id": "e1", "user_id": "a", "item_id": "i1", "type": "dwell", "value": -3}
    assert client.post("/events", json={"events": [negative]}).status_code == 422
    service = client.app.state.service
    service.store.log_impressions([_served("r9", "a", time.time() - 5)])
    ok = [
        {"id": "e2", "user_id": "a", "item_id": "i1", "type": "view"},
        {"id": "e3", "user_id": "a", "item_id": "i1", "type": "dwell", "value": 12.5},
    ]
    assert client.post("/events", json={"events": ok}).status_code == 200
    # the dwell cites the list that showed the item, as a click would
    stored = {e.id: e.request_id for e in service.store.user_events("a")}
    assert stored == {"e2": None, "e3": "r9"}
    kpis = client.get("/dashboard/api/kpis", params={"minutes": 60, "bucket_seconds": 60})
    assert kpis.status_code == 200, kpis.text
    totals = kpis.json()["totals"]
    assert totals["dwell_events"] == 1 and totals["mean_dwell_seconds"] == 12.5
    assert totals["sessions"] == 1 and totals["ended_sessions"] == 0
    assert totals["bounce_rate"] is None
    assert sum(b["sessions"] for b in kpis.json()["series"]) == 1
