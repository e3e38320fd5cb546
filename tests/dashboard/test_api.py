"""The dashboard's JSON endpoints through the real app, with known answers:
KPI totals equal the requests served and the clicks sent; the registry and
the user inspector show what the store and the funnel hold; bad parameters
are 422 naming the parameter."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from sieve.serve.routes.dashboard import compute_kpis, kpi_window
from sieve.settings import EventSemantics

MakeClient = Callable[..., TestClient]


def _users(trained: Any, k: int) -> list[str]:
    """`k` users with between 25 and 100 events: history to show, and unseen items
    enough for full lists."""
    counts = trained.raw.events["user_id"].value_counts()
    return [str(u) for u in counts[(counts >= 25) & (counts < 100)].index[:k]]


def _event(user: str, item: str, kind: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": kind}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _kpis_when(client: TestClient, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The KPI answer once `done` holds (impressions are written off the request
    path, a moment after the response), or the last answer after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        r = client.get("/dashboard/api/kpis", params={"minutes": 60, "bucket_seconds": 60})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_kpis_count_served_lists_and_clicks_exactly(serve: MakeClient, trained: Any) -> None:
    client = serve()
    before = client.get("/dashboard/api/kpis").json()["totals"]
    assert before["impressions"] == before["requests"] == before["clicks"] == 0
    assert before["ctr"] is None and before["events"] == {}

    users = _users(trained, 4)
    served: list[dict[str, Any]] = []
    for k in range(7):  # N = 7 served lists
        r = client.get(f"/recommendations/{users[k % 4]}", params={"n": 5})
        assert r.status_code == 200, r.text
        served.append(r.json())
    shown = sum(len(s["items"]) for s in served)
    assert shown == 35

    # M = 3 clicks citing a served list; a view is an event but not a click; a
    # click on an item never shown to its user cites no request: not a click
    clicks = [
        _event(s["user_id"], s["items"][0]["id"], "click", s["request_id"]) for s in served[:3]
    ]
    never_shown = next(
        str(i)
        for i in trained.raw.items["item_id"]
        if all(str(i) != it["id"] for s in served if s["user_id"] == users[3] for it in s["items"])
    )
    others = [
        _event(users[0], served[0]["items"][1]["id"], "view"),
        _event(users[3], never_shown, "click"),
    ]
    r = client.post("/events", json={"events": clicks + others})
    assert r.status_code == 200 and r.json()["inserted"] == 5, r.text

    body = _kpis_when(client, lambda b: b["totals"]["impressions"] >= shown)
    totals = body["totals"]
    assert totals["impressions"] == shown
    assert totals["requests"] == 7
    assert totals["clicks"] == 3
    assert totals["ctr"] == pytest.approx(3 / shown)
    assert totals["events"] == {"click": 4, "view": 1}
    assert totals["users"] == 4

    series = body["series"]
    assert len(series) == 60 and body["bucket_seconds"] == 60 and body["minutes"] == 60
    assert [b["start"] for b in series] == [body["start"] + 60 * k for k in range(60)]
    assert (
        body["end"] == body["start"] + 3600 and body["start"] <= body["generated_at"] < body["end"]
    )
    for name in ("impressions", "requests", "clicks"):
        assert sum(b[name] for b in series) == totals[name]
    assert sum(b["events"].get("click", 0) for b in series) == 4
    assert body["click_types"] == ["click"]  # the settings' EventSemantics
    assert body["semantics"]["conversion_types"] == ["purchase"]


def test_kpi_params_are_checked(make_client: MakeClient) -> None:
    client = make_client()
    cases = {
        "minutes=0": "minutes",
        "minutes=10081": "minutes",
        "minutes=abc": "minutes",
        "bucket_seconds=0": "bucket_seconds",
        "bucket_seconds=86401": "bucket_seconds",
        "minutes=60&bucket_seconds=7200": "bucket_seconds",
        "minutes=10080&bucket_seconds=60": "bucket_seconds",
    }
    for query, param in cases.items():
        r = client.get(f"/dashboard/api/kpis?{query}")
        assert r.status_code == 422, (query, r.text)
        detail = r.json()["detail"]
        assert detail[0]["loc"] == ["query", param], (query, detail)
    too_many = client.get("/dashboard/api/kpis?minutes=10080&bucket_seconds=60").json()
    assert "at most 1440" in too_many["detail"][0]["msg"]
    assert "use a bucket of at least 420 s" in too_many["detail"][0]["msg"]
    wide = client.get("/dashboard/api/kpis?minutes=60&bucket_seconds=7200").json()
    assert "exceeds the window" in wide["detail"][0]["msg"]
    ok = client.get("/dashboard/api/kpis?minutes=10080&bucket_seconds=420")
    assert ok.status_code == 200 and len(ok.json()["series"]) == 1440


def test_json_endpoints_need_the_read_scope(make_client: MakeClient) -> None:
    closed = make_client(headers=None)
    for path in ("/dashboard/api/kpis", "/dashboard/api/models", "/dashboard/api/users/u1"):
        assert closed.get(path).status_code == 401, path
    meta = closed.get("/dashboard/api/meta")  # the page's first call: no key needed
    assert meta.status_code == 200 and meta.json()["open_read"] is False
    opened = make_client(headers=None, open_read=True)
    assert opened.get("/dashboard/api/kpis").status_code == 200
    assert opened.get("/dashboard/api/meta").json()["open_read"] is True


def test_meta_names_optional_endpoints_that_exist(make_client: MakeClient) -> None:
    client = make_client()
    meta = client.get("/dashboard/api/meta").json()
    paths = set(client.get("/openapi.json").json()["paths"])
    assert meta["features"]["experiments"] == ("/experiments" in paths)
    assert meta["features"]["monitoring"] == ("/monitoring/drift" in paths)
    assert meta["model_version"] is None and meta["max_n"] == 200
    assert meta["refresh_seconds"] > 0


def test_models_lists_the_registry(serve: MakeClient, trained: Any) -> None:
    body = serve().get("/dashboard/api/models").json()
    assert body["current"] == body["serving"] == trained.version
    [version] = body["versions"]
    assert version["version"] == trained.version and version["status"] == "promoted"
    assert version["current"] and version["serving"]
    assert version["data"]["events"] == len(trained.raw.events)
    assert isinstance(version["metrics"], dict)
    assert body["history"][0]["action"] == "promote"
    assert body["history"][0]["version"] == trained.version


def test_models_without_a_registry(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(model_dir=tmp_path / "no-models")
    body = client.get("/dashboard/api/models").json()
    assert body == {"current": None, "serving": None, "versions": [], "history": []}


def test_user_inspector_shows_events_list_and_features(serve: MakeClient, trained: Any) -> None:
    client = serve()
    user = _users(trained, 1)[0]
    item = str(trained.raw.items["item_id"].iloc[0])
    posted = _event(user, item, "click")
    assert client.post("/events", json={"events": [posted]}).status_code == 200
    client.app.state.service.flush_counters()  # type: ignore[attr-defined]

    body = client.get(f"/dashboard/api/users/{user}", params={"n": 6}).json()
    assert body["user_id"] == user and body["known"] is True
    assert body["cold_start"] is False and body["model_version"] == trained.version
    assert len(body["events"]) == 20  # the last 20, most recent first
    assert body["events"][0]["id"] == posted["id"]
    assert len(body["recommendations"]) == 6
    for it in body["recommendations"]:
        assert it["explanation"] and isinstance(it["sources"], dict) and it["sources"]
    assert body["recommendations_error"] is None
    assert body["features"]["events"] >= 1 and body["features"]["recency_hours"] < 1

    new = client.get("/dashboard/api/users/nobody-yet").json()
    assert new["known"] is False and new["cold_start"] is True and new["events"] == []
    assert new["features"]["recency_hours"] is None  # inf travels as null

    for n in (0, 201):
        assert client.get(f"/dashboard/api/users/{user}", params={"n": n}).status_code == 422


def test_user_inspector_without_a_model(make_client: MakeClient) -> None:
    body = make_client().get("/dashboard/api/users/u1").json()
    assert body["recommendations"] is None
    assert "no model trained yet" in body["recommendations_error"]


def test_page_and_assets_are_served_by_the_app(make_client: MakeClient) -> None:
    client = make_client(headers=None)
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard/static/dashboard.js"' in page.text
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = client.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        # nothing from another host: the page works without internet access
        for text in (asset.text, page.text):
            assert "https://" not in text and "//cdn" not in text
    assert client.get("/dashboard/static/index.html").status_code == 404
    assert client.get("/dashboard/static/..%2Fapp.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/dashboard/api/kpis" in paths and "/dashboard" not in paths


def test_compute_kpis_buckets_known_frames() -> None:
    start, end, count = kpi_window(1_000_095.0, minutes=5, bucket_seconds=60)
    assert (start, end, count) == (999_840.0, 1_000_140.0, 5)
    impressions = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r2", "r3", "old"],
            "user_id": ["a", "a", "b", None, "a"],
            "timestamp": [start + 1, start + 1, start + 61, start + 61, start - 1],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["a", "c", "b", "b", "a"],
            "type": ["click", "view", "click", "purchase", "click"],
            "request_id": ["r1", None, None, "r2", "r1"],
            "timestamp": np.array([start + 2, start + 3, start + 62, start + 299, end]),
        }
    )
    totals, series = compute_kpis(
        impressions,
        events,
        start=start,
        end=end,
        bucket_seconds=60,
        semantics=EventSemantics(click_types=("click", "purchase")),
    )
    assert [b.impressions for b in series] == [2, 2, 0, 0, 0]
    assert [b.requests for b in series] == [1, 2, 0, 0, 0]
    assert [b.clicks for b in series] == [1, 0, 0, 0, 1]  # b's click cites no request
    assert [b.users for b in series] == [2, 1, 0, 0, 1]
    assert series[0].ctr == 0.5 and series[2].ctr is None
    assert series[4].events == {"purchase": 1}
    assert totals.impressions == 4 and totals.requests == 3 and totals.clicks == 2
    assert totals.events == {"click": 2, "purchase": 1, "view": 1}
    assert totals.users == 3 and totals.ctr == 0.5
