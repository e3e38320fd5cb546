"""Bad input on every endpoint: a 4xx with a readable `{"detail": ...}`, never a 5xx.

The table runs against an app with no model: parameter and body validation
answer before any handler (so before the 503 of a missing model).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sieve.serve.app import create_app
from sieve.serve.auth import hash_key
from sieve.settings import ApiKey, Settings

MakeClient = Callable[..., TestClient]
LONG_ID = "x" * 300
EVENT = {"id": "e", "user_id": "u", "item_id": "a", "type": "click"}

# (method, path, params or None, json body or None, status, text the detail must contain)
CASES: list[tuple[str, str, dict[str, Any] | None, Any, int, str]] = [
    ("GET", "/items", {"limit": 0}, None, 422, "greater than or equal to 1"),
    ("GET", "/items", {"limit": 100_000}, None, 422, "1000"),
    ("GET", "/items", {"offset": -1}, None, 422, "offset"),
    ("GET", "/items", {"offset": "abc"}, None, 422, "valid integer"),
    ("GET", "/users", {"limit": 0}, None, 422, "limit"),
    ("GET", f"/items/{LONG_ID}", None, None, 422, "at most 256 characters"),
    ("GET", "/items/nope", None, None, 404, "'nope'"),
    ("GET", "/users/nope", None, None, 404, "'nope'"),
    ("DELETE", "/users/nope", None, None, 404, "'nope'"),
    ("POST", "/items", None, {"id": ""}, 422, "at least 1 character"),
    ("POST", "/items", None, {"id": "  "}, 422, "blank"),
    ("POST", "/items", None, {"id": LONG_ID}, 422, "at most 256"),
    ("POST", "/items", None, {"id": "x", "categories": "a"}, 422, "valid list"),
    ("POST", "/items", None, {"id": "x", "created_at": "soon"}, 422, "datetime"),
    ("POST", "/items", None, {"id": "x", "available": "maybe"}, 422, "boolean"),
    ("POST", "/items", None, {"id": "x", "attributes": []}, 422, "dictionary"),
    ("POST", "/items", None, [{"id": "x"}], 422, "dictionary"),
    ("PUT", "/items/a", None, {"id": "b"}, 422, "differs"),
    ("PATCH", "/items/a", None, {"nope": 1}, 422, "Extra inputs"),
    ("POST", "/items/bulk", None, {"items": []}, 422, "at least 1 item"),
    ("POST", "/users", None, {"id": "u", "attributes": "x"}, 422, "dictionary"),
    ("POST", "/users/bulk", None, {"users": "u"}, 422, "valid list"),
    ("PATCH", "/users/u", None, {"attributes": 1}, 422, "dictionary"),
    ("POST", "/events", None, {"events": [{**EVENT, "value": "inf"}]}, 422, "finite"),
    ("POST", "/events", None, {"events": [{**EVENT, "type": "x" * 40}]}, 422, "at most 32"),
    ("POST", "/events", None, {"events": [{**EVENT, "surprise": 1}]}, 422, "Extra inputs"),
    ("POST", "/events", None, {"events": [EVENT]}, 422, "unknown item id 'a'"),
    ("GET", "/recommendations/u", {"n": 0}, None, 422, "greater than or equal to 1"),
    ("GET", "/recommendations/u", {"n": 201}, None, 422, "200"),
    ("GET", "/recommendations/u", {"n": "ten"}, None, 422, "valid integer"),
    ("GET", "/recommendations/u", {"hour": 24}, None, 422, "23"),
    ("GET", "/recommendations/u", {"weekday": -1}, None, 422, "0"),
    ("GET", "/recommendations/u", {"device": ""}, None, 422, "at least 1"),
    ("GET", "/recommendations/u", {"categories": "x" * 200}, None, 422, "128"),
    ("POST", "/recommendations", None, {"n": 0}, 422, "greater than or equal to 1"),
    ("POST", "/recommendations", None, {"n": 201}, 422, "200"),
    ("POST", "/recommendations", None, {"recent_items": "a"}, 422, "valid list"),
    ("POST", "/recommendations", None, {"context": {"hour": 25}}, 422, "23"),
    ("POST", "/recommendations", None, {"context": {"mood": "x"}}, 422, "Extra inputs"),
    ("GET", "/items/a/similar", {"n": 0}, None, 422, "greater than or equal to 1"),
    ("GET", "/items/a/similar", {"n": 1000}, None, 422, "200"),
    ("GET", "/popular", {"n": -5}, None, 422, "greater than or equal to 1"),
    ("POST", "/admin/precompute", {"n": 0}, None, 422, "greater than or equal to 1"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app (no model) for the whole table: every case is rejected, nothing changes."""
    root = tmp_path_factory.mktemp("bad-input")
    admin = "sk_bad_input_admin"
    settings = Settings(
        store_url=f"sqlite:///{root / 'sieve.db'}",
        model_dir=root / "models",
        api_keys=(ApiKey(name="admin", key_hash=hash_key(admin), scopes=("admin",)),),
    )
    with TestClient(create_app(settings), headers={"X-API-Key": admin}) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "needle"),
    CASES,
    ids=[f"{m} {p[:30]} {json.dumps(q or b)[:40]}" for m, p, q, b, *_ in CASES],
)
def test_bad_input(
    client: TestClient,
    method: str,
    path: str,
    params: dict[str, Any] | None,
    body: Any,
    status: int,
    needle: str,
) -> None:
    response = client.request(method, path, params=params, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert needle in json.dumps(detail), detail


def test_bodies_that_are_not_json(client: TestClient) -> None:
    for content, kind in ((b"{not json", "json_invalid"), (b"", "missing")):
        response = client.post(
            "/items", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == kind


def test_body_over_the_size_limit_is_413(make_client: MakeClient) -> None:
    client = make_client(max_body_bytes=2048)
    big = {"items": [{"id": f"i{k}", "text": "x" * 100} for k in range(50)]}
    response = client.post("/items/bulk", json=big)
    assert response.status_code == 413
    assert "2048" in response.json()["detail"]
    assert "Server-Timing" in response.headers


def test_every_response_has_server_timing(make_client: MakeClient) -> None:
    client = make_client()
    for response in (client.get("/health"), client.get("/items/none"), client.get("/ready")):
        name, _, value = response.headers["Server-Timing"].partition(";dur=")
        assert name == "app" and float(value) >= 0


def test_every_request_body_has_an_openapi_example(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    bodies = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body is None:
                continue
            ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            assert schemas[ref].get("examples"), f"{method.upper()} {path}: {ref} has no example"
            bodies += 1
    assert bodies >= 10
