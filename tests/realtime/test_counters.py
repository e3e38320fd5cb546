"""Online counters: decayed windows with known values, the same state from
event-by-event updates and from a replay of the log, seeding from a store,
export / restore, memory and Redis alike."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from servers import REDIS_URL, redis_problem
from sieve.data.io import load_data
from sieve.data.records import Event, Item
from sieve.realtime.counters import CTR_PRIOR, CounterEvent, OnlineCounters
from sieve.storage import open_cache, open_store
from sieve.storage.cache import Cache, MemoryCache


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    prefix = f"sieve_counters_test_{uuid.uuid4().hex}:"
    c = open_cache(f"{REDIS_URL}?prefix={prefix}")
    yield c
    c.clear_prefix("")
    c.close()


def test_windows_decay_as_computed_by_hand(cache: Cache) -> None:
    counters = OnlineCounters(cache, windows={"1h": 3600.0, "1d": 86_400.0})
    counters.update(
        [
            CounterEvent("u", "a", "view", 0.0, ("x",)),
            CounterEvent("u", "a", "view", 0.0, ("x",)),
            CounterEvent("u", "a", "click", 0.0, ("x",)),
            CounterEvent("u", "b", "view", 0.0, ("y", "z")),
        ]
    )
    f = counters.item_features(["a", "b", "never"], now=3600.0)
    assert f["view@1h"][0] == pytest.approx(2 * math.exp(-1))
    assert f["click@1h"][0] == pytest.approx(math.exp(-1))
    assert f["view@1d"][0] == pytest.approx(2 * math.exp(-1 / 24))
    a, b = CTR_PRIOR
    clicks, views = math.exp(-1), 3 * math.exp(-1)  # a click implies a view
    assert f["ctr@1h"][0] == pytest.approx((clicks + a) / (views + a + b))
    assert f["view@1h"][2] == 0 and f["ctr@1h"][2] == pytest.approx(a / (a + b))
    u = counters.user_features("u", now=7200.0)
    assert u["events"] == 4 and u["recency_hours"] == pytest.approx(2.0)
    # category shares: x 3 events, y and z half an event each
    assert u["affinity:x"] == pytest.approx(3 / 4)
    assert u["affinity:y"] == pytest.approx(1 / 8)
    assert counters.user_features("nobody", now=0.0)["recency_hours"] == math.inf


def test_a_blocks_counters_in_one_read(cache: Cache) -> None:
    """`block_features` gives each item's and each user's features as the
    separate reads do, with one read of the cache for all of them."""
    counters = OnlineCounters(cache, windows={"1h": 3600.0})
    counters.update(
        [
            CounterEvent("u", "a", "view", 0.0, ("x",)),
            CounterEvent("u", "b", "click", 100.0, ("y",)),
            CounterEvent("v", "a", "purchase", 50.0, ("x", "y")),
        ]
    )
    reads: list[int] = []
    get_many = cache.get_many

    def counted(keys: list[str]) -> list[bytes | None]:
        reads.append(len(keys))
        return get_many(keys)

    cache.get_many = counted  # type: ignore[method-assign]
    items, users = counters.block_features(
        ["a", "b", "never"], np.array([3600.0, 3600.0, 7200.0]), [("u", 3600.0), ("nobody", 0.0)]
    )
    if not isinstance(cache, MemoryCache):  # Redis: one round trip
        assert reads == [3 + 2 + 2]
    alone = counters.item_features(["a", "b", "never"], np.array([3600.0, 3600.0, 7200.0]))
    assert items.keys() == alone.keys()
    for key, values in alone.items():
        np.testing.assert_array_equal(items[key], values, err_msg=key)
    assert users == [counters.user_features("u", 3600.0), counters.user_features("nobody", 0.0)]
    shares = [v for k, v in users[0].items() if k.startswith("affinity:")]
    assert users[0]["events"] == 2 and len(shares) == 2 and sum(shares) == pytest.approx(1.0)
    assert users[1] == {"events": 0.0, "recency_hours": math.inf}


def test_a_block_reads_each_shared_item_once(cache: Cache) -> None:
    """With `rows`, each row gets the features of its item as of its own
    time, the same as reading every row's item, from one key per item."""
    counters = OnlineCounters(cache, windows={"1h": 3600.0})
    counters.update(
        [
            CounterEvent("u", "a", "view", 0.0, ("x",)),
            CounterEvent("u", "b", "click", 100.0, ("y",)),
        ]
    )
    reads: list[list[str]] = []
    get_many = cache.get_many

    def counted(keys: list[str]) -> list[bytes | None]:
        reads.append(list(keys))
        return get_many(keys)

    now = np.array([3600.0, 60.0, 7200.0, 900.0])
    every = counters.item_features(["a", "b", "a", "never"], now)
    cache.get_many = counted  # type: ignore[method-assign]
    shared, _ = counters.block_features(
        ["a", "b", "never"], now, [], np.array([0, 1, 0, 2], dtype=np.int64)
    )
    if not isinstance(cache, MemoryCache):  # Redis: the three items, once each
        assert len(reads) == 1 and len(reads[0]) == 3
    assert shared.keys() == every.keys()
    for key, values in every.items():
        np.testing.assert_array_equal(shared[key], values, err_msg=key)
    assert shared["view@1h"][0] != shared["view@1h"][2]  # one item, two times


def test_replay_equals_online_updates(cache: Cache) -> None:
    """Training features (replay of the log) and serving features (updates as
    events arrive) come from the same code and agree."""
    raw = load_data("synthetic:users=60,items=40,seed=3")
    cats = {
        str(i): tuple(c) for i, c in zip(raw.items["item_id"], raw.items["categories"], strict=True)
    }
    ev = raw.events.sort_values("timestamp", kind="stable")
    online = OnlineCounters(cache)
    for start in range(0, len(ev), 97):  # arriving in small batches
        part = ev.iloc[start : start + 97]
        online.update(
            CounterEvent(str(u), str(i), str(t), float(ts), cats[str(i)])
            for u, i, t, ts in zip(
                part["user_id"], part["item_id"], part["type"], part["timestamp"], strict=True
            )
        )
    replayed = OnlineCounters.replay(ev, lambda i: cats[i])
    now = float(ev["timestamp"].max()) + 600
    items = [str(i) for i in raw.items["item_id"]]
    a, b = online.item_features(items, now), replayed.item_features(items, now)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, err_msg=key)
    assert a["view@7d"].sum() > 0
    user = str(ev["user_id"].iloc[0])
    assert online.user_features(user, now) == pytest.approx(replayed.user_features(user, now))


def test_replay_until_sees_only_the_past() -> None:
    raw = load_data("synthetic:users=30,items=20,seed=4")
    ev = raw.events
    cut = float(ev["timestamp"].median())
    past = OnlineCounters.replay(ev, lambda i: (), until=cut)
    only_past = OnlineCounters.replay(ev[ev["timestamp"] <= cut], lambda i: ())
    items = [str(i) for i in raw.items["item_id"]]
    np.testing.assert_allclose(
        past.item_features(items, cut)["view@7d"], only_past.item_features(items, cut)["view@7d"]
    )


def test_catch_up_folds_the_stored_log_once(cache: Cache, tmp_path: Path) -> None:
    """The counters fold the stored log from their watermark, a batch at a
    time; folding again (another process, a restart) adds nothing, and events
    appended later are folded by the next catch-up, once."""
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.upsert_items([Item(id=i, title=i, categories=["x"]) for i in ("a", "b")])

        def events(ks: range) -> list[Event]:
            return [
                Event(
                    id=f"e{k}",
                    user_id=f"u{k % 3}",
                    item_id="ab"[k % 2],
                    type=("view", "click")[k % 2],
                    timestamp=datetime.fromtimestamp(1_000_000 + 600 * k, UTC),
                )
                for k in ks
            ]

        store.append_events(events(range(8)))
        counters = OnlineCounters(cache)
        assert counters.watermark() == 0
        assert counters.catch_up(store, batch=3) == 8  # three batches
        assert counters.watermark() == 8
        assert counters.catch_up(store) == 0
        store.append_events(events(range(8, 10)))
        assert counters.catch_up(store) == 2
        assert counters.catch_up(store) == 0
        log = store.events_frame()
    expected = OnlineCounters.replay(log, lambda i: ("x",))
    now = 1_000_000 + 600 * 10
    a, b = counters.item_features(["a", "b"], now), expected.item_features(["a", "b"], now)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, err_msg=key)
    for user in ("u0", "u1", "u2"):
        assert counters.user_features(user, now) == pytest.approx(expected.user_features(user, now))
    assert counters.user_features("u0", now)["affinity:x"] == pytest.approx(1.0)


def test_a_fold_in_progress_elsewhere_is_not_repeated(cache: Cache, tmp_path: Path) -> None:
    """While another process holds the folding lease, a catch-up returns at once."""
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.upsert_items([Item(id="a", title="a")])
        store.append_events(
            [Event(id="e", user_id="u", item_id="a", type="view", timestamp=datetime.now(UTC))]
        )
        counters = OnlineCounters(cache)
        assert cache.add(counters.prefix + "v2:folding", b"other", 30.0)
        assert counters.catch_up(store) == 0
        cache.delete(counters.prefix + "v2:folding")
        assert counters.catch_up(store) == 1


def test_export_restore_and_records_of_another_layout(cache: Cache) -> None:
    counters = OnlineCounters(cache, windows={"1h": 3600.0})
    counters.update([CounterEvent("u", "a", "click", 0.0, ("x", "y"))])
    records = counters.export(["a", "zz"], ["u"])
    assert len(records) == 3  # the item, the user, the user's categories
    copy = OnlineCounters(MemoryCache(), windows={"1h": 3600.0})
    copy.restore(records)
    assert copy.item_features(["a"], 60.0)["click@1h"] == pytest.approx(math.exp(-60 / 3600))
    assert copy.user_features("u", 60.0) == counters.user_features("u", 60.0)
    # counters reconfigured with other windows read the old records as absent
    wider = OnlineCounters(cache)
    assert wider.item_features(["a"], 60.0)["click@1h"][0] == 0.0
    wider.update([CounterEvent("u", "a", "view", 60.0)])
    assert wider.item_features(["a"], 60.0)["view@7d"][0] == pytest.approx(1.0)


def test_reads_while_the_memory_records_grow() -> None:
    """Request threads read while the counter thread adds rows (the matrix
    is reallocated as it grows): no error, and every read row is complete."""
    import threading

    counters = OnlineCounters(MemoryCache())
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for b in range(200):
                ids = [f"i{b}-{k}" for k in range(100)]
                counters.update_columns(ids, ids, ["view"] * 100, [float(b)] * 100)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not stop.is_set():
        f = counters.item_features([f"i{b}-0" for b in range(200)], 1000.0)
        seen = np.isfinite(f["recency_hours"])
        assert (f["view@7d"][seen] > 0).all()
    writer.join()
    assert not errors
    assert np.isfinite(counters.item_features(["i199-99"], 1000.0)["recency_hours"]).all()


def test_a_fold_whose_lease_ran_out_cannot_count_a_batch_twice(tmp_path: Path) -> None:
    """Two processes on one Redis: the first fold's lease runs out mid-batch
    and a second process folds the same events meanwhile; the first one's
    commit is refused (its watermark moved), so each event counts once."""
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    url = f"{REDIS_URL}?prefix=sieve_fence_test_{uuid.uuid4().hex}:"
    first, second = OnlineCounters(open_cache(url)), OnlineCounters(open_cache(url))
    try:
        with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
            store.upsert_items([Item(id=i, title=i, categories=["x"]) for i in ("a", "b")])
            store.append_events(
                [
                    Event(
                        id=f"e{k}",
                        user_id=f"u{k % 3}",
                        item_id="ab"[k % 2],
                        type="click",
                        timestamp=datetime.fromtimestamp(1_000_000 + 60 * k, UTC),
                    )
                    for k in range(6)
                ]
            )

            class Stalling:
                """The store as the first fold sees it: while it reads the
                batch's categories, its lease expires and another folds."""

                def __init__(self) -> None:
                    self.stalled = False

                def __getattr__(self, name: str) -> object:
                    return getattr(store, name)

                def item_categories(self, items: list[str]) -> dict[str, list[str]]:
                    if not self.stalled:
                        self.stalled = True
                        first.cache.delete(first.prefix + "v2:folding")  # the lease ran out
                        assert second.catch_up(store) == 6
                    return store.item_categories(items)

            assert first.catch_up(Stalling()) == 0  # type: ignore[arg-type]
            assert first.watermark() == second.watermark() == store.max_seq()
            log = store.events_frame()
        expected = OnlineCounters.replay(log, lambda i: ("x",))
        now = 1_000_000 + 600.0
        got = first.item_features(["a", "b"], now)
        for key, want in expected.item_features(["a", "b"], now).items():
            np.testing.assert_allclose(got[key], want, rtol=1e-12, err_msg=key)
        assert first.user_features("u0", now)["events"] == 2
    finally:
        first.cache.clear_prefix("")
        first.cache.close()
        second.cache.close()
