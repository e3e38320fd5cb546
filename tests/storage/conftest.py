"""Fixtures of the storage contract suites: one store per backend, one cache per backend.

PostgreSQL and Redis are real servers (URLs from `SIEVE_TEST_POSTGRES_URL` /
`SIEVE_TEST_REDIS_URL`); their tests skip, naming the URL, when the server is
absent. Tests run in parallel (xdist), so each PostgreSQL test gets its own
schema and each Redis test its own key prefix, both removed afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from servers import POSTGRES_URL, REDIS_URL, libpq_url, postgres_problem, redis_problem
from sieve.storage import Cache, MemoryCache, RedisCache, SQLStore, open_cache, open_store


@dataclass
class StoreTarget:
    """One database a test may open (and reopen) any number of times."""

    backend: str
    url: str
    schema: str | None = None
    opened: list[SQLStore] = field(default_factory=list)

    def open(self, **kwargs: Any) -> SQLStore:
        if self.schema is not None:
            kwargs.setdefault("schema", self.schema)
        store = open_store(self.url, **kwargs)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """A fresh database: an SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        t = StoreTarget("sqlite", f"sqlite:///{tmp_path / 'sieve.db'}")
        yield t
        for s in t.opened:
            s.close()
        return
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    t = StoreTarget("postgresql", POSTGRES_URL, schema=f"sieve_test_{uuid.uuid4().hex[:16]}")
    try:
        yield t
    finally:
        for s in t.opened:
            s.close()
        with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{t.schema}" CASCADE')


@pytest.fixture
def store(target: StoreTarget) -> SQLStore:
    """A migrated, empty store on each backend."""
    return target.open()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class CacheHarness:
    """A cache plus `advance(seconds)`: moves the fake clock (memory) or sleeps (Redis)."""

    backend: str
    cache: Cache
    advance: Callable[[float], None]


@pytest.fixture
def redis_cache() -> Iterator[RedisCache]:
    """A Redis cache under a key prefix of its own, cleared afterwards."""
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    sep = "&" if "?" in REDIS_URL else "?"
    cache = open_cache(f"{REDIS_URL}{sep}prefix=sieve_test_{uuid.uuid4().hex}:")
    assert isinstance(cache, RedisCache)
    try:
        yield cache
    finally:
        cache.clear_prefix("")
        cache.close()


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest) -> CacheHarness:
    if request.param == "memory":
        clock = FakeClock()

        def advance(seconds: float) -> None:
            clock.now += seconds

        return CacheHarness("memory", MemoryCache(max_entries=1000, clock=clock), advance)
    return CacheHarness("redis", request.getfixturevalue("redis_cache"), time.sleep)


@pytest.fixture
def cache(harness: CacheHarness) -> Cache:
    return harness.cache
