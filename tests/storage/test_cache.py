"""The cache contract, run on the in-process cache and on a real Redis."""

from __future__ import annotations

import threading

import pytest

from sieve.storage import (
    Cache,
    CacheError,
    CacheUnavailable,
    MemoryCache,
    RedisCache,
    open_cache,
)

from .conftest import CacheHarness, FakeClock


def test_get_set_delete(cache: Cache) -> None:
    assert cache.get("k") is None
    cache.set("k", b"v1")
    assert cache.get("k") == b"v1"
    cache.set("k", b"\x00\xffbinary")
    assert cache.get("k") == b"\x00\xffbinary"
    cache.delete("k")
    assert cache.get("k") is None
    cache.delete("k")  # deleting an absent key is fine


def test_json_helpers(cache: Cache) -> None:
    assert cache.get_json("j") is None
    value = {"items": ["a", "b"], "scores": [1.5, 0.25], "meta": None}
    cache.set_json("j", value)
    assert cache.get_json("j") == value


def test_ttl_expiry(harness: CacheHarness) -> None:
    cache = harness.cache
    cache.set("short", b"x", ttl=0.2)
    cache.set("forever", b"y")
    cache.set_json("json", [1], ttl=0.2)
    assert cache.get("short") == b"x"
    harness.advance(0.3)
    assert cache.get("short") is None
    assert cache.get_json("json") is None
    assert cache.get("forever") == b"y"
    with pytest.raises(ValueError, match="ttl"):
        cache.set("k", b"v", ttl=0)


def test_incr(cache: Cache) -> None:
    assert cache.incr("c") == 1.0
    assert cache.incr("c", 2.5) == 3.5
    assert cache.incr("c", -0.5) == 3.0
    assert float(cache.get("c") or b"nan") == 3.0
    cache.set("text", b"abc")
    with pytest.raises(CacheError):
        cache.incr("text")


def test_incr_keeps_ttl(harness: CacheHarness) -> None:
    cache = harness.cache
    cache.set("c", b"1", ttl=0.2)
    assert cache.incr("c") == 2.0
    harness.advance(0.3)
    assert cache.get("c") is None


def test_push_recent_caps_and_orders(cache: Cache) -> None:
    for n in range(7):
        cache.push_recent("session", f"item{n}", max_len=5)
    assert cache.recent("session", 10) == ["item6", "item5", "item4", "item3", "item2"]
    assert cache.recent("session", 2) == ["item6", "item5"]
    assert cache.recent("session", 0) == []
    assert cache.recent("nobody", 3) == []
    cache.set("plain", b"v")
    with pytest.raises(CacheError):
        cache.recent("plain", 3)
    with pytest.raises(ValueError, match="max_len"):
        cache.push_recent("session", "x", max_len=0)


def test_push_recent_ttl(harness: CacheHarness) -> None:
    cache = harness.cache
    cache.push_recent("s", "a", max_len=3, ttl=0.2)
    cache.push_recent("s", "b", max_len=3)  # keeps the expiry set before
    assert cache.recent("s", 3) == ["b", "a"]
    harness.advance(0.3)
    assert cache.recent("s", 3) == []


def test_clear_prefix(cache: Cache) -> None:
    cache.set("user:1", b"a")
    cache.set("user:2", b"b")
    cache.push_recent("user:3", "x", max_len=2)
    cache.set("item:1", b"c")
    cache.set("user*glob", b"d")  # glob characters are taken literally
    assert cache.clear_prefix("user:") == 3
    assert cache.get("user:1") is None and cache.recent("user:3", 1) == []
    assert cache.get("item:1") == b"c"
    assert cache.get("user*glob") == b"d"
    assert cache.clear_prefix("user*") == 1


# ------------------------------------------------------------ memory only
def test_memory_lru_bound() -> None:
    cache = MemoryCache(max_entries=3)
    cache.set("a", b"1")
    cache.set("b", b"2")
    cache.set("c", b"3")
    assert cache.get("a") == b"1"  # a is now the most recently used
    cache.set("d", b"4")  # evicts b, the least recently used
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [b"1", b"3", b"4"]
    assert len(cache) == 3


def test_memory_ttl_uses_injected_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    cache.set("k", b"v", ttl=10)
    clock.now += 9.99
    assert cache.get("k") == b"v"
    clock.now += 0.01
    assert cache.get("k") is None
    assert len(cache) == 0  # expired entries are dropped when read


def test_memory_is_thread_safe() -> None:
    cache = MemoryCache(max_entries=50)

    def work() -> None:
        for n in range(2000):
            cache.incr("hits")
            cache.push_recent("s", str(n), max_len=10)
            cache.set(f"k{n % 100}", b"v")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.incr("hits", 0) == 8000
    assert len(cache.recent("s", 100)) == 10
    assert len(cache) <= 50


# ----------------------------------------------------------------- opening
def test_open_cache_urls() -> None:
    assert isinstance(open_cache(None), MemoryCache)
    bounded = open_cache("memory://?max_entries=7")
    assert isinstance(bounded, MemoryCache) and bounded.max_entries == 7
    with pytest.raises(ValueError, match=r"memcached://.*memory://.*redis://"):
        open_cache("memcached://localhost")
    with pytest.raises(ValueError, match="max_size"):
        open_cache("memory://?max_size=3")
    redis_cache = open_cache("redis://127.0.0.1:6379/3?prefix=app:")  # connects lazily
    assert isinstance(redis_cache, RedisCache) and redis_cache.prefix == "app:"
    redis_cache.close()


def test_redis_down_raises_cache_unavailable() -> None:
    cache = open_cache("redis://:secret@127.0.0.1:1/0?prefix=x:")
    with pytest.raises(CacheUnavailable, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0") as info:
        cache.get("k")
    assert "secret" not in str(info.value)
    with pytest.raises(CacheUnavailable):
        cache.set("k", b"v")
    cache.close()


def test_redis_prefix_isolates_keys(redis_cache: RedisCache) -> None:
    cache = redis_cache
    other = RedisCache(cache._client, prefix=cache.prefix + "other:")
    cache.set("k", b"mine")
    other.set("k", b"theirs")
    assert cache.get("k") == b"mine" and other.get("k") == b"theirs"
    assert other.clear_prefix("") == 1
    assert cache.get("k") == b"mine"


def test_get_many_in_one_call(cache: Cache) -> None:
    cache.set("a", b"1")
    cache.set("c", b"3")
    assert cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
    assert cache.get_many([]) == []


def test_set_many_then_get_many(cache: Cache) -> None:
    cache.set("a", b"old", ttl=60)
    cache.set_many({"a": b"1", "b": b"2"})  # replaces, without a TTL
    cache.set_many({})
    assert cache.get_many(["a", "b", "c"]) == [b"1", b"2", None]


def test_numeric_hashes_add_exactly(cache: Cache) -> None:
    assert cache.hash_all("h") == {} and cache.hash_get("h", ["a"]) == [None]
    cache.hash_incr("h", {"n:a": 1.0, "total": 1.0})
    cache.hash_incr("h", {"n:a": 2.5, "s:a": 0.5})
    cache.hash_incr("h", {})
    assert cache.hash_all("h") == {"n:a": 3.5, "total": 1.0, "s:a": 0.5}
    assert cache.hash_get("h", ["s:a", "n:a", "missing"]) == [0.5, 3.5, None]
    # a capped increment never passes its cap field
    assert cache.hash_incr_capped("h", "s:a", 2.0, "n:a") == 2.5
    assert cache.hash_incr_capped("h", "s:a", 5.0, "n:a") == 3.5
    assert cache.hash_incr_capped("h", "s:b", 1.0, "n:b") == 0.0
    cache.set("plain", b"v")
    with pytest.raises(CacheError):
        cache.hash_incr("plain", {"x": 1.0})


def test_numeric_hashes_sum_concurrent_writers(cache: Cache) -> None:
    def add() -> None:
        for _ in range(200):
            cache.hash_incr("h", {"n": 1.0, "s": 0.5})

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.hash_all("h") == {"n": 800.0, "s": 400.0}


def test_commit_if_is_a_fenced_write(cache: Cache) -> None:
    assert cache.commit_if({"x": b"1", "mark": b"5"}, "mark", None)
    assert not cache.commit_if({"x": b"2", "mark": b"6"}, "mark", None)  # it moved
    assert not cache.commit_if({"x": b"3", "mark": b"6"}, "mark", b"4")
    assert cache.get("x") == b"1"
    assert cache.commit_if({"x": b"4", "mark": b"6"}, "mark", b"5")
    assert cache.get_many(["x", "mark"]) == [b"4", b"6"]
