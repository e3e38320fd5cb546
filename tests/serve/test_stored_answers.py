"""Kept live answers and the hot path that serves stored answers.

A plain request's live answer is kept as the user's stored list
(`answer_ttl_seconds`) until the user's next event or attribute change; the
hot path (`sieve.serve.hotpath`) serves it without the framework, with the
same body, headers, checks and metrics as the route."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import redis
from fastapi.testclient import TestClient
from starlette.routing import Router

from servers import REDIS_URL, GatedImpressions
from sieve.serve import answers
from sieve.serve.answers import CachedAnswer
from sieve.serve.impressions import ImpressionLogger
from sieve.serve.schemas import RecommendationList
from sieve.serve.service import Service
from sieve.storage import StoreUnavailable, open_store

MakeClient = Callable[..., TestClient]
USER = "u001"


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


def _get(client: TestClient, user: str = USER, **params: Any) -> dict[str, Any]:
    response = client.get(f"/recommendations/{user}", params={"n": 10, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _ids(body: dict[str, Any]) -> list[str]:
    return [i["id"] for i in body["items"]]


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_live_answer_is_kept_until_the_user_changes(
    serve: MakeClient, backend: str, request: pytest.FixtureRequest
) -> None:
    cache_url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    client = serve(cache_url=cache_url)
    live = _get(client)
    assert live["cached"] is False
    again = client.get(f"/recommendations/{USER}", params={"n": 10})
    kept = again.json()
    assert kept["cached"] is True and _ids(kept) == _ids(live)
    assert kept["request_id"] != live["request_id"]
    assert again.headers["X-Sieve-Model"] == live["model_version"]
    assert "app;dur=" in again.headers["Server-Timing"]
    served = RecommendationList.model_validate(kept)
    assert [i.model_dump(exclude={"contributions"}) for i in served.items] == [
        {k: v for k, v in i.items() if k != "contributions"} for i in live["items"]
    ]
    # its impression is logged, as every served list's is
    engine = _engine(client)
    engine.impressions.flush()
    logged = engine.store.get_impression(kept["request_id"])
    assert logged is not None and [x.item_id for x in logged.items] == _ids(kept)
    # a shorter list is the kept one's head; a longer one is live
    assert _ids(_get(client, n=4)) == _ids(live)[:4]
    assert _get(client, n=20)["cached"] is False

    # an event of the user makes it stale …
    event = {"id": "kept-1", "user_id": USER, "item_id": _ids(live)[0], "type": "purchase"}
    assert client.post("/events", json={"events": [event]}).status_code == 200
    after = _get(client)
    assert after["cached"] is False and _ids(live)[0] not in _ids(after)
    assert _get(client)["cached"] is True
    # … and so does a change of their attributes, which the ranker may read
    patch = {"attributes": {"favourite_categories": ["drama"]}}
    assert client.patch(f"/users/{USER}", json=patch).status_code == 200
    assert _get(client)["cached"] is False


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_remote_cache_keeps_the_answer_once_the_deferred_work_runs(
    serve: MakeClient, backend: str, request: pytest.FixtureRequest
) -> None:
    """The route hands keeping to the response's background tasks: with Redis
    the client does not wait for the write, and until it runs nothing is kept;
    a process-local cache keeps the answer at once (cheaper than a task)."""
    cache_url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    client = serve(cache_url=cache_url)
    engine = _engine(client)
    pending: list[Callable[[], None]] = []
    live = engine.recommend_user(USER, 10, defer=pending.append)
    if backend == "memory":
        assert pending == [] and engine.cache.get(answers.recs_key(USER)) is not None
        return
    assert len(pending) == 1
    assert engine.cache.get(answers.recs_key(USER)) is None
    assert _get(client)["cached"] is False  # not kept yet: answered live (and kept now)
    engine.cache.delete(answers.recs_key(USER))
    pending.pop()()
    kept = _get(client)
    assert kept["cached"] is True and _ids(kept) == [i.id for i in live.items]


def test_a_kept_answer_showing_an_edited_item_is_answered_live(serve: MakeClient) -> None:
    client = serve()
    live = _get(client)
    assert _get(client)["cached"] is True
    # an item the list does not show changes nothing
    shown = set(_ids(live))
    other = next(
        i["id"]
        for i in client.get("/items", params={"limit": 100}).json()["items"]
        if i["id"] not in shown
    )
    assert client.patch(f"/items/{other}", json={"title": "elsewhere"}).status_code == 200
    assert _get(client)["cached"] is True
    # a shown item's new title: the kept list would show the old one
    item = _ids(live)[3]
    assert client.patch(f"/items/{item}", json={"title": "A new title"}).status_code == 200
    after = _get(client)
    assert after["cached"] is False
    titles = {i["id"]: i["title"] for i in after["items"]}
    assert titles.get(item, "A new title") == "A new title"
    kept = _get(client)  # the new answer is kept in its turn
    assert kept["cached"] is True and _ids(kept) == _ids(after)


def test_only_plain_requests_keep_their_answer(serve: MakeClient) -> None:
    client = serve()
    # filters, context or an explanation change the answer: neither kept nor served kept
    for params in ({"categories": "drama"}, {"hour": 9}, {"explain": True}):
        assert _get(client, **params)["cached"] is False
        assert _get(client, **params)["cached"] is False
    assert _get(client)["cached"] is False  # nothing was kept by the requests above
    assert _get(client)["cached"] is True
    assert _get(client, categories="drama")["cached"] is False
    # off: every request is live
    off = serve(answer_ttl_seconds=0)
    assert [_get(off, user="u002")["cached"] for _ in range(3)] == [False, False, False]


def test_kept_answers_expire(serve: MakeClient, redis_url: str) -> None:
    client = serve(cache_url=redis_url, answer_ttl_seconds=120)
    _get(client)
    prefix = parse_qs(urlparse(redis_url).query)["prefix"][0]
    remaining = redis.Redis.from_url(REDIS_URL).pttl(f"{prefix}recs:{USER}")
    assert 0 < remaining <= 120_000


def test_a_cold_start_answer_stays_marked_cold(serve: MakeClient) -> None:
    client = serve()
    first = _get(client, user="somebody-new")
    second = _get(client, user="somebody-new")
    assert first["cold_start"] is True and second["cold_start"] is True
    assert second["cached"] is True and _ids(second) == _ids(first)


def test_the_hot_path_checks_what_the_route_checks(
    serve: MakeClient, headers: dict[str, dict[str, str]]
) -> None:
    client = serve()
    assert _get(client)["cached"] is False
    assert _get(client)["cached"] is True  # stored: the hot path can answer
    path = f"/recommendations/{USER}"
    no_key = client.get(path, headers={"Authorization": ""})
    assert no_key.status_code == 401 and "missing API key" in no_key.json()["detail"]
    bad = client.get(path, headers={"Authorization": "Bearer sk_wrong"})
    assert bad.status_code == 401 and "invalid API key" in bad.json()["detail"]
    unprefixed = client.get(path, headers={"Authorization": "sk_wrong"})
    assert unprefixed.status_code == 401 and "Bearer" in unprefixed.json()["detail"]
    write_only = client.get(path, headers=headers["write"])
    assert write_only.status_code == 403 and "'read'" in write_only.json()["detail"]
    assert client.get(path, headers=headers["read"]).json()["cached"] is True
    for n in ("0", "201", "ten", "-1"):
        response = client.get(path, params={"n": n})
        assert response.status_code == 422, (n, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", "n"]
    too_long = client.get(f"/recommendations/{'x' * 300}")
    assert too_long.status_code == 422
    # the impression log's drops are exported as they stand at each scrape
    assert "sieve_impression_log_dropped 0.0" in client.get("/metrics").text
    _engine(client).impressions.dropped = 3
    assert "sieve_impression_log_dropped 3.0" in client.get("/metrics").text
    _engine(client).impressions.dropped = 0
    # the answers it gives are counted under the route, as the route's are
    before = _served_ok(client)
    assert [_get(client)["cached"] for _ in range(3)] == [True, True, True]
    assert _served_ok(client) == before + 3


def test_a_plain_miss_is_answered_live_before_the_router(
    serve: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain request without a stored answer is answered live by the hot
    path, never reaching the router: the list the route gives the same
    request, kept after the response; its errors get the app's responses."""
    routed: list[str] = []
    route = Router.__call__

    async def spy(self: Router, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            routed.append(f"{scope['path']}?{scope['query_string'].decode()}")
        await route(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", spy)
    client = serve(answer_ttl_seconds=0)  # nothing kept: every answer is live
    hot = _get(client)
    assert hot["cached"] is False and routed == []
    # the route's own live answer to the same request (a parameter the hot path leaves to it)
    through_route = _get(client, explain="false")
    assert routed == [f"/recommendations/{USER}?n=10&explain=false"]
    assert [(i["id"], i["score"]) for i in hot["items"]] == [
        (i["id"], i["score"]) for i in through_route["items"]
    ]
    assert hot.keys() == through_route.keys()

    kept = serve()  # kept once sent, from the hot path as from the route
    assert _get(kept)["cached"] is False
    assert _get(kept)["cached"] is True

    # an error of the live answer: the app's handler answers it (503, Retry-After)
    def outage(*_: Any, **__: Any) -> None:
        raise StoreUnavailable("the store did not answer")

    monkeypatch.setattr(_engine(client), "recommend_user", outage)
    failed = client.get(f"/recommendations/{USER}", params={"n": 10})
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    assert "retry later" in failed.json()["detail"]
    assert len(routed) == 1  # answered before the router, errors too


def _served_ok(client: TestClient) -> float:
    """How many 2xx answers `/metrics` counts for the recommendations route."""
    wanted = (
        'sieve_http_request_duration_seconds_count{endpoint="/recommendations/{user_id}",'
        'method="GET",status="2xx"}'
    )
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_random_slice_is_drawn_once(serve: MakeClient) -> None:
    client = serve(random_share=1.0)
    bodies = [_get(client) for _ in range(3)]
    # every request of a full random slice gets a random list, never a kept one
    assert all(b["cached"] is False for b in bodies)
    assert all(i["slot"] == "random" for b in bodies for i in b["items"])


def test_the_impression_backlog_is_bounded(tmp_path: Any) -> None:
    with open_store(f"sqlite:///{tmp_path / 'log.db'}") as store:
        gated = GatedImpressions(store)
        logger = ImpressionLogger(gated, flush_seconds=0.0, max_backlog=5)  # type: ignore[arg-type]
        answers = [
            CachedAnswer([{"id": "i1", "score": 1.0, "sources": {"ann": 1.0}}], f"r{k}", "v", "u")
            for k in range(12)
        ]
        now = datetime.now(UTC)
        logger.log(answers[0].impression(now), None)
        assert gated.entered.wait(30)  # the writer holds the first list
        for answer in answers[1:]:
            logger.log(answer.impression(now), None)
        # one in flight and four waiting: the other seven are dropped, counted
        assert logger.dropped == 7
        gated.gate.set()
        logger.flush()
        logged = [store.get_impression(f"r{k}") for k in range(12)]
        assert [x is not None for x in logged] == [True] * 5 + [False] * 7
        assert logged[0] is not None and logged[0].context == {"cached": True}
        assert [i.item_id for i in logged[0].items] == ["i1"]
        logger.close()
