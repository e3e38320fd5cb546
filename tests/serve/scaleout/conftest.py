"""A cluster of real `sieve serve` processes on loopback: one PostgreSQL schema
and one Redis key prefix of their own per test, one shared model directory,
and a round-robin client in front (what a load balancer does).

- `cluster(n=3, **settings)` starts the replicas (in parallel, each ready on
  `/ready`) on a copy of the session's trained model and its data imported
  into a fresh schema; everything is stopped and dropped afterwards.
- `RoundRobin` sends each request to the next replica and says which one
  answered; `Cluster.replica(k)` talks to one replica only.

Settings reach the servers as `SIEVE_*` environment variables (polls are
short: the tests wait for things by polling until a deadline, never by
sleeping a fixed time).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from servers import POSTGRES_URL, REDIS_URL, libpq_url, postgres_problem, redis_problem
from sieve.serve.auth import hash_key
from sieve.serve.launch import free_port, start_server, stop_server
from sieve.storage import open_store
from sieve.training.snapshot import import_data

#: The admin key every replica accepts (reads and loopback writes are open).
ADMIN_KEY = "sk_test_scaleout_admin_7e1f0c"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: Generous: three servers start at once on a loaded two-core machine.
START_TIMEOUT = 240.0


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(every)


@dataclass
class Replica:
    """One server process and its base URL."""

    proc: subprocess.Popen[bytes]
    base: str

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=ADMIN, timeout=timeout)


class RoundRobin:
    """Each request to the next replica in turn (thread-safe); returns which
    replica answered with the response."""

    def __init__(self, replicas: list[Replica], timeout: float = 30.0) -> None:
        self.clients = [r.client(timeout) for r in replicas]
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def next_index(self) -> int:
        with self._lock:
            return next(self._turn) % len(self.clients)

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, httpx.Response]:
        k = self.next_index()
        return k, self.clients[k].request(method, path, **kwargs)

    def close(self) -> None:
        for c in self.clients:
            c.close()


@dataclass
class Cluster:
    """Replicas on one store, one cache and one model directory."""

    store_url: str
    cache_url: str
    model_dir: Path
    replicas: list[Replica] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    def round_robin(self, timeout: float = 30.0) -> RoundRobin:
        return RoundRobin(self.replicas, timeout)


def _events_per_user(raw: Any) -> dict[str, int]:
    counts = raw.events["user_id"].astype(str).value_counts()
    return {str(u): int(c) for u, c in counts.items()}


@pytest.fixture
def cluster(trained: Any, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start a cluster: `cluster(n=3, **settings)` (settings as `SIEVE_*` values)."""
    if postgres_problem():
        pytest.skip(postgres_problem())
    if redis_problem():
        pytest.skip(redis_problem())
    schema = f"sieve_scale_{uuid.uuid4().hex[:16]}"
    prefix = f"sieve_scale_test_{uuid.uuid4().hex}:"
    started: list[Replica] = []

    def start(n: int = 3, **settings: Any) -> Cluster:
        models = tmp_path / "models"
        shutil.copytree(trained.model_dir, models)
        store_url = f"{POSTGRES_URL}?schema={schema}"
        with open_store(store_url) as store:
            import_data(store, trained.raw)
        keys = [{"name": "admin", "key_hash": hash_key(ADMIN_KEY), "scopes": ["admin"]}]
        env = {
            "SIEVE_OPEN_READ": "true",
            "SIEVE_OPEN_WRITE": "true",
            "SIEVE_API_KEYS": json.dumps(keys),
            "SIEVE_MODEL_POLL_SECONDS": "0.5",
            "SIEVE_CATALOG_POLL_SECONDS": "0.3",
            "SIEVE_DRIFT_CHECK_SECONDS": "0",
            **{f"SIEVE_{k.upper()}": str(v) for k, v in settings.items()},
        }
        cache_url = f"{REDIS_URL}?prefix={prefix}"
        args = [
            "--store",
            store_url,
            "--cache",
            cache_url,
            "--model-dir",
            f"file://{models}",
            "--no-access-log",
        ]

        def one(_: int) -> Replica:
            port = free_port()
            proc = start_server(
                args, port=port, env=env, ready_path="/ready", timeout=START_TIMEOUT
            )
            replica = Replica(proc, f"http://127.0.0.1:{port}")
            started.append(replica)
            return replica

        replicas: list[Replica] = []
        if n:
            with ThreadPoolExecutor(n) as pool:
                replicas = list(pool.map(one, range(n)))
        per_user = _events_per_user(trained.raw)
        # users with a history that leaves room in the catalog for a list of 10
        users = sorted(u for u, c in per_user.items() if c < 100)
        items = sorted(str(i) for i in trained.raw.items["item_id"])
        return Cluster(store_url, cache_url, models, replicas, users, items)

    try:
        yield start
    finally:
        for replica in started:
            stop_server(replica.proc)
        with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def click(user: str, item: str, request_id: str | None = None) -> dict[str, Any]:
    """A click event, now, optionally citing the request that showed the item."""
    event: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "type": "click",
    }
    if request_id is not None:
        event["request_id"] = request_id
    return event


__all__ = [
    "ADMIN",
    "Cluster",
    "Replica",
    "RoundRobin",
    "click",
    "free_port",
    "start_server",
    "stop_server",
    "wait_until",
]
