"""`/items` and `/users`: CRUD, bulk upserts and their limits, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

MakeClient = Callable[..., TestClient]

SHOE: dict[str, Any] = {
    "id": "sku-1",
    "title": "Trail shoe",
    "text": "grippy sole",
    "categories": ["shoes", "running"],
    "created_at": "2024-03-01T12:00:00Z",
    "available": True,
    "attributes": {"price": 119.0},
}


def test_item_crud(make_client: MakeClient, store_url: str) -> None:
    client = make_client(store_url=store_url)
    created = client.post("/items", json=SHOE)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "sku-1"

    again = client.post("/items", json=SHOE)
    assert again.status_code == 409
    assert "sku-1" in again.json()["detail"]

    got = client.get("/items/sku-1")
    assert got.status_code == 200
    assert got.json() == {**SHOE, "created_at": "2024-03-01T12:00:00Z"}

    replaced = client.put("/items/sku-1", json={"id": "sku-1", "title": "Road shoe"})
    assert replaced.status_code == 200
    body = client.get("/items/sku-1").json()
    assert body["title"] == "Road shoe"
    assert body["categories"] == []  # PUT replaces every field

    patched = client.patch("/items/sku-1", json={"available": False, "categories": ["x"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "Road shoe"
    assert patched.json()["available"] is False
    assert client.get("/items/sku-1").json()["categories"] == ["x"]

    assert client.delete("/items/sku-1").status_code == 204
    missing = client.get("/items/sku-1")
    assert missing.status_code == 404
    assert "sku-1" in missing.json()["detail"]
    assert client.delete("/items/sku-1").status_code == 404
    assert client.patch("/items/sku-1", json={"title": "t"}).status_code == 404


def test_item_put_creates_and_checks_the_id(make_client: MakeClient) -> None:
    client = make_client()
    assert client.put("/items/new", json={"id": "new"}).status_code == 200
    assert client.get("/items/new").status_code == 200
    mismatch = client.put("/items/new", json={"id": "other"})
    assert mismatch.status_code == 422
    assert "other" in mismatch.json()["detail"][0]["msg"]


def test_item_list_pages_in_id_order(make_client: MakeClient, store_url: str) -> None:
    client = make_client(store_url=store_url)
    items = [{"id": f"i{k:02d}", "title": f"item {k}"} for k in range(25)]
    bulk = client.post("/items/bulk", json={"items": items})
    assert bulk.status_code == 200, bulk.text
    assert bulk.json() == {"upserted": 25}
    page = client.get("/items", params={"offset": 10, "limit": 5}).json()
    assert [i["id"] for i in page["items"]] == ["i10", "i11", "i12", "i13", "i14"]
    assert page["total"] == 25
    assert page["offset"] == 10 and page["limit"] == 5


def test_bulk_upsert_replaces_and_is_bounded(make_client: MakeClient, store_url: str) -> None:
    client = make_client(store_url=store_url, max_batch=3)
    first = client.post("/items/bulk", json={"items": [{"id": "a"}, {"id": "b"}]})
    assert first.json() == {"upserted": 2}
    # the last of a repeated id wins
    second = client.post(
        "/items/bulk", json={"items": [{"id": "a", "title": "x"}, {"id": "a", "title": "y"}]}
    )
    assert second.json() == {"upserted": 1}
    assert client.get("/items/a").json()["title"] == "y"

    too_many = client.post("/items/bulk", json={"items": [{"id": str(k)} for k in range(4)]})
    assert too_many.status_code == 413
    assert "3" in too_many.json()["detail"]
    assert client.get("/items/0").status_code == 404  # nothing of it stored

    users = client.post("/users/bulk", json={"users": [{"id": str(k)} for k in range(4)]})
    assert users.status_code == 413


def test_bulk_is_atomic_on_bad_record(make_client: MakeClient) -> None:
    client = make_client()
    bad = client.post("/items/bulk", json={"items": [{"id": "ok"}, {"id": ""}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "items", 1, "id"]
    assert client.get("/items/ok").status_code == 404


def test_user_crud(make_client: MakeClient, store_url: str) -> None:
    client = make_client(store_url=store_url)
    user = {"id": "u-1", "attributes": {"plan": "pro", "country": "DE"}}
    assert client.post("/users", json=user).status_code == 201
    assert client.post("/users", json=user).status_code == 409
    assert client.get("/users/u-1").json() == user

    patched = client.patch("/users/u-1", json={"attributes": {"plan": "free"}})
    assert patched.json()["attributes"] == {"plan": "free", "country": "DE"}

    assert client.put("/users/u-1", json={"id": "u-1"}).json() == {"id": "u-1", "attributes": {}}
    assert client.put("/users/u-1", json={"id": "u-2"}).status_code == 422

    bulk = client.post("/users/bulk", json={"users": [{"id": "u-2"}, {"id": "u-3"}]})
    assert bulk.json() == {"upserted": 2}
    page = client.get("/users", params={"limit": 2}).json()
    assert [u["id"] for u in page["users"]] == ["u-1", "u-2"]
    assert page["total"] == 3

    assert client.delete("/users/u-1").status_code == 204
    assert client.get("/users/u-1").status_code == 404
    assert client.delete("/users/u-1").status_code == 404
    assert client.patch("/users/u-1", json={}).status_code == 404


def test_unknown_fields_are_rejected(make_client: MakeClient) -> None:
    client = make_client()
    response = client.post("/items", json={"id": "a", "colour": "red"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "colour"]
    assert "input" not in response.json()["detail"][0]  # the input is not echoed
