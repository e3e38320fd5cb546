"""Every response is logged as an impression; a click cites its request, or is
attributed to the latest impression of that item within the window."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from servers import GatedImpressions
from sieve.serve.answers import CachedAnswer
from sieve.serve.impressions import ImpressionLogger
from sieve.serve.service import Service
from sieve.storage import open_store

MakeClient = Callable[..., TestClient]
USER = "u001"


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


def test_responses_are_logged_and_clicks_attributed(serve: MakeClient) -> None:
    client = serve()
    first = client.get(f"/recommendations/{USER}", params={"n": 5, "device": "mobile"}).json()
    second = client.get(f"/recommendations/{USER}", params={"n": 5}).json()
    engine = _engine(client)
    engine.impressions.flush()
    logged = engine.store.get_impression(first["request_id"])
    assert logged is not None
    assert [i.item_id for i in logged.items] == [i["id"] for i in first["items"]]
    assert [i.position for i in logged.items] == list(range(5))
    assert all(i.propensity == 1.0 and i.sources for i in logged.items)
    assert logged.model_version == first["model_version"] and logged.context["device"] == "mobile"

    # a click naming its request keeps it; one without is attributed to the
    # latest impression of that item to that user (the second response)
    shown_twice = next(
        i["id"] for i in second["items"] if i["id"] in {x["id"] for x in first["items"]}
    )
    only_first = [
        i["id"] for i in first["items"] if i["id"] not in {x["id"] for x in second["items"]}
    ]
    events = [
        {"id": "c1", "user_id": USER, "item_id": shown_twice, "type": "click"},
        {
            "id": "c2",
            "user_id": USER,
            "item_id": first["items"][0]["id"],
            "type": "click",
            "request_id": first["request_id"],
        },
        {"id": "v1", "user_id": USER, "item_id": shown_twice, "type": "view"},  # not attributed
    ]
    if only_first:
        events.append({"id": "c3", "user_id": USER, "item_id": only_first[0], "type": "click"})
    r = client.post("/events", json={"events": events})
    assert r.status_code in (200, 201), r.text
    frame = engine.store.events_frame().set_index("event_id")
    assert frame.loc["c1", "request_id"] == second["request_id"]
    assert frame.loc["c2", "request_id"] == first["request_id"]
    assert frame.loc["v1", "request_id"] is None
    if only_first:
        assert frame.loc["c3", "request_id"] == first["request_id"]


def test_a_click_is_attributed_to_a_list_still_waiting_to_be_written(serve: MakeClient) -> None:
    """The impression log's writes held back: a click on a listed item is
    attributed to its list from the queue, and the event batch neither
    waits for the log's write nor fails for it."""
    client = serve()
    engine = _engine(client)
    gated = GatedImpressions(engine.store)
    engine.impressions._store = gated  # type: ignore[assignment]
    try:
        shown = client.get(f"/recommendations/{USER}", params={"n": 3}).json()
        item = shown["items"][1]["id"]
        r = client.post(
            "/events",
            json={"events": [{"id": "q1", "user_id": USER, "item_id": item, "type": "click"}]},
        )
        assert r.status_code in (200, 201), r.text
        assert engine.store.get_impression(shown["request_id"]) is None  # not written yet
        frame = engine.store.events_frame().set_index("event_id")
        assert frame.loc["q1", "request_id"] == shown["request_id"]
    finally:
        gated.gate.set()
    engine.impressions.flush()
    assert engine.store.get_impression(shown["request_id"]) is not None
    assert engine.impressions.unwritten_shown({(USER, item)}) == []


def test_unwritten_lists_count_as_stored_for_attribution(tmp_path: Path) -> None:
    """`attribute_many` over stored and unwritten lists: the latest within
    the window wins wherever it is; another user's list never does."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"id": "i1", "score": 1.0, "sources": {"ann": 1.0}}]
    with open_store(f"sqlite:///{tmp_path / 'log.db'}") as store:
        store.log_impressions([CachedAnswer(rows, "old", "v", "u").impression(t0)()])
        gated = GatedImpressions(store)
        logger = ImpressionLogger(gated, flush_seconds=0.0)  # type: ignore[arg-type]
        logger.log(CachedAnswer(rows, "new", "v", "u").impression(t0 + timedelta(seconds=60)), "u")
        logger.log(
            CachedAnswer(rows, "other", "v", "w").impression(t0 + timedelta(seconds=90)), "w"
        )
        assert gated.entered.wait(30)  # the writer holds the first list
        clicks = [
            ("u", "i1", t0 + timedelta(seconds=70)),  # after both of u's lists: the new one
            ("u", "i1", t0 + timedelta(seconds=30)),  # before the new one: the stored one
            ("u", "i1", t0 + timedelta(seconds=500)),  # past both windows
            ("w", "i1", t0 + timedelta(seconds=95)),  # w's list, still in the queue
            ("w", "i2", t0 + timedelta(seconds=95)),  # not in it
        ]
        unwritten = logger.unwritten_shown({(u, i) for u, i, _ in clicks})
        assert sorted(rid for *_, rid in unwritten) == ["new", "other"]
        found = store.attribute_many(clicks, 120.0, unwritten)
        assert found == ["new", "old", None, "other", None]
        assert store.attribute_many(clicks, 120.0) == ["old", "old", None, None, None]
        gated.gate.set()
        logger.flush()
        assert logger.unwritten_shown({(u, i) for u, i, _ in clicks}) == []
        assert store.attribute_many(clicks, 120.0) == found  # the same, now from the store
        logger.close()


def test_click_outside_the_window_is_not_attributed(serve: MakeClient) -> None:
    client = serve(attribution_window_seconds=0.001)
    shown = client.get(f"/recommendations/{USER}", params={"n": 3}).json()["items"][0]["id"]
    import time

    time.sleep(0.05)
    client.post(
        "/events",
        json={"events": [{"id": "late", "user_id": USER, "item_id": shown, "type": "click"}]},
    )
    frame = _engine(client).store.events_frame().set_index("event_id")
    assert frame.loc["late", "request_id"] is None


def test_events_update_the_online_counters(serve: MakeClient) -> None:
    import time

    client = serve()
    item = client.get(f"/recommendations/{USER}", params={"n": 1}).json()["items"][0]
    events = [
        {"id": "oc1", "user_id": USER, "item_id": item["id"], "type": "view"},
        {"id": "oc2", "user_id": USER, "item_id": item["id"], "type": "click"},
    ]
    assert client.post("/events", json={"events": events}).status_code in (200, 201)
    engine = _engine(client)
    engine.flush_counters()  # counters are updated off the request path
    counters = engine.counters
    now = time.time()
    f = counters.item_features([item["id"]], now)
    assert f["view@1h"][0] == pytest.approx(1.0, rel=1e-3)
    assert f["click@1h"][0] == pytest.approx(1.0, rel=1e-3)
    u = counters.user_features(USER, now)
    assert u["recency_hours"] < 0.01
    assert any(u.get(f"affinity:{c}", 0) > 0 for c in item["categories"])


def test_a_list_that_cannot_be_built_is_dropped_and_the_writer_lives_on(tmp_path: Path) -> None:
    """A queued list whose function fails is dropped and counted, attribution
    skips it, and the lists around it are written: the writer's thread
    survives (it used to end, and every later list waited in vain)."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"id": "i1", "score": 1.0, "sources": {"ann": 1.0}}]

    def broken() -> Any:
        raise ValueError("a list that cannot be built")

    with open_store(f"sqlite:///{tmp_path / 'log.db'}") as store:
        gated = GatedImpressions(store)
        logger = ImpressionLogger(gated, flush_seconds=0.0)  # type: ignore[arg-type]
        logger.log(CachedAnswer(rows, "first", "v", "u").impression(t0), "u")
        assert gated.entered.wait(30)  # the writer holds the first list
        logger.log(broken, "u")
        logger.log(CachedAnswer(rows, "after", "v", "u").impression(t0), "u")
        shown = logger.unwritten_shown({("u", "i1")})
        assert sorted(rid for *_, rid in shown) == ["after", "first"]
        gated.gate.set()
        logger.flush()
        assert logger.dropped == 1
        assert store.get_impression("first") is not None
        assert store.get_impression("after") is not None
        logger.log(CachedAnswer(rows, "later", "v", "u").impression(t0), "u")
        logger.flush()
        assert store.get_impression("later") is not None
        logger.close()
