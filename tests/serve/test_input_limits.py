"""Bad input that once gave a 5xx or was silently accepted (issue 9).

- a category filter that matches no item (an `IndexError` → 500);
- far-future event timestamps (accepted; they pin the decayed counters);
- control characters in ids (a NUL → 500 on PostgreSQL), unbounded titles,
  texts and attribute maps;
- chunked request bodies (no Content-Length: `max_body_bytes` did not apply);
- request paths written raw into the access log (a `%0A` forged a log line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sieve.serve.launch import running_server

MakeClient = Callable[..., TestClient]
ITEM = {"id": "i1", "title": "A thing", "categories": ["tools"]}


def event(k: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"e{k}", "user_id": "u1", "item_id": "i1", "type": "click", **kw}


# ------------------------------------------------------- category filters
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/recommendations/u093?categories=nonexistent", None),
        ("GET", "/recommendations/u093?categories=nonexistent&n=3", None),
        ("GET", "/recommendations/new-user?categories=nonexistent", None),
        ("GET", "/popular?categories=nonexistent", None),
        ("POST", "/recommendations", {"recent_items": ["i076"], "categories": ["nonexistent"]}),
    ],
)
def test_category_filter_matching_no_item_is_an_empty_list(
    serve: MakeClient, method: str, path: str, body: Any
) -> None:
    client = serve()
    r = client.request(method, path, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []
    # a filter that matches some items still filters
    known = client.get("/recommendations/u093", params={"categories": "nonexistent,tools"})
    assert known.status_code == 200


# ------------------------------------------------------ future timestamps
def test_future_timestamps_are_refused_naming_the_event(make_client: MakeClient) -> None:
    client = make_client()
    assert client.post("/items", json=ITEM).status_code == 201
    soon = datetime.now(UTC) + timedelta(seconds=60)  # inside the default skew
    later = datetime.now(UTC) + timedelta(hours=2)
    batch = [
        event(0, timestamp=soon.isoformat()),
        event(1, timestamp="9999-12-31T00:00:00Z"),
        event(2),
        event(3, timestamp=later.isoformat()),
    ]
    r = client.post("/events", json={"events": batch})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [
        ["body", "events", 1, "timestamp"],
        ["body", "events", 3, "timestamp"],
    ]
    assert "9999-12-31" in detail[0]["msg"] and "max_future_skew_seconds" in detail[0]["msg"]
    # nothing of the batch was stored; without the bad events it goes in
    assert client.post("/events", json={"events": [batch[0], batch[2]]}).json()["inserted"] == 2


def test_future_skew_is_a_setting(make_client: MakeClient) -> None:
    client = make_client(max_future_skew_seconds=3 * 3600)
    assert client.post("/items", json=ITEM).status_code == 201
    later = datetime.now(UTC) + timedelta(hours=2)
    r = client.post("/events", json={"events": [event(0, timestamp=later.isoformat())]})
    assert r.status_code == 200, r.text


# ------------------------------------------------ ids and text lengths
@pytest.mark.parametrize("bad", ["u\x00x", "u\nx", "u\x1bx", "\x7f"])
def test_control_characters_in_ids_are_422_on_every_store(
    make_client: MakeClient, store_url: str, bad: str
) -> None:
    client = make_client(store_url=store_url)
    assert client.post("/items", json=ITEM).status_code == 201
    for body in (
        {"events": [{**event(0), "user_id": bad}]},
        {"events": [{**event(0), "item_id": bad}]},
        {"events": [{**event(0), "request_id": bad}]},
    ):
        r = client.post("/events", json=body)
        assert r.status_code == 422, r.text
        assert "control characters" in r.text
    r = client.post("/users", json={"id": bad})
    assert r.status_code == 422 and "control characters" in r.text
    r = client.post("/items", json={"id": "i2", "title": "nul \x00 inside"})
    assert r.status_code == 422 and "NUL" in r.text
    r = client.post("/users", json={"id": "u2", "attributes": {"note": "a\x00b"}})
    assert r.status_code == 422 and "NUL" in r.text
    assert client.get("/users", params={"limit": 10}).json()["total"] == 0  # none stored


def test_text_fields_have_length_limits(make_client: MakeClient) -> None:
    from sieve.data.records import (
        MAX_ATTRIBUTES_BYTES,
        MAX_CATEGORIES,
        MAX_TEXT_LENGTH,
        MAX_TITLE_LENGTH,
    )

    client = make_client()
    cases = [
        ({"id": "a", "title": "t" * (MAX_TITLE_LENGTH + 1)}, "title"),
        ({"id": "a", "text": "t" * (MAX_TEXT_LENGTH + 1)}, "text"),
        ({"id": "a", "categories": [f"c{k}" for k in range(MAX_CATEGORIES + 1)]}, "categories"),
        ({"id": "a", "categories": ["c" * 200]}, "categories"),
        ({"id": "a", "attributes": {"blob": "x" * MAX_ATTRIBUTES_BYTES}}, "attributes"),
    ]
    for body, field in cases:
        r = client.post("/items", json=body)
        assert r.status_code == 422, (field, r.text)
        assert field in str(r.json()["detail"][0]["loc"]), r.text
        r = client.post("/items/bulk", json={"items": [body]})
        assert r.status_code == 422, (field, r.text)
    assert client.post("/items", json={"id": "a"}).status_code == 201
    r = client.patch("/items/a", json={"title": "t" * (MAX_TITLE_LENGTH + 1)})
    assert r.status_code == 422, r.text
    r = client.post("/users", json={"id": "u", "attributes": {"x": "y" * MAX_ATTRIBUTES_BYTES}})
    assert r.status_code == 422 and "attributes" in r.text
    assert client.get("/items/a").json()["title"] == ""


# -------------------------------------------------------- chunked bodies
@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server process (so bodies really travel chunked) with a 2 KiB body limit."""
    root: Path = tmp_path_factory.mktemp("chunked")
    env = {"SIEVE_OPEN_READ": "true", "SIEVE_OPEN_WRITE": "true", "SIEVE_MAX_BODY_BYTES": "2048"}
    args = ["--store", f"sqlite:///{root / 'sieve.db'}", "--model-dir", str(root / "models")]
    with running_server([*args, "--no-access-log"], env=env, timeout=60) as url:
        yield url


def _chunks(body: bytes, size: int = 256) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_chunked_body_over_the_limit_is_413(small_server: str) -> None:
    import json

    items = [{"id": f"item-{k}", "title": "x" * 40} for k in range(60)]  # ~4 KB
    body = json.dumps({"items": items}).encode()
    assert len(body) > 2048
    with httpx.Client(base_url=small_server, timeout=30) as client:
        request = client.build_request(
            "POST",
            "/items/bulk",
            content=_chunks(body),
            headers={"content-type": "application/json"},
        )
        assert request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in request.headers
        r = client.send(request)
        assert r.status_code == 413, r.text
        assert "max_body_bytes" in r.json()["detail"]
        assert client.get("/items").json()["total"] == 0  # nothing stored
        # a chunked body under the limit is read as usual
        small = json.dumps({"items": items[:5]}).encode()
        ok = client.post(
            "/items/bulk", content=_chunks(small), headers={"content-type": "application/json"}
        )
        assert ok.status_code == 200, ok.text
        assert client.get("/items").json()["total"] == 5


def test_chunked_body_over_the_limit_in_process(make_client: MakeClient) -> None:
    """The same through the ASGI app alone (TestClient streams a generator body)."""
    client = make_client(max_body_bytes=1024)
    body = b'{"items": [' + b",".join(b'{"id": "a%d"}' % k for k in range(200)) + b"]}"
    r = client.post(
        "/items/bulk", content=_chunks(body, 100), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert client.get("/items").json()["total"] == 0


# ----------------------------------------------------------- access log
def test_client_text_is_escaped_in_the_access_log(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    with caplog.at_level(logging.INFO, logger="sieve.serve.access"):
        client.get("/items/x%0AGET%20/admin/reload%20200%201.0ms%20key=admin%0D%00")
    lines = [r.getMessage() for r in caplog.records if r.name == "sieve.serve.access"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert line.startswith("GET /items/x\\nGET\\x20/admin/reload\\x20200")
    assert line.split(" ")[2] == "404"  # the status stays the third field
