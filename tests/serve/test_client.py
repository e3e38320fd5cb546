"""`sieve.client`: the typed Python client against the real app (catalog,
events in batches, recommendations parsed into the API's models, errors as
`SieveError`), its retries on 503 (honouring `Retry-After`, then giving up),
the async twin, and that importing it does not import the server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve.conftest import MakeClient
from sieve.api import RecommendationList
from sieve.client import AsyncSieveClient, SieveClient, SieveError
from sieve.data.records import Item

SRC = Path(__file__).resolve().parents[2] / "src"


def counting(http: httpx.Client) -> list[str]:
    """The requests `http` sends, as 'METHOD path'."""
    seen: list[str] = []
    http.event_hooks["request"].append(lambda r: seen.append(f"{r.method} {r.url.path}"))
    return seen


def test_catalog_and_events_round_trip_in_batches(make_client: MakeClient) -> None:
    http = make_client()
    sent = counting(http)
    client = SieveClient("http://testserver", http=http, batch_size=2)
    items = [Item(id=f"i{k}", title=f"item {k}") for k in range(5)]
    assert client.upsert_items(items) == 5
    assert client.upsert_users([{"id": "u1", "attributes": {"plan": "pro"}}]) == 1
    events = [
        {"id": f"e{k}", "user_id": "u1", "item_id": f"i{k % 5}", "type": "click"} for k in range(5)
    ]
    result = client.send_events([*events, events[0]])  # e0 again, in the last batch
    assert (result.received, result.inserted, result.duplicates) == (6, 5, 1)
    assert result.duplicate_ids == ["e0"]
    assert sent.count("POST /items/bulk") == 3 and sent.count("POST /events") == 3

    item = client.get_item("i3")
    assert isinstance(item, Item) and item.title == "item 3"
    assert client.get_item("nope") is None
    assert client.list_items(limit=2).total == 5
    user = client.get_user("u1")
    assert user is not None and user.attributes == {"plan": "pro"}
    with pytest.raises(SieveError) as bad:
        client.send_events([{"id": "x", "user_id": "u1", "item_id": "i404", "type": "click"}])
    assert bad.value.status == 422
    assert "unknown item id 'i404'" in bad.value.detail[0]["msg"]


def test_recommendations_are_the_api_models(serve: MakeClient) -> None:
    client = SieveClient("http://testserver", http=serve())
    listed = client.recommend("u001", n=5, context={"device": "mobile"})
    assert isinstance(listed, RecommendationList) and len(listed.items) == 5
    assert listed.user_id == "u001" and listed.request_id
    first = listed.items[0].id
    similar = client.similar(first, n=3)
    assert similar.item_id == first and len(similar.items) == 3
    assert len(client.popular(n=4).items) == 4
    assert client.health().status == "ok" and client.ready().ready
    with pytest.raises(SieveError) as missing:
        client.similar("no-such-item")
    assert missing.value.status == 404


def test_a_newer_servers_extra_fields_are_ignored(serve: MakeClient) -> None:
    """A server one version ahead may add fields to its answers: this client
    still reads them (request bodies stay strict)."""
    real = serve()

    def newer(request: httpx.Request) -> httpx.Response:
        answer = real.request(request.method, str(request.url), headers=request.headers)
        body = answer.json()
        body["added_later"] = {"x": 1}
        for item in body.get("items", []):
            item["badge"] = "new"
        return httpx.Response(answer.status_code, json=body)

    http = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(newer))
    listed = SieveClient("http://testserver", http=http).recommend("u001", n=3)
    assert len(listed.items) == 3 and listed.user_id == "u001"


def scripted(answers: list[Any]) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering from `answers` in turn (a status, (status,
    headers), or an exception to raise); records the paths asked."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        body = {"status": "ok"} if status == 200 else {"detail": "the store is unavailable"}
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handle), asked


def test_retries_503_honouring_retry_after_then_gives_up() -> None:
    waits: list[float] = []
    transport, asked = scripted(
        [(503, {"Retry-After": "2"}), httpx.ConnectError("refused"), 503, 200]
    )
    http = httpx.Client(base_url="http://x", transport=transport)
    client = SieveClient("http://x", http=http, sleep=waits.append, backoff=0.1, max_backoff=1)
    assert client.health().status == "ok"
    assert len(asked) == 4
    assert waits[0] == 2.0  # the service's Retry-After
    assert 0 <= waits[1] <= 0.2 and 0 <= waits[2] <= 0.4  # jittered exponential backoff

    waits.clear()
    transport, asked = scripted([503, 503, 503])
    http = httpx.Client(base_url="http://x", transport=transport)
    client = SieveClient("http://x", http=http, sleep=waits.append, retries=2)
    with pytest.raises(SieveError) as gave_up:
        client.health()
    assert gave_up.value.status == 503 and len(asked) == 3 and len(waits) == 2

    transport, asked = scripted([404])
    http = httpx.Client(base_url="http://x", transport=transport)
    with pytest.raises(SieveError):
        SieveClient("http://x", http=http, sleep=waits.append).health()
    assert len(asked) == 1  # not a "retry later" answer


def test_async_client_batches_and_retries() -> None:
    posted: list[int] = []
    failures = [503]

    def handle(request: httpx.Request) -> httpx.Response:
        if failures:
            return httpx.Response(failures.pop(), headers={"Retry-After": "0"}, json={})
        n = len(httpx.Response(200, content=request.content).json()["events"])
        posted.append(n)
        return httpx.Response(
            200, json={"received": n, "inserted": n, "duplicates": 0, "duplicate_ids": []}
        )

    async def main() -> Any:
        http = httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(handle))
        async with AsyncSieveClient("http://x", http=http, batch_size=3) as client:
            events = [
                {"id": f"e{k}", "user_id": "u", "item_id": "i", "type": "view"} for k in range(7)
            ]
            return await client.send_events(events)

    result = asyncio.run(main())
    assert result.inserted == 7 and posted == [3, 3, 1]


def test_the_client_does_not_import_the_server() -> None:
    code = (
        "import sys, sieve.client; "
        "bad = sorted(m for m in sys.modules if m.startswith(('sieve.serve', 'fastapi'))); "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
