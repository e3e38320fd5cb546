"""Recommendations from a real trained funnel: per user, cold start, filters, the
precomputed cache (memory and Redis), sessions, similar, popular, probes."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sieve.serve.schemas import RecommendationList, RecommendedItem
from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]
USER = "u001"


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()["items"]]


@pytest.fixture
def client(serve: MakeClient) -> TestClient:
    return serve()


def test_known_user_gets_n_explained_items(client: TestClient, trained: Any) -> None:
    response = client.get(f"/recommendations/{USER}", params={"n": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == 7
    assert len({i["id"] for i in body["items"]}) == 7
    assert body["model_version"] == trained.version
    assert body["user_id"] == USER
    assert body["cached"] is False and body["cold_start"] is False
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    catalog = set(trained.raw.items["item_id"])
    for item in body["items"]:
        assert item["id"] in catalog
        assert item["explanation"]
        assert isinstance(item["sources"], dict) and item["sources"]
        assert isinstance(item["title"], str)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_gets_the_cold_start_list(client: TestClient) -> None:
    response = client.get("/recommendations/somebody-new", params={"n": 5})
    assert response.status_code == 200, response.text
    assert response.json()["cold_start"] is True
    assert len(_ids(response)) == 5
    assert client.get("/users/somebody-new").status_code == 404  # reading creates nothing


def test_category_filter_and_exclude(client: TestClient, trained: Any) -> None:
    categories = dict(
        zip(trained.raw.items["item_id"], trained.raw.items["categories"], strict=True)
    )
    wanted = "drama"
    response = client.get(f"/recommendations/{USER}", params={"n": 5, "categories": wanted})
    ids = _ids(response)
    assert ids and all(wanted in categories[i] for i in ids)
    assert all(wanted in i["categories"] for i in response.json()["items"])

    both = _ids(
        client.get(f"/recommendations/{USER}", params={"n": 8, "categories": "drama,comedy"})
    )
    assert all({"drama", "comedy"} & set(categories[i]) for i in both)
    repeated = client.get(
        f"/recommendations/{USER}",
        params=[("n", "8"), ("categories", "drama"), ("categories", "comedy")],
    )
    assert _ids(repeated) == both

    top = _ids(client.get(f"/recommendations/{USER}", params={"n": 3}))
    rest = _ids(client.get(f"/recommendations/{USER}", params={"n": 3, "exclude": top[:2]}))
    assert not set(top[:2]) & set(rest)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_precomputed_list_until_the_next_event(
    serve: MakeClient, backend: str, request: pytest.FixtureRequest
) -> None:
    cache_url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    client = serve(cache_url=cache_url)
    # a server answers once its counters hold the stored log (`/ready`); the
    # test client does not wait for that: fold before asking, so the live and
    # the precomputed list read the same counters
    _engine(client).flush_counters()
    live = client.get(f"/recommendations/{USER}", params={"n": 10}).json()
    assert live["cached"] is False

    assert _engine(client).precompute(20) == 200  # every user the model knows
    cached = client.get(f"/recommendations/{USER}", params={"n": 10}).json()
    assert cached["cached"] is True
    assert [i["id"] for i in cached["items"]] == [i["id"] for i in live["items"]]
    assert cached["request_id"] != live["request_id"]
    # the same shape and fields as a live list (no model is built for a hit)
    served = RecommendationList.model_validate(cached)
    assert served.experiments == [] and served.trace is None and "trace" not in cached
    assert [i.model_dump() for i in served.items] == [
        RecommendedItem.model_validate(i).model_dump() for i in live["items"]
    ]
    # … and its impression is logged, as every served list's is
    engine = _engine(client)
    engine.impressions.flush()
    logged = engine.store.get_impression(cached["request_id"])
    assert logged is not None
    assert [x.item_id for x in logged.items] == [i["id"] for i in cached["items"]]
    assert logged.context == {"cached": True} and logged.user_id == USER
    # filters, context or a longer list than precomputed change the answer: live
    for params in ({"n": 10, "categories": "drama"}, {"n": 10, "hour": 9}, {"n": 30}):
        assert client.get(f"/recommendations/{USER}", params=params).json()["cached"] is False

    event = {
        "id": "fresh-1",
        "user_id": USER,
        "item_id": live["items"][0]["id"],
        "type": "purchase",
    }
    assert client.post("/events", json={"events": [event]}).status_code == 200
    after = client.get(f"/recommendations/{USER}", params={"n": 10}).json()
    assert after["cached"] is False
    assert live["items"][0]["id"] not in [i["id"] for i in after["items"]]
    # other users keep their precomputed lists
    assert client.get("/recommendations/u002", params={"n": 10}).json()["cached"] is True


def test_a_new_model_version_bypasses_old_lists(client: TestClient) -> None:
    engine = _engine(client)
    engine.precompute(10)
    entry = engine.cache.get_json(f"recs:{USER}")
    engine.cache.set_json(f"recs:{USER}", {**entry, "model_version": "older"})
    assert client.get(f"/recommendations/{USER}").json()["cached"] is False


def test_session_recommendations(client: TestClient) -> None:
    body = {"recent_items": ["i010", "i011"], "n": 6, "context": {"device": "mobile"}}
    response = client.post("/recommendations", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["items"]) == 6 and data["user_id"] is None and data["cold_start"] is False
    assert client.post("/recommendations", json={"n": 3}).json()["cold_start"] is True

    unknown = client.post("/recommendations", json={"recent_items": ["i010", "nope"]})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "recent_items", 1]
    assert "'nope'" in unknown.json()["detail"][0]["msg"]


def test_similar_items(client: TestClient) -> None:
    response = client.get("/items/i010/similar", params={"n": 5})
    ids = _ids(response)
    assert len(ids) == 5 and "i010" not in ids
    assert response.json()["item_id"] == "i010"
    missing = client.get("/items/nope/similar")
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]


def test_popular(client: TestClient, trained: Any) -> None:
    assert len(_ids(client.get("/popular", params={"n": 5}))) == 5
    response = client.get("/popular", params={"n": 5, "categories": "comedy"})
    assert response.json()["categories"] == ["comedy"]
    assert all("comedy" in i["categories"] for i in response.json()["items"])


def test_catalog_writes_reach_the_model_at_once(client: TestClient) -> None:
    new = {"id": "brand-new", "title": "Brand new", "text": "drama drama", "categories": ["drama"]}
    assert client.post("/items", json=new).status_code == 201
    similar = client.get("/items/brand-new/similar", params={"n": 3})
    assert similar.status_code == 200 and len(_ids(similar)) == 3
    session = client.post("/recommendations", json={"recent_items": ["brand-new"], "n": 3})
    assert session.status_code == 200

    top = _ids(client.get(f"/recommendations/{USER}", params={"n": 5}))
    assert client.delete(f"/items/{top[0]}").status_code == 204
    assert top[0] not in _ids(client.get(f"/recommendations/{USER}", params={"n": 5}))
    assert client.patch(f"/items/{top[1]}", json={"available": False}).status_code == 200
    assert top[1] not in _ids(client.get(f"/recommendations/{USER}", params={"n": 5}))


def test_no_model_yet_is_503_saying_what_to_do(make_client: MakeClient) -> None:
    client = make_client()
    for response in (
        client.get("/recommendations/u1"),
        client.post("/recommendations", json={}),
        client.get("/items/a/similar"),
        client.get("/popular"),
        client.post("/admin/precompute"),
        client.post("/admin/reload"),
    ):
        assert response.status_code == 503, response.text
        assert "sieve train" in response.json()["detail"]
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False and "sieve train" in ready.json()["reason"]
    assert client.get("/version").json()["model_version"] is None


def test_probes_and_admin(client: TestClient, trained: Any) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["model_version"] == trained.version
    version = client.get("/version").json()
    assert version["model_version"] == trained.version and version["version"]
    reload = client.post("/admin/reload")
    assert reload.status_code == 200 and reload.json()["model_version"] == trained.version
    done = client.post("/admin/precompute", params={"n": 5})
    assert done.status_code == 200 and done.json()["users"] == 200
    assert client.get(f"/recommendations/{USER}", params={"n": 5}).json()["cached"] is True


def test_a_dead_cache_degrades_to_live_answers(serve: MakeClient) -> None:
    client = serve(cache_url="redis://127.0.0.1:1/0?socket_connect_timeout=0.2")
    event = {"id": "dead-cache-1", "user_id": USER, "item_id": "i010", "type": "click"}
    posted = client.post("/events", json={"events": [event]})
    assert posted.status_code == 200 and posted.json()["inserted"] == 1  # committed anyway
    response = client.get(f"/recommendations/{USER}", params={"n": 5})
    assert response.status_code == 200 and response.json()["cached"] is False
    assert client.post("/admin/precompute").status_code == 503


def test_a_store_outage_is_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from sieve.storage import StoreUnavailable

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("database at sqlite:///x: unable to open database file")

    store = _engine(client).store
    monkeypatch.setattr(store, "max_seq", down)
    monkeypatch.setattr(store, "get_item", down)
    ready = client.get("/ready")
    assert ready.status_code == 503 and "store not reachable" in ready.json()["reason"]
    item = client.get("/items/i010")
    assert item.status_code == 503 and "unavailable" in item.json()["detail"]


def test_a_reloaded_model_catches_up_with_the_catalog(client: TestClient) -> None:
    from sieve.data.records import Item

    top = _ids(client.get(f"/recommendations/{USER}", params={"n": 5}))
    store = _engine(client).store  # changes made while no service was watching:
    store.delete_item(top[0])
    store.upsert_items([Item(id="late", title="Late", text="drama", categories=["drama"])])
    assert client.post("/admin/reload").status_code == 200
    assert top[0] not in _ids(client.get(f"/recommendations/{USER}", params={"n": 5}))
    assert client.get("/items/late/similar", params={"n": 3}).status_code == 200
