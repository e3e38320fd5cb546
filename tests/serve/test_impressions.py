"""Every response is logged as an impression; a click cites its request, or is
attributed to the latest impression of that item within the window."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from sieve.serve.service import Service

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
