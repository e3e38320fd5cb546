"""Three real server processes on one PostgreSQL schema and one Redis prefix,
with a round-robin client in front, behave as one service.

- a click posted through replica A changes the very next answer of replica B;
- a catalog write through A is served by B without a reload;
- bandits learn from clicks on every replica: the stored pulls and rewards
  are the exact totals of a scripted sequence;
- an experiment report counts every replica's impressions and clicks exactly;
- a promotion under load fails no request, and every replica serves the new
  version within its poll interval (`X-Sieve-Model` and the body agree);
- killing one replica mid-load loses no acknowledged event, and the others
  keep answering.

No timing is asserted: every wait polls until a generous deadline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from sieve.explore.bandits import ThompsonSampling
from sieve.explore.shared import SharedBandit
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry
from sieve.settings import Settings
from sieve.storage import open_cache, open_store
from sieve.training.train import train

from .conftest import Cluster, click, free_port, start_server, stop_server, wait_until

pytestmark = pytest.mark.slow

Cluster_ = Any  # the fixture's factory


def _recommend(client: httpx.Client, user: str, n: int = 10) -> dict[str, Any]:
    r = client.get(f"/recommendations/{user}", params={"n": n})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["x-sieve-model"] == body["model_version"]
    return body


def test_a_click_through_one_replica_changes_the_next_answer_of_another(
    cluster: Cluster_,
) -> None:
    c: Cluster = cluster(3)
    a, b = c.replicas[0].client(), c.replicas[1].client()
    user = c.users[0]
    # precomputed through A, answered from the shared cache by B
    assert a.post("/admin/precompute", params={"n": 10}).status_code == 200
    before = _recommend(b, user)
    assert before["cached"] is True
    top = before["items"][0]["id"]
    posted = a.post("/events", json={"events": [click(user, top, before["request_id"])]})
    assert posted.status_code == 200 and posted.json()["inserted"] == 1
    after = _recommend(b, user)  # the very next answer of B
    assert after["cached"] is False  # the precomputed list is stale for this user now
    assert top not in [i["id"] for i in after["items"]]  # seen: the click is in the history


def test_a_catalog_write_through_one_replica_is_served_by_the_others(cluster: Cluster_) -> None:
    c: Cluster = cluster(3)
    a, b, third = (r.client() for r in c.replicas)
    item = {"id": "brand-new", "title": "Brand new", "text": "drama drama", "categories": ["drama"]}
    assert b.get("/items/brand-new/similar").status_code == 404
    assert a.post("/items", json=item).status_code == 201
    for client in (b, third):  # within the catalog poll, no reload

        def knows(client: httpx.Client = client) -> bool:
            return client.get("/items/brand-new/similar", params={"n": 3}).status_code == 200

        wait_until(knows, 60, "another replica serves the item A created")
    user = c.users[0]
    top = _recommend(b, user)["items"][0]["id"]
    assert a.delete(f"/items/{top}").status_code == 204
    wait_until(
        lambda: top not in [i["id"] for i in _recommend(b, user)["items"]],
        60,
        "another replica stops serving the item A deleted",
    )


def test_bandits_learn_exact_totals_from_every_replica(cluster: Cluster_) -> None:
    c: Cluster = cluster(3, exploration_slots=2)
    rr = c.round_robin()
    spec = {
        "name": "alloc",
        "allocation": "thompson",
        "variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}],
    }
    assert rr.clients[0].post("/experiments", json=spec).status_code == 201
    pulls: Counter[str] = Counter()  # arm -> requests that applied it
    clicks: Counter[str] = Counter()  # arm -> requests clicked (once each)
    shown: Counter[str] = Counter()  # explored item -> times shown in an exploration slot
    credited: Counter[str] = Counter()  # explored item -> requests whose slot was clicked

    def serve(user: str) -> dict[str, Any]:
        _, r = rr.request("GET", f"/recommendations/{user}", params={"n": 8})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        for arm in body["experiments"]:
            pulls[arm["arm"]] += 1
        for item in body["items"]:
            if item["slot"] == "explore":
                shown[item["id"]] += 1
        return body

    def applied_everywhere() -> bool:
        return all(serve(c.users[1])["experiments"] for _ in rr.clients)

    wait_until(applied_everywhere, 60, "every replica applies the new experiment")
    for k in range(45):
        user = c.users[k % len(c.users)]
        body = serve(user)
        explored = [i["id"] for i in body["items"] if i["slot"] == "explore"]
        if k % 3 or not explored:
            continue
        event = click(user, explored[0], body["request_id"])
        # through another replica than served; the same click again through a
        # third one (a retried delivery with another id) credits nothing more
        for _ in range(2):
            _, r = rr.request("POST", "/events", json={"events": [{**event, "id": f"{k}-{_}"}]})
            assert r.status_code == 200, r.text
        credited[explored[0]] += 1
        for arm in body["experiments"]:
            clicks[arm["arm"]] += 1
    rr.close()
    assert sum(pulls.values()) > 45 and sum(credited.values()) >= 10

    cache = open_cache(c.cache_url)
    try:
        alloc = SharedBandit(cache, "bandit:v2:allocation:alloc", ThompsonSampling)
        arm_pulls, arm_clicks = alloc.counts(["a", "b"])
        assert dict(zip("ab", arm_pulls.tolist(), strict=True)) == {a: pulls[a] for a in "ab"}
        assert dict(zip("ab", arm_clicks.tolist(), strict=True)) == {a: clicks[a] for a in "ab"}
        explore = SharedBandit(cache, "bandit:v2:explore:thompson", ThompsonSampling)
        items = sorted(shown)
        item_pulls, item_rewards = explore.counts(items)
        assert dict(zip(items, item_pulls.tolist(), strict=True)) == dict(shown)
        got = {i: r for i, r in zip(items, item_rewards.tolist(), strict=True) if r}
        assert got == dict(credited)
    finally:
        cache.close()
    # the report of any replica says the same
    report = c.replicas[2].client().get("/experiments/alloc/report").json()
    assert {a: s["requests"] for a, s in report["allocation_state"].items()} == {
        a: pulls[a] for a in "ab"
    }


def test_an_experiment_report_counts_every_replica_exactly(cluster: Cluster_) -> None:
    c: Cluster = cluster(3)
    rr = c.round_robin()
    spec = {"name": "ab", "variants": [{"name": "x", "share": 0.5}, {"name": "y", "share": 0.5}]}
    assert rr.clients[1].post("/experiments", json=spec).status_code == 201
    impressions: Counter[str] = Counter()
    clicks: Counter[str] = Counter()
    answered: Counter[int] = Counter()

    def serve(user: str) -> dict[str, Any]:
        k, r = rr.request("GET", f"/recommendations/{user}", params={"n": 5})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        for arm in body["experiments"]:
            impressions[arm["arm"]] += len(body["items"])
            answered[k] += 1
        return body

    wait_until(
        lambda: all(serve(c.users[1])["experiments"] for _ in rr.clients),
        60,
        "every replica applies the new experiment",
    )
    for k in range(45):
        user = c.users[k % len(c.users)]
        body = serve(user)
        if k % 3 == 0 and body["items"]:
            event = click(user, body["items"][0]["id"], body["request_id"])
            _, r = rr.request("POST", "/events", json={"events": [event]})
            assert r.status_code == 200, r.text
            clicks[body["experiments"][0]["arm"]] += 1
    rr.close()
    assert min(answered.values()) >= 10  # every replica served part of it
    reporter = c.replicas[2].client()

    def counts() -> tuple[dict[str, int], dict[str, int]]:
        arms = reporter.get("/experiments/ab/report").json()["arms"]
        return (
            {a["arm"]: a["impressions"] for a in arms},
            {a["arm"]: a["clicks"] for a in arms},
        )

    # every replica writes its impressions within its flush interval
    wait_until(lambda: counts()[0] == dict(impressions), 60, "the report holds every impression")
    assert counts() == (dict(impressions), dict(clicks))


def _second_version(c: Cluster, tmp_path: Path, funnel_config: Path) -> str:
    """A different model registered as a candidate (not serving)."""
    cfg = tmp_path / "funnel-12.toml"
    cfg.write_text(funnel_config.read_text().replace("factors = 16", "factors = 12"))
    settings = Settings(store_url=c.store_url, model_dir=c.model_dir, funnel_config=cfg)
    funnel, _ = train(settings, promote=False)
    return str(funnel.version)


def test_a_promotion_under_load_reaches_every_replica_and_fails_no_request(
    cluster: Cluster_, trained: Any, tmp_path: Path
) -> None:
    c: Cluster = cluster(3)
    old = ModelRegistry(c.model_dir).current()
    new = _second_version(c, tmp_path, trained.funnel_config)
    assert new != old
    rr = c.round_robin()
    seen: list[tuple[int, str]] = []  # (replica, version that served)
    failures: list[str] = []
    stop = threading.Event()

    def load(offset: int) -> None:
        k = offset
        while not stop.is_set():
            user = c.users[k % len(c.users)]
            k += 1
            try:
                replica, r = rr.request("GET", f"/recommendations/{user}", params={"n": 5})
            except httpx.HTTPError as e:
                failures.append(repr(e))
                continue
            if r.status_code != 200 or r.headers.get("x-sieve-model") != r.json().get(
                "model_version"
            ):
                failures.append(f"{r.status_code}: {r.text[:200]}")
                continue
            seen.append((replica, r.json()["model_version"]))
            time.sleep(0.005)  # a bounded load

    threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(seen) >= 30 or bool(failures), 120, "load before the promotion")
        ModelRegistry(c.model_dir).promote(new, "promoted under load")

        def everywhere() -> bool:
            last: dict[int, list[str]] = {0: [], 1: [], 2: []}
            for replica, version in seen[-60:]:
                last[replica].append(version)
            return all(v[-3:] == [new] * 3 for v in last.values()) or bool(failures)

        wait_until(everywhere, 120, "every replica serves the promoted version")
        after = len(seen)
        wait_until(lambda: len(seen) >= after + 30 or bool(failures), 120, "load after it")
    finally:
        stop.set()
        for t in threads:
            t.join()
        rr.close()
    assert not failures, failures[:3]
    for replica in range(3):
        versions = [v for r, v in seen if r == replica]
        assert versions[0] == old and versions[-1] == new
        first_new = versions.index(new)
        # once a replica serves the new version it never serves the old one
        # again, but for the requests in flight at its swap (one per client)
        assert versions[first_new:].count(old) <= len(threads)
    for client in (r.client() for r in c.replicas):
        assert client.get("/version").json()["model_version"] == new


def test_killing_a_replica_loses_no_acknowledged_event(cluster: Cluster_) -> None:
    c: Cluster = cluster(3)
    rr = c.round_robin(timeout=10)
    acknowledged: list[str] = []
    answered_after_kill: Counter[int] = Counter()
    server_errors: list[str] = []
    killed = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def write(offset: int) -> None:
        k = offset * 1_000_000
        while not stop.is_set():
            batch = [
                click(c.users[(k + j) % len(c.users)], c.items[(k + j) % len(c.items)])
                for j in range(5)
            ]
            k += 5
            try:
                replica, r = rr.request("POST", "/events", json={"events": batch})
            except httpx.HTTPError:
                continue  # not acknowledged (the killed replica)
            if r.status_code == 200:
                with lock:
                    acknowledged.extend(e["id"] for e in batch)
            elif r.status_code >= 500:
                server_errors.append(f"replica {replica}: {r.status_code} {r.text[:200]}")
            time.sleep(0.01)

    def read() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            was_killed = killed.is_set()
            try:
                replica, r = rr.request("GET", f"/recommendations/{c.users[k % len(c.users)]}")
            except httpx.HTTPError:
                continue
            if r.status_code != 200:
                server_errors.append(f"replica {replica}: {r.status_code} {r.text[:200]}")
            elif was_killed:
                answered_after_kill[replica] += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acknowledged) >= 100, 120, "events acknowledged before the kill")
        c.replicas[2].proc.kill()  # SIGKILL: no shutdown, no flush
        c.replicas[2].proc.wait()
        killed.set()
        at_kill = len(acknowledged)
        wait_until(
            lambda: (
                len(acknowledged) >= at_kill + 100
                and min(answered_after_kill[0], answered_after_kill[1]) >= 20
            ),
            120,
            "the other replicas keep acknowledging and answering",
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
        rr.close()
    assert not server_errors, server_errors[:3]
    assert answered_after_kill[2] == 0
    with open_store(c.store_url) as store:
        stored = set(store.events_frame()["event_id"])
        missing = [e for e in acknowledged if e not in stored]
        assert not missing, f"{len(missing)} acknowledged events lost"
        top = store.max_seq()
    # the shared online counters fold every stored event, even if the killed
    # replica held the fold's lease (it expires and another replica takes over)
    counters = OnlineCounters(open_cache(c.cache_url))
    try:
        wait_until(lambda: counters.watermark() >= top, 120, "the counters hold every event")
    finally:
        counters.cache.close()


def test_two_worker_processes_share_one_port(cluster: Cluster_) -> None:
    """`sieve serve --workers 2`: two processes answer on one port."""
    c: Cluster = cluster(0)  # the store, cache and models, no replica of its own
    port = free_port()
    args = ["--store", c.store_url, "--cache", c.cache_url, "--model-dir", str(c.model_dir)]
    env = {"SIEVE_OPEN_READ": "true", "SIEVE_DRIFT_CHECK_SECONDS": "0"}
    proc = start_server([*args, "--workers", "2"], port=port, env=env, ready_path="/ready")
    base = f"http://127.0.0.1:{port}"
    replicas: set[str] = set()
    try:

        def both() -> bool:
            # concurrent new connections: the kernel hands them to both processes
            def one(_: int) -> str:
                with httpx.Client(base_url=base, timeout=30) as client:
                    r = client.get(f"/recommendations/{c.users[0]}")
                    assert r.status_code == 200, r.text
                    return str(client.get("/version").json()["replica"])

            with ThreadPoolExecutor(8) as pool:
                replicas.update(pool.map(one, range(16)))
            return len(replicas) >= 2

        wait_until(both, 180, "both worker processes answer", every=0.5)
    finally:
        stop_server(proc)
    assert len(replicas) == 2
