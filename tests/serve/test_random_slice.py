"""The random slice in the serving path: the configured share of requests gets
a uniform list from the top candidates, with its propensities logged."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sieve.explore.random_slice import RandomSlice
from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]
USERS = [f"u{k:03d}" for k in range(1, 121)]


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


def test_share_is_honoured_and_propensities_logged(serve: MakeClient) -> None:
    client = serve(random_share=0.3, random_pool=30)
    engine = _engine(client)
    n, requests = 8, 160
    random_ids: list[str] = []
    shown_propensity: dict[str, float] = {}
    for k in range(requests):
        user = USERS[k % len(USERS)]
        body = client.get(f"/recommendations/{user}", params={"n": n}).json()
        slots = {i["slot"] for i in body["items"]}
        if not slots:  # a heavy user who has seen nearly every item
            continue
        assert slots in ({"ranked"}, {"random"}), slots  # a whole list, never a mix
        if slots == {"random"}:
            random_ids.append(body["request_id"])
            shown_propensity[body["request_id"]] = body["items"][0]["propensity"]
            pool = [i.id for i in engine.recommend_user(user, 30, log=False).items]
            ids = [i["id"] for i in body["items"]]
            assert len(ids) == min(n, len(pool)) and set(ids) <= set(pool)
            expect = pytest.approx(len(ids) / len(pool))
            assert all(i["propensity"] == expect for i in body["items"])
            assert body["experiments"] == []
    # 160 requests (a few heavy users without a list) at 0.3: ~48 expected, sd 5.8
    assert 22 <= len(random_ids) <= 74
    engine.impressions.flush()
    logged = engine.store.get_impression(random_ids[0])
    assert logged is not None
    assert all("random" in s.sources for s in logged.items)
    expected = shown_propensity[random_ids[0]]
    assert all(s.propensity == pytest.approx(expected) for s in logged.items)
    frame = engine.store.impressions_frame()
    tagged = frame[frame["sources"].map(lambda s: "random" in s)]
    assert set(tagged["request_id"]) == set(random_ids)


def test_random_slice_skips_precomputed_answers(serve: MakeClient) -> None:
    client = serve(random_share=1.0, random_pool=20)
    assert _engine(client).precompute(n=5, users=USERS[:10]) == 10
    for user in USERS[:10]:
        body = client.get(f"/recommendations/{user}", params={"n": 5}).json()
        assert body["cached"] is False
        assert {i["slot"] for i in body["items"]} == {"random"}


def test_off_by_default(serve: MakeClient) -> None:
    client = serve()
    for user in USERS[:20]:
        body = client.get(f"/recommendations/{user}", params={"n": 5}).json()
        assert all(i["slot"] != "random" for i in body["items"])


def test_fill_is_uniform_over_items_and_positions() -> None:
    """Every item of a pool of 10 is shown in about n/P of lists, at every
    position about equally often."""
    rs = RandomSlice(0.5, seed=0)
    counts = np.zeros((10, 4))
    for _ in range(4000):
        for pos, (item, p) in enumerate(rs.fill(list(range(10)), 4)):
            assert p == pytest.approx(0.4)
            counts[item, pos] += 1
    np.testing.assert_allclose(counts.sum(axis=1) / 4000, 0.4, atol=0.04)
    np.testing.assert_allclose(counts / 4000, 0.1, atol=0.025)
    draws = sum(rs.draw() for _ in range(2000))
    assert 900 <= draws <= 1100
    assert rs.fill([], 3) == [] and RandomSlice(0.0).draw() is False
    with pytest.raises(ValueError, match="share"):
        RandomSlice(1.5)


def test_dashboard_slices_and_offpolicy(serve: MakeClient, headers: dict[str, Any]) -> None:
    """The dashboard's views of the log: the random slice beside the policy,
    and a candidate estimated off-policy (admin only; clear 422s)."""
    client = serve(random_share=0.5, random_pool=20)
    served = {"random": 0, "ranked": 0}
    for k in range(120):
        user = USERS[k % len(USERS)]
        body = client.get(f"/recommendations/{user}", params={"n": 5}).json()
        if not body["items"]:
            continue
        served[body["items"][0]["slot"]] += 1
        first = body["items"][0]["id"]
        if k % 3 == 0:  # a click on the first slot of every third list
            event = {
                "id": uuid.uuid4().hex,
                "user_id": user,
                "item_id": first,
                "type": "click",
                "request_id": body["request_id"],
            }
            assert client.post("/events", json={"events": [event]}).status_code == 200
    got = client.get("/dashboard/api/slices", params={"minutes": 10}, headers=headers["read"])
    assert got.status_code == 200, got.text
    data = got.json()
    assert data["random"]["requests"] == served["random"]
    assert data["policy"]["requests"] == served["ranked"]
    assert 0 < data["random"]["ctr"] < 1 and data["random"]["low"] <= data["random"]["ctr"]
    assert data["random_share"] == 0.5
    body = {"candidates": ["current"], "minutes": 10, "slice": "random"}
    assert (
        client.post("/dashboard/api/offpolicy", json=body, headers=headers["read"]).status_code
        == 403
    )
    ope = client.post("/dashboard/api/offpolicy", json=body)
    assert ope.status_code == 200, ope.text
    result = ope.json()
    assert result["slice"] == "random" and result["random_requests"] == served["random"]
    assert {"ips", "snips", "dr"} <= set(result["candidates"]["current"]["estimates"])
    bad = client.post("/dashboard/api/offpolicy", json={**body, "candidates": ["nope!"]})
    assert bad.status_code == 422 and "not a model name" in bad.text
    assert client.post("/dashboard/api/offpolicy", json={"candidates": []}).status_code == 422
