"""One query path (issue 9): what a real server ranks with is what training computes.

A `sieve serve` process (SQLite store, Redis cache under a prefix of the
test's own) answers `GET /recommendations/{user}?trace=true`; the test then
takes the training path for the same user and store state — a snapshot of
the store (`sieve.training.snapshot.snapshot`), the user's events up to the
trace's `now` (`UserLog`), the query built by `Funnel.query`, the features by
`featurize` with the served model's engine and the same online counters —
and asserts both sides are equal: candidates, feature matrix, history and
session. Users: one known to the model with a session posted after training,
one known and untouched since, and one new user who only posted events.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serve.conftest import API_KEYS, KEYS, Trained, bearer
from sieve.client import SieveClient
from sieve.pipeline import Funnel, featurize
from sieve.ranking.query import UserLog
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry
from sieve.rerank.rules import blocked_items
from sieve.serve.launch import running_server
from sieve.settings import Settings
from sieve.storage import open_cache, open_store
from sieve.training.snapshot import snapshot

pytestmark = pytest.mark.slow

N = 8
#: (user, posted events (item, type), most recent last): a session after training
SESSIONS: dict[str, list[tuple[str, str]]] = {
    "u093": [("i011", "view"), ("i042", "click"), ("i077", "view"), ("i003", "cart")],
    "u017": [],  # known, nothing posted: their history is all they have
    "newcomer": [("i120", "view"), ("i005", "click"), ("i066", "view")],
}


def _post_sessions(base: str) -> None:
    """Each user's session, one event per request (as a browsing user sends
    them), timestamped by the server, one second apart in order."""
    start = time.time() - 60
    with SieveClient(base, api_key=KEYS["write"], timeout=10) as client:
        for user, events in SESSIONS.items():
            for k, (item, kind) in enumerate(events):
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + k))
                event = {
                    "id": uuid.uuid4().hex,
                    "user_id": user,
                    "item_id": item,
                    "type": kind,
                    "timestamp": stamp,
                }
                assert client.send_events([event]).inserted == 1


def _wait_folded(counters: OnlineCounters, store_url: str, timeout: float = 60.0) -> None:
    """Until the server's counters hold every stored event (it folds in the background)."""
    with open_store(store_url) as store:
        last = store.max_seq()
    deadline = time.monotonic() + timeout
    while counters.watermark() < last:
        assert time.monotonic() < deadline, "the server did not fold the new events in time"
        time.sleep(0.05)


def test_served_features_are_the_training_paths(
    trained: Trained, tmp_path: Path, redis_url: str
) -> None:
    db = tmp_path / "served.db"
    shutil.copy(trained.db, db)
    store_url = f"sqlite:///{db}"
    env = {
        "SIEVE_API_KEYS": json.dumps([k.model_dump() for k in API_KEYS]),
        "SIEVE_DRIFT_CHECK_SECONDS": "0",
    }
    args = [
        *("--store", store_url, "--cache", redis_url, "--model-dir", str(trained.model_dir)),
        "--no-access-log",
    ]
    counters = OnlineCounters(open_cache(redis_url))  # the server's, read from this process
    traces: dict[str, dict[str, Any]] = {}
    with running_server(args, env=env, ready_path="/ready", timeout=90) as base:
        _post_sessions(base)
        _wait_folded(counters, store_url)
        with httpx.Client(base_url=base, headers=bearer("admin"), timeout=30) as client:
            for user in SESSIONS:
                r = client.get(f"/recommendations/{user}", params={"n": N, "trace": "true"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["cached"] is False and body["model_version"] == trained.version
                traces[user] = body["trace"]

    # the training path, on the same store state and counters
    with open_store(store_url) as store:
        dataset = snapshot(store, Settings().event_weights)
    funnel = Funnel.load(ModelRegistry(trained.model_dir).model_path(trained.version))
    engine = funnel.state.engine
    blocked = blocked_items(engine.catalog, funnel.config.rerank.rules)
    user_log = UserLog(dataset.events)
    assert funnel.state.ranker is not None, "the test model must rank with features"
    for user, trace in traces.items():
        now = float(trace["query"]["now"])
        query = funnel.query(user_log.events(user, now), user, n=N, now=now)
        _, cands, x = featurize(engine, query, blocked, online=counters)
        served = trace["query"]
        assert served["history"] == query.history.tolist(), user
        assert served["history_weights"] == pytest.approx(query.history_weights.tolist()), user
        assert served["recent"] == list(query.recent), user
        assert served["recent_types"] == list(query.recent_types), user
        assert trace["candidates"] == [str(engine.catalog.item_ids[i]) for i in cands.items], user
        assert x is not None and trace["features"] is not None, user
        served_x = np.asarray(trace["features"], dtype=np.float32)
        assert served_x.shape == x.shape, user
        np.testing.assert_allclose(served_x, x, rtol=1e-6, atol=1e-7, err_msg=user)
        posted = [engine.catalog.find(i) for i, _ in reversed(SESSIONS[user])]
        assert list(query.recent[: len(posted)]) == posted, "the session leads the query"
