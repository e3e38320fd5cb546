"""Two services in one test process standing for two replicas: what one
does reaches the other through the shared store and cache only (the fast
checks; `scaleout/` runs real server processes)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]
USER = "u001"


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _ids(response: Any) -> list[str]:
    return [i["id"] for i in response.json()["items"]]


def test_catalog_writes_reach_another_replica_through_the_change_sequence(
    serve: MakeClient,
) -> None:
    a, b = serve(catalog_poll_seconds=0), serve(catalog_poll_seconds=0)  # polled by hand
    new = {"id": "brand-new", "title": "Brand new", "text": "drama", "categories": ["drama"]}
    assert a.post("/items", json=new).status_code == 201
    assert a.get("/items/brand-new/similar").status_code == 200  # its own write: at once
    assert b.get("/items/brand-new/similar").status_code == 404  # not followed yet
    assert _service(b).follower.poll_catalog() >= 1
    assert b.get("/items/brand-new/similar", params={"n": 3}).status_code == 200
    top = _ids(b.get(f"/recommendations/{USER}", params={"n": 5}))
    assert a.delete(f"/items/{top[0]}").status_code == 204
    assert a.patch(f"/items/{top[1]}", json={"available": False}).status_code == 200
    assert _service(b).follower.poll_catalog() == 2
    after = _ids(b.get(f"/recommendations/{USER}", params={"n": 5}))
    assert top[0] not in after and top[1] not in after
    assert _service(b).follower.poll_catalog() == 0  # nothing new


def test_a_click_through_another_replica_credits_the_bandit_once(
    serve: MakeClient, redis_url: str
) -> None:
    a, b = serve(cache_url=redis_url), serve(cache_url=redis_url)
    spec = {
        "name": "alloc",
        "allocation": "thompson",
        "variants": [{"name": "p", "share": 0.5}, {"name": "q", "share": 0.5}],
    }
    assert a.post("/experiments", json=spec).status_code == 201
    _service(b).experiments.refresh(force=True)
    body = a.get(f"/recommendations/{USER}", params={"n": 3}).json()
    (arm,) = body["experiments"]
    event = {
        "user_id": USER,
        "item_id": body["items"][0]["id"],
        "type": "click",
        "request_id": body["request_id"],
    }
    for client in (b, a, b):  # the same click delivered three times, twice through b
        sent = client.post("/events", json={"events": [{**event, "id": uuid.uuid4().hex}]})
        assert sent.status_code == 200
    for client in (a, b):  # both replicas read the same stored state
        state = _service(client).experiments.allocation("alloc") or {}
        assert state[arm["arm"]] == {"requests": 1.0, "clicks": 1.0}


def test_every_response_names_the_model_version_that_served_it(serve: MakeClient) -> None:
    client = serve()
    version = _service(client).model_version
    assert version is not None
    for response in (
        client.get(f"/recommendations/{USER}"),
        client.post("/recommendations", json={"recent_items": ["i001"], "n": 3}),
        client.get("/popular"),
        client.get("/health"),
    ):
        assert response.headers["x-sieve-model"] == version
    body = client.get(f"/recommendations/{USER}").json()
    assert body["model_version"] == version
    assert client.get("/version").json()["replica"] == _service(client).replica
