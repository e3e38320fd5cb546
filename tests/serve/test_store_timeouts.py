"""A database that stops answering costs the requests that need it a clean 503
with `Retry-After` — never a hang or a 500 — and the endpoints that need no
database keep answering.

The hang is real: another connection holds an exclusive lock on the events
table of a real PostgreSQL database, so every read of the log waits for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import psycopg
import pytest

from serve.conftest import MakeClient, Trained
from servers import POSTGRES_URL, libpq_url, postgres_problem
from sieve.storage import open_store
from sieve.training.snapshot import import_data


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL schema of its own (dropped afterwards)."""
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    schema = f"sieve_test_{uuid.uuid4().hex[:16]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}schema={schema}"
    finally:
        with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_hanging_database_gives_503_and_spares_the_rest(
    trained: Trained, pg_url: str, make_client: MakeClient, tmp_path: Path
) -> None:
    with open_store(pg_url) as store:
        import_data(store, trained.raw)
    schema = pg_url.rsplit("schema=", 1)[1]
    user = str(trained.raw.events["user_id"].iloc[0])
    # the default limit: a loaded machine answers an unlocked read well within it;
    # no kept answers: the second request must read the locked database
    client = make_client(
        store_url=pg_url,
        model_dir=trained.model_dir,
        store_timeout_seconds=2.0,
        answer_ttl_seconds=0,
    )
    assert client.get(f"/recommendations/{user}").status_code == 200
    with psycopg.connect(libpq_url(POSTGRES_URL)) as locker:
        locker.execute(f"SET search_path TO {schema}")
        locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # until rollback
        with ThreadPoolExecutor(1) as pool:  # a request that hangs fails the test, not CI
            pending = pool.submit(client.get, f"/recommendations/{user}")
            try:
                r = pending.result(timeout=60)
            except FutureTimeout:
                locker.rollback()
                pytest.fail("the request waited for the locked database")
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "2"
        assert "did not answer" not in r.text  # the store's URL and timing stay in the log
        assert client.get("/health").status_code == 200
        popular = client.get("/popular")
        assert popular.status_code == 200 and popular.json()["items"]
        locker.rollback()
    assert client.get(f"/recommendations/{user}").status_code == 200
