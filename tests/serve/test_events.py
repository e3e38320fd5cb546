"""`POST /events`: idempotent, atomic, bounded, checked — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]


def _event(i: int, item: str = "a", user: str = "u1", kind: str = "click") -> dict[str, Any]:
    return {"id": f"e{i}", "user_id": user, "item_id": item, "type": kind}


@pytest.fixture
def client(make_client: MakeClient, store_url: str) -> TestClient:
    c = make_client(store_url=store_url, max_batch=5)
    assert c.post("/items/bulk", json={"items": [{"id": "a"}, {"id": "b"}]}).status_code == 200
    return c


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


def test_one_event_and_a_batch(client: TestClient) -> None:
    one = client.post("/events", json={"events": [_event(1)]})
    assert one.status_code == 200, one.text
    assert one.json() == {"received": 1, "inserted": 1, "duplicates": 0, "duplicate_ids": []}
    batch = client.post("/events", json={"events": [_event(2, "b"), _event(3, kind="view")]})
    assert batch.json()["inserted"] == 2
    stored = _engine(client).store.user_events("u1")
    assert {e.id for e in stored} == {"e1", "e2", "e3"}


def test_same_id_twice_is_stored_once(client: TestClient) -> None:
    first = client.post("/events", json={"events": [_event(1), _event(1)]})
    assert first.json() == {"received": 2, "inserted": 1, "duplicates": 1, "duplicate_ids": ["e1"]}
    again = client.post("/events", json={"events": [_event(1), _event(2)]})
    assert again.json() == {"received": 2, "inserted": 1, "duplicates": 1, "duplicate_ids": ["e1"]}
    assert _engine(client).store.count_events() == 2


def test_one_bad_event_stores_nothing(client: TestClient) -> None:
    bad_type = client.post("/events", json={"events": [_event(1), _event(2, kind="like")]})
    assert bad_type.status_code == 422
    detail = bad_type.json()["detail"]
    assert detail[0]["loc"] == ["body", "events", 1, "type"]
    assert "'like'" in detail[0]["msg"]
    assert "click" in detail[0]["msg"] and "purchase" in detail[0]["msg"]  # lists the allowed

    unknown_item = client.post("/events", json={"events": [_event(3), _event(4, item="zz")]})
    assert unknown_item.status_code == 422
    assert unknown_item.json()["detail"][0]["loc"] == ["body", "events", 1, "item_id"]
    assert "'zz'" in unknown_item.json()["detail"][0]["msg"]

    malformed = client.post("/events", json={"events": [_event(5), {**_event(6), "value": "x"}]})
    assert malformed.status_code == 422
    assert _engine(client).store.count_events() == 0


def test_oversized_batch_is_413_naming_the_limit(client: TestClient) -> None:
    response = client.post("/events", json={"events": [_event(i) for i in range(6)]})
    assert response.status_code == 413
    assert "5" in response.json()["detail"]
    assert _engine(client).store.count_events() == 0


def test_unknown_user_is_created(client: TestClient) -> None:
    assert client.get("/users/newbie").status_code == 404
    client.post("/users", json={"id": "known", "attributes": {"plan": "pro"}})
    response = client.post(
        "/events", json={"events": [_event(1, user="newbie"), _event(2, user="known")]}
    )
    assert response.status_code == 200
    assert client.get("/users/newbie").json() == {"id": "newbie", "attributes": {}}
    # an existing user's attributes are kept
    assert client.get("/users/known").json()["attributes"] == {"plan": "pro"}


def test_new_events_mark_the_users_last_event(client: TestClient) -> None:
    """The last-event time (which retires a precomputed list) moves with new
    events only, not with a duplicate."""
    cache = _engine(client).cache
    client.post("/events", json={"events": [_event(1, "a"), _event(2, "b", kind="cart")]})
    first = cache.get("last_event:u1")
    assert first is not None
    client.post("/events", json={"events": [_event(2, "b", kind="cart")]})  # duplicate
    assert cache.get("last_event:u1") == first


def test_event_fields_are_validated(client: TestClient) -> None:
    cases = [
        ({"events": []}, ["body", "events"]),
        ({"events": [{**_event(1), "value": "nan"}]}, ["body", "events", 0, "value"]),
        ({"events": [{**_event(1), "timestamp": "yesterday"}]}, ["body", "events", 0, "timestamp"]),
        ({"events": [{**_event(1), "id": ""}]}, ["body", "events", 0, "id"]),
        ({"events": [{**_event(1), "type": "Click!"}]}, ["body", "events", 0, "type"]),
        ({"event": [_event(1)]}, None),
    ]
    for body, loc in cases:
        response = client.post("/events", json=body)
        assert response.status_code == 422, (body, response.text)
        if loc is not None:
            assert response.json()["detail"][0]["loc"] == loc, body
