"""The real PostgreSQL and Redis the tests use, and why they may be absent.

URLs come from `SIEVE_TEST_POSTGRES_URL` / `SIEVE_TEST_REDIS_URL` (defaults:
the servers at 127.0.0.1). A test that needs one skips with the reason these
functions give when it cannot be reached.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import psycopg
import redis

POSTGRES_URL = os.environ.get(
    "SIEVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SIEVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def libpq_url(url: str) -> str:
    """The URL as psycopg itself takes it (without SQLAlchemy's driver suffix)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can)."""
    try:
        with psycopg.connect(libpq_url(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {e}"
    return None


@functools.cache
def redis_problem() -> str | None:
    """Why Redis cannot be used (None when it can)."""
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as e:
        return f"Redis not reachable at {REDIS_URL}: {e}"
    return None


class GatedImpressions:
    """A real store whose impression writes wait for `gate` (`entered` is set
    once the writer holds a batch): the impression log held back on demand."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.gate = threading.Event()
        self.entered = threading.Event()

    def log_impressions(self, impressions: Any) -> int:
        self.entered.set()
        self.gate.wait(60)
        written: int = self.store.log_impressions(impressions)
        return written
