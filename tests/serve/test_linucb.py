"""LinUCB in the service: an experiment allocated by LinUCB sends each
request context to the arm that pays there, and exploration slots chosen by
LinUCB are credited by the clicks that cite them, in the shared cache."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from sieve.explore.slots import linucb_key
from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]
USERS = [f"u{k:03d}" for k in range(1, 121)]


def _click(client: TestClient, user: str, item: str, request_id: str) -> None:
    event = {
        "id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "type": "click",
        "request_id": request_id,
    }
    assert client.post("/events", json={"events": [event]}).status_code == 200


def test_linucb_allocation_learns_the_arm_of_each_context(serve: MakeClient) -> None:
    client = serve()
    spec = {
        "name": "by-device",
        "allocation": "linucb",
        "variants": [{"name": "desk", "share": 0.5}, {"name": "mob", "share": 0.5}],
    }
    assert client.post("/experiments", json=spec).status_code == 201, spec
    right: list[bool] = []
    for round_ in range(80):
        user = USERS[round_ % len(USERS)]
        device = "mobile" if round_ % 2 else "desktop"
        body = client.get(f"/recommendations/{user}", params={"n": 3, "device": device}).json()
        (arm,) = body["experiments"]
        assert arm["propensity"] == 1.0  # a deterministic choice
        pays = (arm["arm"] == "mob") == (device == "mobile")
        right.append(pays)
        if pays and body["items"]:  # each arm's lists get clicks on its own device only
            _click(client, user, body["items"][0]["id"], body["request_id"])
    assert not all(right[:10])  # it had to learn
    assert sum(right[-20:]) >= 18
    report = client.get("/experiments/by-device/report").json()
    assert report["srm"] is None  # adaptive: no sample-ratio check


def test_linucb_exploration_slots_are_credited_by_clicks(serve: MakeClient) -> None:
    client = serve(exploration_slots=2, exploration_policy="linucb")
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    config = service.funnel.config.linucb
    key = linucb_key(config)
    body = client.get("/recommendations/u005", params={"n": 6, "device": "tv"}).json()
    explored = [i for i in body["items"] if i["slot"] == "explore"]
    assert len(explored) == 2 and all(i["propensity"] == 1.0 for i in explored)
    model = service.explorer.linear(config).model()
    shown = model.A - config.ridge * np.eye(config.item_dim)
    assert shown[-1, -1] == 2.0  # the two shown slots' constant term
    assert not model.b.any()
    _click(client, "u005", explored[0]["id"], body["request_id"])
    _click(client, "u005", explored[0]["id"], body["request_id"])  # a repeat credits once
    after = service.explorer.linear(config).model()
    assert after.b[-1] == 1.0
    assert service.cache.hash_all(key)  # the state lives in the service's cache
