"""Events and users written around the service (`sieve import`, `sieve
consume`) stamp their users changed in the servers' shared cache, so no
server keeps serving a stored answer those writes made stale."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from servers import REDIS_URL
from sieve.cli import app
from sieve.data.records import Item
from sieve.storage import open_cache, open_store
from sieve.storage.changes import last_change_key, mark_users_changed

runner = CliRunner()


@pytest.fixture
def cache_url(redis_url: str) -> str:
    """The shared Redis cache URL of its own prefix."""
    return redis_url


@pytest.fixture
def stream() -> Iterator[str]:
    """A stream of this test's own, removed afterwards (only it: tests running
    at the same time in other workers have theirs)."""
    name = f"sieve_stamp_stream_{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(name)
    client.close()


def _stamps(cache_url: str, users: list[str]) -> list[float | None]:
    cache = open_cache(cache_url)
    try:
        raw = cache.get_many([last_change_key(u) for u in users])
    finally:
        cache.close()
    return [None if r is None else float(r) for r in raw]


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with open_store(url) as store:
        store.upsert_items([Item(id=f"i{k}") for k in range(3)])
    return url


def test_an_import_stamps_the_users_of_its_events_and_of_its_users(
    tmp_path: Path, cache_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _store(tmp_path)
    monkeypatch.setenv("SIEVE_CACHE_URL", cache_url)
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,item_id,type,timestamp\nu1,i1,click,1700000000\nu2,i2,view,1700000001\n"
    )
    assert _stamps(cache_url, ["u1", "u2", "u3"]) == [None, None, None]
    result = runner.invoke(app, ["import", "events", str(events), "--store", url])
    assert result.exit_code == 0, result.output
    first = _stamps(cache_url, ["u1", "u2", "u3"])
    assert first[0] is not None and first[1] is not None and first[2] is None
    users = tmp_path / "users.csv"
    users.write_text('id,attributes\nu3,"{""tier"": ""gold""}"\n')
    result = runner.invoke(app, ["import", "users", str(users), "--store", url])
    assert result.exit_code == 0, result.output
    assert _stamps(cache_url, ["u3"])[0] is not None


def test_a_memory_cache_is_not_stamped_by_an_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _store(tmp_path)
    monkeypatch.setenv("SIEVE_CACHE_URL", "memory://")
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,type,timestamp\nu1,i1,click,1700000000\n")
    result = runner.invoke(app, ["import", "events", str(events), "--store", url])
    assert result.exit_code == 0, result.output  # no shared cache to stamp: nothing fails


def test_consumed_events_stamp_their_users(
    tmp_path: Path, cache_url: str, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _store(tmp_path)
    monkeypatch.setenv("SIEVE_CACHE_URL", cache_url)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        for user in ("c1", "c2"):
            client.xadd(
                stream, {"user_id": user, "item_id": "i1", "type": "click", "timestamp": "1.7e9"}
            )
    finally:
        client.close()
    result = runner.invoke(
        app,
        [
            "consume",
            "--stream",
            stream,
            "--group",
            "g",
            "--redis",
            REDIS_URL,
            "--store",
            url,
            "--max-events",
            "2",
            "--idle-exit",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 new events" in result.output
    assert all(s is not None for s in _stamps(cache_url, ["c1", "c2"]))


def test_a_stamp_is_one_round_trip_and_an_unreachable_cache_is_no_error() -> None:
    cache = open_cache("memory://")
    assert mark_users_changed(cache, ["a", "b", "a"], at=12.5)
    assert cache.get_many([last_change_key("a"), last_change_key("b")]) == [b"12.5", b"12.5"]
    down = open_cache("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        assert mark_users_changed(down, ["a"]) is False
    finally:
        down.close()
