"""What processes coordinate through in the store: the catalog change
sequence (every item write and delete numbered in commit order) and leases."""

from __future__ import annotations

import threading

from sieve.data.records import Item
from sieve.storage import SQLStore

from .conftest import StoreTarget


def test_catalog_writes_are_numbered_in_order(store: SQLStore) -> None:
    assert store.catalog_seq() == 0 and store.catalog_changes(0) == []
    store.upsert_items([Item(id="a", title="A"), Item(id="b"), Item(id="a", title="A2")])
    store.upsert_items([Item(id="c")])
    assert store.delete_item("b")
    assert not store.delete_item("nothing")  # no change to number
    changes = store.catalog_changes(0)
    assert [i for _, i in changes] == ["a", "b", "c", "b"]
    seqs = [s for s, _ in changes]
    assert seqs == sorted(seqs) and store.catalog_seq() == seqs[-1]
    assert store.catalog_changes(seqs[1], limit=1) == [changes[2]]
    store.upsert_users([])  # users are not catalog items
    assert store.catalog_seq() == seqs[-1]
    assert store.prune_catalog_changes(3600.0) == 0
    assert store.prune_catalog_changes(-1.0) == 4
    assert store.catalog_changes(0) == []


def test_concurrent_catalog_writers_never_skip_a_number(target: StoreTarget) -> None:
    """A reader that remembers the last number it saw misses nothing written
    by other connections at the same time (numbers follow commit order)."""
    writers = [target.open() for _ in range(3)]
    reader = target.open()
    seen: list[str] = []
    done = threading.Event()

    def write(k: int) -> None:
        for j in range(15):
            writers[k].upsert_items([Item(id=f"w{k}-{j}")])

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    last = 0

    def read() -> None:
        nonlocal last
        for seq, item in reader.catalog_changes(last):
            seen.append(item)
            last = seq

    while not done.is_set():
        read()
        if not any(t.is_alive() for t in threads):
            done.set()
    for t in threads:
        t.join()
    read()
    assert sorted(seen) == sorted(f"w{k}-{j}" for k in range(3) for j in range(15))


def test_a_lease_has_one_holder_until_it_expires(target: StoreTarget) -> None:
    first, second = target.open(), target.open()
    assert first.lease("worker") is None
    assert first.acquire_lease("worker", "host-a:1", 60.0)
    assert not second.acquire_lease("worker", "host-b:2", 60.0)
    holder = second.lease("worker")
    assert holder is not None and holder[0] == "host-a:1" and 0 < holder[1] <= 60.0
    assert first.acquire_lease("worker", "host-a:1", 60.0)  # its holder renews it
    assert not second.release_lease("worker", "host-b:2")
    assert first.release_lease("worker", "host-a:1")
    assert second.acquire_lease("worker", "host-b:2", 0.0)  # expires at once
    assert first.lease("worker") is None
    assert first.acquire_lease("worker", "host-a:1", 60.0)  # an expired lease is free
