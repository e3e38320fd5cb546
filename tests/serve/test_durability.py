"""Kill -9 of the server while a client streams events: every event that got a
2xx is in the store after restart, none twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from sieve.client import SieveClient
from sieve.data.records import Item
from sieve.serve.launch import free_port, start_server, stop_server
from sieve.storage import open_store

pytestmark = pytest.mark.slow


def _start(store_url: str, model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {"SIEVE_OPEN_READ": "true", "SIEVE_OPEN_WRITE": "true"}
    args = ["--store", store_url, "--model-dir", str(model_dir), "--no-access-log"]
    return start_server(args, port=port, env=env, timeout=60)


def test_kill_9_loses_no_acknowledged_event(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        store.upsert_items([Item(id=f"i{k}") for k in range(20)])
    port = free_port()
    server = _start(store_url, tmp_path / "models", port)
    acked: list[str] = []
    in_flight: list[list[str]] = []
    stop = threading.Event()

    def stream() -> None:
        batch_no = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while not stop.is_set():
                ids = [f"b{batch_no}-e{k}" for k in range(25)]
                body = {
                    "events": [
                        {"id": i, "user_id": f"u{k % 7}", "item_id": f"i{k % 20}", "type": "click"}
                        for k, i in enumerate(ids)
                    ]
                }
                in_flight[:] = [ids]
                try:
                    r = client.post("/events", json=body)
                except httpx.HTTPError:
                    return  # the server died mid-request: this batch is unacknowledged
                if r.status_code // 100 == 2:
                    acked.extend(ids)
                    in_flight.clear()
                batch_no += 1

    client_thread = threading.Thread(target=stream)
    client_thread.start()
    deadline = time.time() + 30
    while len(acked) < 500 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    stop.set()
    client_thread.join(timeout=10)
    assert len(acked) >= 500, "the client got too few answers before the kill"

    # restart: everything acknowledged is there, once
    server = _start(store_url, tmp_path / "models", port)
    try:
        # the client retries what was in flight when the server died: idempotent
        if in_flight:
            events = [
                {"id": i, "user_id": "u0", "item_id": "i0", "type": "click"} for i in in_flight[0]
            ]
            with SieveClient(f"http://127.0.0.1:{port}", timeout=5) as client:
                client.send_events(events)  # raises on any non-2xx answer
    finally:
        stop_server(server)
    with open_store(store_url) as store:
        stored = store.events_frame()["event_id"].tolist()
    counts = Counter(stored)
    assert not [i for i in acked if counts[i] != 1], "an acknowledged event is missing or doubled"
    assert max(counts.values()) == 1
    expected = set(acked) | set(in_flight[0] if in_flight else [])
    assert set(stored) == expected
