"""A promotion under a bounded loopback load fails no request: the running
server swaps to the promoted version while clients keep asking."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sieve.registry import ModelRegistry
from sieve.serve.launch import free_port, start_server, stop_server
from sieve.settings import Settings
from sieve.training.train import train

pytestmark = pytest.mark.slow


def test_promotion_under_load_fails_no_request(trained: Any, tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    shutil.copy(trained.db, db)
    models = tmp_path / "models"
    shutil.copytree(trained.model_dir, models)
    store_url = f"sqlite:///{db}"
    old = ModelRegistry(models).current()
    # a second, different model registered as a candidate (not serving)
    cfg = tmp_path / "funnel.toml"
    cfg.write_text(trained.funnel_config.read_text().replace("factors = 16", "factors = 12"))
    new_funnel, _ = train(
        Settings(store_url=store_url, model_dir=models, funnel_config=cfg), promote=False
    )
    new = str(new_funnel.version)
    assert new != old

    env = {"SIEVE_OPEN_READ": "true", "SIEVE_MODEL_POLL_SECONDS": "0.2"}
    args = ["--store", store_url, "--model-dir", str(models), "--no-access-log"]
    port = free_port()
    server = start_server(args, port=port, env=env, ready_path="/ready", timeout=60)
    base = f"http://127.0.0.1:{port}"
    try:
        counts = trained.raw.events["user_id"].value_counts()
        users = [str(u) for u in counts[counts < 100].index[:50]]  # room for 5 unseen items
        seen: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def client(offset: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as c:
                k = offset
                while not stop.is_set():
                    r = c.get(f"/recommendations/{users[k % len(users)]}?n=5")
                    if r.status_code != 200 or len(r.json()["items"]) != 5:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        seen.append(r.json()["model_version"])
                    k += 1
                    time.sleep(0.002)  # bounded load

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        # counted, not timed: a loaded machine answers fewer requests a second
        deadline = time.time() + 60
        while time.time() < deadline and len(seen) < 60 and not failures:
            time.sleep(0.05)
        ModelRegistry(models).promote(new, "test promotion")
        while time.time() < deadline and seen[-20:].count(new) < 20:
            time.sleep(0.05)
        after = len(seen)
        while time.time() < deadline and len(seen) < after + 40:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop_server(server)
    assert not failures, failures[:3]
    assert old in seen and new in seen
    # once the new version answers, the old one never answers again
    first_new = seen.index(new)
    assert seen[first_new:].count(old) <= 2  # the two clients' requests in flight at the swap
    assert len(seen) >= 100
