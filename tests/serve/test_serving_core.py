"""The serving core of issue 9: honest experiment arms, a hot swap that loses
no catalog write, readers that never wait, and online counters folded once.

- Experiment arms on another model version read the live online counters
  (their features move with the clicks, as the serving version's do).
- `ModelHolder.load` replays a catalog change committed between its catalog
  sync and its swap; readers never block on the writers' lock; loading a
  variant blocks neither readers nor catalog writes.
- `OnlineCounters.catch_up` rebuilds the counters from the log after the
  cache lost its data (no double count), counts the events posted before the
  first model, and two processes folding at once count every event once.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serve.conftest import FUNNEL_TOML, Trained
from sieve.data.io import load_data
from sieve.data.records import Event, Item
from sieve.data.schema import UnknownIdError
from sieve.pipeline import featurize
from sieve.ranking.features import FEATURE_NAMES
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry
from sieve.rerank.rules import blocked_items
from sieve.serve.holder import ModelHolder, items_frame
from sieve.serve.service import Service
from sieve.settings import Settings
from sieve.storage import MemoryCache, Store, open_cache, open_store
from sieve.training.snapshot import import_data
from sieve.training.train import train

MakeClient = Callable[..., TestClient]
# seconds a thread may take to do what the test waits for: a bound for a hung
# thread, generous because a loaded machine can be very slow
WAIT = 60.0
NEW_ITEM = Item(id="fresh-item", title="A fresh thing", categories=["tools"])


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


# ------------------------------------------------------------ two versions
@dataclass(frozen=True)
class TwoVersions:
    """A store and a registry with the serving version and another one."""

    db: Path
    model_dir: Path
    serving: str
    other: str


@pytest.fixture(scope="module")
def two_versions(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> TwoVersions:
    root = tmp_path_factory.mktemp("two_versions")
    db, models = root / "seed.db", root / "models"
    shutil.copy(trained.db, db)
    shutil.copytree(trained.model_dir, models)
    cfg = root / "funnel.toml"
    cfg.write_text(trained.funnel_config.read_text().replace("factors = 16", "factors = 12"))
    settings = Settings(store_url=f"sqlite:///{db}", model_dir=models, funnel_config=cfg)
    other, _ = train(settings, promote=False)
    assert str(other.version) != trained.version
    return TwoVersions(db, models, trained.version, str(other.version))


@pytest.fixture
def versions(two_versions: TwoVersions, tmp_path: Path) -> TwoVersions:
    """A private copy of the two-version store (the registry is only read)."""
    db = tmp_path / "served.db"
    shutil.copy(two_versions.db, db)
    return TwoVersions(db, two_versions.model_dir, two_versions.serving, two_versions.other)


def _click_events(item: str, users: list[str]) -> list[dict[str, Any]]:
    return [{"id": uuid.uuid4().hex, "user_id": u, "item_id": item, "type": "click"} for u in users]


# ---------------------------------------------- Found 1: experiment arms
def test_an_arm_on_another_version_reads_the_live_counters(
    versions: TwoVersions, make_client: MakeClient
) -> None:
    client = make_client(store_url=f"sqlite:///{versions.db}", model_dir=versions.model_dir)
    service = _service(client)
    assert service.model_version == versions.serving
    spec = {
        "name": "other-model",
        "variants": [{"name": "other", "share": 1.0, "model_version": versions.other}],
    }
    assert client.post("/experiments", json=spec).status_code == 201, "experiment refused"
    service.flush_counters()
    user = "u093"

    def traced() -> tuple[dict[str, Any], str]:
        r = client.get(f"/recommendations/{user}", params={"n": 8, "trace": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["experiments"][0]["arm"] == "other"
        return body["trace"], body["model_version"]

    before, version = traced()
    assert version == versions.other  # the request was ranked by the arm's model
    item = before["candidates"][0]
    column = FEATURE_NAMES.index("item_clicks_1h")
    clicks_before = before["features"][0][column]

    # clicks on that item by other users, folded into the service's counters
    others = [f"u{k:03d}" for k in range(150, 160)]
    r = client.post("/events", json={"events": _click_events(item, others)})
    assert r.status_code == 200, r.text
    service.flush_counters()

    funnel = service.holder.funnel_for(versions.other)
    assert funnel.online is service.counters  # the arm binds the live counters
    after, _ = traced()
    row = after["candidates"].index(item)
    # ten clicks within the hour (a log1p feature): the 1-hour window holds them,
    # decayed by seconds at most
    added = np.expm1(after["features"][row][column]) - np.expm1(clicks_before)
    assert added == pytest.approx(len(others), rel=1e-3)


class SwappingStore:
    """A real store whose first `user_events` call (a request reading the
    user's events) first swaps the service to another promoted version."""

    def __init__(self, store: Any, swap: Callable[[], None]) -> None:
        self.store, self.swap, self.swapped = store, swap, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def user_interactions(self, *args: Any, **kwargs: Any) -> Any:
        if not self.swapped:
            self.swapped = True
            self.swap()
        return self.store.user_interactions(*args, **kwargs)


def test_a_request_ranks_with_the_snapshot_it_took(
    versions: TwoVersions, tmp_path: Path, make_client: MakeClient
) -> None:
    """A swap in the middle of a request: the list comes from the model the
    answer names (the snapshot the request took), not from the new one."""
    models = tmp_path / "models"
    shutil.copytree(versions.model_dir, models)
    client = make_client(
        store_url=f"sqlite:///{versions.db}", model_dir=models, model_poll_seconds=0
    )
    service = _service(client)
    # a server answers once its counters hold the stored log (`/ready`); the
    # test client does not wait for that: fold before the request
    service.flush_counters()

    def swap() -> None:
        ModelRegistry(models).promote(versions.other, "a swap during a request")
        assert service.load_model()

    store = SwappingStore(service.store, swap)
    service.live.store = store  # type: ignore[assignment]  # the live path's store reads
    r = client.get("/recommendations/u093", params={"n": 8, "trace": "true"})
    assert r.status_code == 200, r.text
    assert store.swapped and service.model_version == versions.other
    body = r.json()
    trace = body["trace"]
    funnel = service.holder.funnel_for(body["model_version"])
    now = float(trace["query"]["now"])
    events = [(e.item_id, e.type) for e in store.store.user_events("u093", limit=500)]
    engine = funnel.state.engine
    blocked = blocked_items(engine.catalog, funnel.config.rerank.rules)
    _, cands, x = featurize(
        engine, funnel.query(events, "u093", n=8, now=now), blocked, online=service.counters
    )
    assert trace["candidates"] == [str(engine.catalog.item_ids[i]) for i in cands.items]
    assert x is not None
    np.testing.assert_allclose(np.asarray(trace["features"], np.float32), x, rtol=1e-6)


# ------------------------------------------------- Found 4: the hot swap
class GatedStore:
    """A real store whose `items_frame` (the catalog sync of a model load)
    reads the catalog, then waits for the test to open the gate."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.closed = False
        self.synced = threading.Event()  # a load read the catalog and is waiting
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def items_frame(self) -> pd.DataFrame:
        frame = self.store.items_frame()
        if self.closed:
            self.synced.set()
            assert self.gate.wait(WAIT), "the test never opened the gate"
        return frame


@pytest.fixture
def holder(versions: TwoVersions) -> Iterator[tuple[ModelHolder, GatedStore]]:
    """A holder serving the current version, over a gated copy of the store."""
    with open_store(f"sqlite:///{versions.db}") as store:
        gated = GatedStore(store)
        holder = ModelHolder(versions.model_dir, gated, OnlineCounters(MemoryCache()))  # type: ignore[arg-type]
        assert holder.load()
        yield holder, gated


def _knows(holder: ModelHolder, item_id: str, version: str | None = None) -> bool:
    funnel = holder.funnel_for(version)
    try:
        return funnel.is_available(funnel.item_index(item_id))
    except UnknownIdError:
        return False


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_catalog_write_during_a_reload_is_in_the_new_funnel(
    holder: tuple[ModelHolder, GatedStore],
) -> None:
    holder_, gated = holder
    old = holder_.snapshot
    gated.closed = True
    thread, errors = _in_thread(holder_.load)
    assert gated.synced.wait(WAIT), "the reload did not reach its catalog sync"
    # committed after the reload read the catalog, before it swaps
    gated.store.upsert_items([NEW_ITEM])
    holder_.apply_catalog(items_frame([NEW_ITEM]))
    assert _knows(holder_, NEW_ITEM.id), "the serving funnel must take the write at once"
    gated.gate.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not errors, errors
    assert holder_.snapshot is not old, "the reload published a new snapshot"
    assert _knows(holder_, NEW_ITEM.id), "the swap lost the catalog write"
    # the snapshot taken before the write never changed (readers see immutable state)
    with pytest.raises(UnknownIdError):
        old.funnel.item_index(NEW_ITEM.id)


def test_readers_never_wait_for_the_writers_lock(holder: tuple[ModelHolder, GatedStore]) -> None:
    holder_, _ = holder
    read: list[str] = []
    with holder_._write:  # a writer (a catalog change, a swap) holds it
        thread, errors = _in_thread(lambda: read.append(holder_.snapshot.version))
        thread.join(WAIT)
        assert not thread.is_alive(), "a reader blocked while a writer held the lock"
    assert not errors and read == [holder_.version]


def test_loading_a_variant_blocks_neither_readers_nor_catalog_writes(
    versions: TwoVersions, holder: tuple[ModelHolder, GatedStore]
) -> None:
    holder_, gated = holder
    gated.closed = True
    thread, errors = _in_thread(lambda: holder_.funnel_for(versions.other))
    assert gated.synced.wait(WAIT), "the variant load did not reach its catalog sync"
    # while the variant is being loaded: the serving snapshot reads, catalog writes go through
    reader, read_errors = _in_thread(lambda: holder_.funnel_for(None).item_ids)
    reader.join(WAIT)
    assert not reader.is_alive() and not read_errors, "a reader waited for a variant load"
    gated.store.upsert_items([NEW_ITEM])
    writer, write_errors = _in_thread(lambda: holder_.apply_catalog(items_frame([NEW_ITEM])))
    writer.join(WAIT)
    assert not writer.is_alive() and not write_errors, "a catalog write waited for a variant load"
    gated.gate.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not errors, errors
    assert _knows(holder_, NEW_ITEM.id)
    assert _knows(holder_, NEW_ITEM.id, versions.other), "the variant missed the write"
    assert holder_.funnel_for(versions.other).online is holder_.counters


# ---------------------------------------------------- online counters
def _categories(store: Store) -> Callable[[str], list[str]]:
    frame = store.items_frame()
    table = {str(i): list(c) for i, c in zip(frame["item_id"], frame["categories"], strict=True)}
    return lambda item_id: table.get(item_id, [])


def assert_counters_are_the_log(counters: OnlineCounters, store: Store) -> None:
    """Every item's and user's counters equal the stored log replayed once."""
    events = store.events_frame()
    replayed = OnlineCounters.replay(events, _categories(store))
    now = float(events["timestamp"].max()) + 60.0
    items = sorted(set(events["item_id"].astype(str)))
    live, offline = counters.item_features(items, now), replayed.item_features(items, now)
    for key in offline:
        np.testing.assert_allclose(live[key], offline[key], rtol=1e-9, err_msg=key)
    for user in sorted(set(events["user_id"].astype(str))):
        assert counters.user_features(user, now) == pytest.approx(
            replayed.user_features(user, now)
        ), user


def _more_events(store: Store, tag: str, n: int = 40) -> None:
    """`n` new clicks by known users on known items, timestamped now."""
    items = store.items_frame()["item_id"].astype(str).tolist()
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    store.append_events(
        [
            Event(
                id=f"{tag}-{k}",
                user_id=f"u{k % 17:03d}",
                item_id=items[k % len(items)],
                type="click",
                timestamp=now,
            )
            for k in range(n)
        ],
        create_users=True,
    )


@pytest.fixture
def log_store(tmp_path: Path) -> Iterator[Store]:
    """A store holding a small synthetic log."""
    with open_store(f"sqlite:///{tmp_path / 'log.db'}") as store:
        import_data(store, load_data("synthetic:users=60,items=40,seed=3"))
        yield store


@pytest.mark.parametrize("cache", ["memory", "redis"])
def test_counters_rebuilt_after_the_cache_lost_its_data_count_once(
    log_store: Store, cache: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if cache == "redis" else "memory://"
    counters = OnlineCounters(open_cache(url))
    assert counters.catch_up(log_store, batch=500) == log_store.count_events()
    _more_events(log_store, "live")  # folded live, as a service does after each batch
    assert counters.catch_up(log_store, batch=500) == 40
    assert_counters_are_the_log(counters, log_store)

    # the cache loses its data (a Redis restart or FLUSH; a new process's memory cache)
    if cache == "redis":
        counters.cache.clear_prefix("")
    else:
        counters = OnlineCounters(MemoryCache())
    assert counters.watermark() == 0
    _more_events(log_store, "after-flush")
    # the next fold rebuilds from the log: the live-folded events count once
    assert counters.catch_up(log_store, batch=500) == log_store.count_events()
    assert_counters_are_the_log(counters, log_store)
    # a process restarting on the same cache folds nothing twice
    restarted = OnlineCounters(counters.cache)
    assert restarted.catch_up(log_store) == 0
    assert_counters_are_the_log(restarted, log_store)


def test_two_processes_folding_at_once_count_each_event_once(
    log_store: Store, redis_url: str
) -> None:
    # two processes: two connections to one Redis prefix, folding concurrently
    first, second = OnlineCounters(open_cache(redis_url)), OnlineCounters(open_cache(redis_url))
    total = log_store.count_events()
    last = log_store.max_seq()
    folded = [0, 0]
    start = threading.Barrier(2)

    def fold(k: int, counters: OnlineCounters) -> None:
        start.wait()
        deadline = time.monotonic() + 60
        while counters.watermark() < last and time.monotonic() < deadline:
            folded[k] += counters.catch_up(log_store, batch=100, max_batches=2)

    threads = [threading.Thread(target=fold, args=(k, c)) for k, c in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(folded) == total, folded
    assert_counters_are_the_log(first, log_store)


def test_events_posted_before_the_first_model_are_counted(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """The history arrives through the API into an empty service, then the
    first model is trained and loaded: the counters hold all of it."""
    store_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    models = tmp_path / "models"
    client = make_client(store_url=store_url, model_dir=models)
    raw = load_data("synthetic:users=60,items=40,seed=4")
    items = [
        {"id": str(r.item_id), "title": str(r.title), "categories": list(r.categories)}
        for r in raw.items.itertuples()
    ]
    assert client.post("/items/bulk", json={"items": items}).status_code == 200
    events = [
        {
            "id": f"h{k}",
            "user_id": str(r.user_id),
            "item_id": str(r.item_id),
            "type": str(r.type),
            "timestamp": pd.Timestamp(r.timestamp, unit="s", tz="UTC").isoformat(),
        }
        for k, r in enumerate(raw.events.itertuples())
    ]
    for lo in range(0, len(events), 1000):
        r = client.post("/events", json={"events": events[lo : lo + 1000]})
        assert r.status_code == 200, r.text
    funnel_config = tmp_path / "funnel.toml"
    funnel_config.write_text(FUNNEL_TOML)
    train(Settings(store_url=store_url, model_dir=models, funnel_config=funnel_config))
    assert client.post("/admin/reload").status_code == 200
    service = _service(client)
    assert service.model_version == ModelRegistry(models).current()
    service.flush_counters()
    assert service.funnel.online is service.counters
    assert_counters_are_the_log(service.counters, service.store)


class StallingStore:
    """A real store whose `n`-th `events_frame` call first runs `stall` (what
    happens elsewhere while a fold waits on the database)."""

    def __init__(self, store: Store, n: int, stall: Callable[[], None]) -> None:
        self.store, self.n, self.stall, self.calls = store, n, stall, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def events_frame(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        self.calls += 1
        if self.calls == self.n:
            self.stall()
        return self.store.events_frame(*args, **kwargs)


def test_a_fold_that_outlived_its_lease_stops_instead_of_counting_twice(
    log_store: Store,
) -> None:
    now = [0.0]
    cache = MemoryCache(clock=lambda: now[0])
    slow, other = OnlineCounters(cache), OnlineCounters(cache)  # two processes, one cache

    def stall() -> None:
        now[0] += 31.0  # the slow fold's 30 s lease runs out while it waits
        assert other.catch_up(log_store) == log_store.count_events() - 500  # another folds

    store = StallingStore(log_store, 2, stall)
    slow.catch_up(store, batch=500, lease_seconds=30.0)  # type: ignore[arg-type]
    assert store.calls >= 2, "the fold ended before the stall"
    assert slow.watermark() == log_store.max_seq()
    assert_counters_are_the_log(slow, log_store)


def test_freeze_heap_collects_cycles_then_freezes() -> None:
    """What a swap leaves behind in reference cycles is collected before the
    heap is frozen (a frozen cycle would never be); what lives is frozen."""
    import gc
    import weakref

    from sieve.serve.holder import GC_THRESHOLDS, freeze_heap

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    thresholds = gc.get_threshold()
    try:
        freeze_heap()
        assert gone() is None
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS  # full collections are rare
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
