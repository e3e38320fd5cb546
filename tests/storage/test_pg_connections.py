"""PostgreSQL connections: reads without a transaction, pings only after idling.

Each store call used to cost round trips besides its statement: a ping at
every checkout, and for a read a BEGIN and a ROLLBACK. Reads now run in
autocommit, and a pooled connection is pinged only when it sat unused for
`PING_AFTER_IDLE_SECONDS`; these tests kill the connection's server process
to show what is still caught and what a request then sees.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text

from servers import POSTGRES_URL, libpq_url
from sieve.data.records import Event, Item
from sieve.storage import AppendResult, SQLStore, StoreUnavailable, opening

from .conftest import StoreTarget

#: PostgreSQL only (the `target` fixture skips, naming the URL, without a server)
pytestmark = pytest.mark.parametrize("target", ["postgresql"], indirect=True)


@pytest.fixture
def pg(target: StoreTarget) -> StoreTarget:
    return target


def _filled(store: SQLStore) -> SQLStore:
    store.upsert_items([Item(id="a"), Item(id="b")])
    store.append_events([Event(id="e1", user_id="u", item_id="a", type="view")], create_users=True)
    return store


def _kill_pooled_connection(store: SQLStore) -> None:
    """End the server process of the store's (only) pooled connection."""
    with store._read("pid") as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_read_leaves_no_transaction_open(pg: StoreTarget) -> None:
    store = _filled(pg.open())
    with store._read("probe") as conn:
        conn.execute(text("SELECT 1")).scalar_one()
        raw = conn.connection.dbapi_connection
        assert raw is not None and raw.info.transaction_status == TransactionStatus.IDLE
    with store._write("probe") as conn:  # writes keep their transaction
        conn.execute(text("SELECT 1")).scalar_one()
        raw = conn.connection.dbapi_connection
        assert raw is not None and raw.info.transaction_status == TransactionStatus.INTRANS
    assert store.user_interactions("u", limit=5) == [("a", "view")]
    assert {i for i, _ in store.newest_items(5)} == {"a", "b"}  # a server-side cursor


def test_a_connection_lost_while_idle_is_replaced_before_use(
    pg: StoreTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opening, "PING_AFTER_IDLE_SECONDS", 0.0)  # every reuse counts as idle
    store = _filled(pg.open())
    _kill_pooled_connection(store)
    assert store.user_interactions("u", limit=5) == [("a", "view")]  # no error


def test_a_connection_lost_a_moment_ago_fails_one_call_then_the_pool_recovers(
    pg: StoreTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opening, "PING_AFTER_IDLE_SECONDS", 3600.0)  # never pinged
    store = _filled(pg.open())
    _kill_pooled_connection(store)
    with pytest.raises(StoreUnavailable):
        store.user_interactions("u", limit=5)
    assert store.user_interactions("u", limit=5) == [("a", "view")]


def test_an_append_takes_the_log_lock_before_numbering_its_events(pg: StoreTarget) -> None:
    """The append is one statement in autocommit; while another transaction
    holds the event log's lock it waits before any of its events takes a
    `seq` (so `seq` still follows commit order), then appends them all."""
    store = _filled(pg.open())
    options = f"-c search_path={pg.schema}"
    with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True, options=options) as look:
        sequence = look.execute("SELECT pg_get_serial_sequence('events', 'seq')").fetchone()
        assert sequence is not None
        numbered = f"SELECT last_value FROM {sequence[0]}"
        before = look.execute(numbered).fetchone()
        with psycopg.connect(libpq_url(POSTGRES_URL), options=options) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (store._lock_key,))
            batch = [
                Event(id=f"n{k}", user_id=f"new{k}", item_id="b", type="view") for k in range(3)
            ]
            appended: list[object] = []
            worker = threading.Thread(
                target=lambda: appended.append(store.append_events(batch, create_users=True))
            )
            worker.start()
            key = store._lock_key & 0xFFFF_FFFF_FFFF_FFFF  # this log's lock, as pg_locks shows it
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND classid::int8 = %s AND objid::int8 = %s"
            )
            deadline = time.monotonic() + 30
            while look.execute(waiting, (key >> 32, key & 0xFFFF_FFFF)).fetchone() == (0,):
                assert time.monotonic() < deadline, "the append never waited for the lock"
                time.sleep(0.01)
            assert look.execute(numbered).fetchone() == before  # no seq taken yet
            holder.rollback()
        worker.join(30)
    assert len(appended) == 1
    result = appended[0]
    assert isinstance(result, AppendResult)
    assert result.inserted == 3 and result.created_users == ["new0", "new1", "new2"]
    assert [e for e, _ in store.user_interactions("new1", limit=5)] == ["b"]
