"""The Redis Stream consumer against the real Redis: events stored once,
bad entries set aside with their reason, and a consumer killed mid-stream
(`kill -9`, or a crash between commit and acknowledgement) losing and
duplicating nothing once another consumer takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from servers import REDIS_URL, redis_problem
from sieve.data.records import Item
from sieve.ingest.stream import StreamConsumer
from sieve.storage import SQLStore, open_store

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    """A stream of this test's own, removed afterwards (only it: tests running
    at the same time in other workers have theirs)."""
    name = f"sieve_test_stream_{uuid.uuid4().hex[:12]}"
    yield name
    client.delete(name, f"{name}:rejected")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    s = open_store(f"sqlite:///{tmp_path / 's.db'}")
    s.upsert_items([Item(id=f"i{k}") for k in range(5)])
    yield s
    s.close()


def produce(client: redis.Redis, stream: str, n: int, start: int = 0) -> list[str]:
    """n good events (ids: the entries' own) in one pipeline; returns the entry ids."""
    pipe = client.pipeline(transaction=False)
    for k in range(start, start + n):
        pipe.xadd(
            stream,
            {"user_id": f"u{k % 7}", "item_id": f"i{k % 5}", "type": "click", "timestamp": "1.7e9"},
        )
    return [str(i) for i in pipe.execute()]


def consumer(client: redis.Redis, store: SQLStore, stream: str, name: str, **kw: Any) -> Any:
    return StreamConsumer(client, store, stream=stream, group="g", consumer=name, block_ms=50, **kw)


def test_events_stored_once_and_bad_entries_set_aside(
    client: redis.Redis, store: SQLStore, stream: str
) -> None:
    ids = produce(client, stream, 5)
    client.xadd(stream, {"id": "own-1", "user_id": "u1", "item_id": "i1", "type": "cart"})
    client.xadd(
        stream, {"event": '{"id": "own-2", "user_id": "u2", "item_id": "i2", "type": "view"}'}
    )
    client.xadd(stream, {"id": "own-1", "user_id": "u1", "item_id": "i1", "type": "cart"})  # again
    bad = {
        client.xadd(stream, {"user_id": "u1", "item_id": "i404", "type": "click"}): "unknown item",
        client.xadd(stream, {"user_id": "u1", "item_id": "i1", "type": "hover"}): "unknown event",
        client.xadd(stream, {"user_id": "u1", "item_id": "i1"}): "type: Field required",
        client.xadd(stream, {"user_id": "u1", "item_id": "i1", "type": "click", "value": "x"}): (
            "value: Input should be a valid number"
        ),
        client.xadd(
            stream, {"user_id": "u1", "item_id": "i1", "type": "click", "timestamp": "4e9"}
        ): "timestamp too far",
    }
    totals = consumer(client, store, stream, "c1", batch=4).run(idle_exit=0.2)
    assert (totals.read, totals.inserted, totals.duplicates, totals.rejected) == (13, 7, 1, 5)
    stored = set(store.events_frame()["event_id"])
    assert stored == {f"{stream}:{i}" for i in ids} | {"own-1", "own-2"}
    set_aside = {f["entry"]: f["reason"] for _, f in client.xrange(f"{stream}:rejected")}
    assert set(set_aside) == set(bad)
    for entry, reason in bad.items():
        assert set_aside[entry].startswith(reason) or reason in set_aside[entry], set_aside[entry]
    assert client.xpending(stream, "g")["pending"] == 0


def test_crash_between_commit_and_ack_duplicates_nothing(
    client: redis.Redis, store: SQLStore, stream: str
) -> None:
    ids = produce(client, stream, 30)
    first = consumer(client, store, stream, "c1", batch=10)

    def crash(_: Any) -> None:
        raise ConnectionError("killed after the commit, before XACK")

    first.ack = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        first.run()
    assert store.count_events() == 10  # committed, not acknowledged
    assert client.xpending(stream, "g")["pending"] == 10
    # the same consumer restarted: its own pending entries come first
    again = consumer(client, store, stream, "c1", batch=10)
    assert [i for i, _ in again.next_batch()] == ids[:10]
    # another consumer claims what the dead one left pending, then reads on
    other = consumer(client, store, stream, "c2", batch=10, claim_idle_seconds=0)
    totals = other.run(idle_exit=0.2)
    assert (totals.read, totals.inserted, totals.duplicates) == (30, 20, 10)
    assert sorted(store.events_frame()["event_id"]) == sorted(f"{stream}:{i}" for i in ids)
    assert client.xpending(stream, "g")["pending"] == 0


def start(store_url: str, stream: str, name: str, *extra: str) -> subprocess.Popen[bytes]:
    code = "from sieve.cli import app; app()"
    args = ["consume", "--stream", stream, "--group", "g", "--consumer", name]
    args += ["--redis", REDIS_URL, "--store", store_url, *extra]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    client: redis.Redis, store: SQLStore, stream: str, tmp_path: Path
) -> None:
    n = 8_000
    ids = produce(client, stream, n // 2)  # the rest comes after the kill: it lands mid-stream
    url = f"sqlite:///{tmp_path / 's.db'}"
    victim = start(url, stream, "victim", "--batch", "20")
    deadline = time.monotonic() + 180  # a loaded machine starts Python slowly
    while store.count_events() < 100:  # a few batches in
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "the consumer stored nothing within 3 minutes"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    at_kill = store.count_events()
    ids += produce(client, stream, n // 2, start=n // 2)
    assert 0 < at_kill <= n // 2

    heir = start(url, stream, "heir", "--batch", "500", "--claim-idle", "0", "--idle-exit", "1")
    _, err = heir.communicate(timeout=300)
    assert heir.returncode == 0, err.decode()
    stored = store.events_frame()["event_id"]
    assert len(stored) == n and stored.is_unique
    assert set(stored) == {f"{stream}:{i}" for i in ids}
    assert client.xpending(stream, "g")["pending"] == 0
