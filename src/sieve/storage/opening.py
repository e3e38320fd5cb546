"""`open_store`: an `SQLStore` from a URL (SQLite file or memory, PostgreSQL with an
optional schema), with the connection set-up each dialect needs."""

from __future__ import annotations

import re
import time
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from sieve.storage.sql import SQLStore

#: URL schemes `open_store` understands.
SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _sqlite_engine(url: URL) -> Engine:
    query = dict(url.query)
    sync = str(query.pop("synchronous", "NORMAL")).upper()
    if sync not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {sync!r}")
    busy_ms = int(str(query.pop("busy_timeout", "5000")))
    if query:
        raise ValueError(
            f"unknown sqlite URL option(s) {sorted(query)}; known: synchronous, busy_timeout"
        )
    url = url.set(query={})
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        engine = create_engine(
            "sqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
    else:
        Path(str(url.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own transaction handling is off:
        cur = dbapi_conn.cursor()  # we emit BEGIN ourselves, so DDL is transactional too
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # writers take the write lock up front, so two writers never deadlock on upgrade
        mode = "IMMEDIATE" if conn.get_execution_options().get("sieve_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


#: PostgreSQL connections a store keeps open (`?pool_size=N` in the URL), and
#: how many more it may open for bursts.
POOL_SIZE = 12
POOL_OVERFLOW = 8


def _postgres_engine(url: URL, schema: str | None) -> tuple[Engine, str]:
    query = dict(url.query)
    url_schema = query.pop("schema", None)
    schema = schema or (str(url_schema) if url_schema else None)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = 10
    if schema is not None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        if "options" in query:
            raise ValueError("give either ?schema= or ?options=, not both")
        connect_args["options"] = f"-c search_path={schema}"
    size = str(query.pop("pool_size", POOL_SIZE))
    if not size.isdigit() or int(size) < 1:
        raise ValueError(f"pool_size must be a positive integer, got {size!r}")
    url = url.set(drivername="postgresql+psycopg", query=query)
    # connections kept open: a replica's readers, writers and background
    # threads at once. Past it, overflow connections are opened and closed
    # per call (a new PostgreSQL session each: at the old default of 5,
    # ~2% of a loaded server's CPU went to connecting)
    engine = create_engine(
        url,
        pool_size=int(size),
        max_overflow=POOL_OVERFLOW,
        connect_args=connect_args,
    )
    _ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine, schema or "public"


#: A pooled PostgreSQL connection unused for this long is checked with a
#: ping before it is handed out again.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only when it has sat unused for
    `idle_seconds`; a dead one is replaced before anyone uses it.

    SQLAlchemy's `pool_pre_ping` pings at every checkout: one more round trip
    on every store call, where under load a connection comes back to the pool
    and goes out again within milliseconds. A connection lost while idle (a
    server restart, an idle timeout, a dropped network) is still caught
    before use; one lost in the last second is found by the request that
    uses it, which fails with `StoreUnavailable` (503, `Retry-After`) and has
    the pool replace every connection opened before the loss."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["sieve_returned"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("sieve_returned")
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # the pool drops it and checks out another
            raise exc.DisconnectionError(f"pooled connection lost while idle: {e}") from e


def open_store(
    url: str = "sqlite:///sieve.db", *, migrate: bool = True, schema: str | None = None
) -> SQLStore:
    """Open the store at `url` and (unless `migrate=False`) bring its schema up to date.

    - `sqlite:///PATH` (relative) or `sqlite:////abs/PATH`; `sqlite://` is in memory
      (one connection shared by all threads: for tests and one-off scripts).
      Options: `?synchronous=FULL` (see the module doc), `?busy_timeout=MS`.
    - `postgresql://…`, `postgres://…` or `postgresql+psycopg://…` (psycopg 3).
      `schema` (or `?schema=NAME`) puts the tables in that schema (created if
      missing) through the connection's search_path; `?pool_size=N`: the
      connections kept open (default `POOL_SIZE`).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"unsupported store URL scheme {scheme + '://'!r}; supported schemes: "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        )
    parsed = make_url(url)
    if scheme == "sqlite":
        if schema is not None:
            raise ValueError("the schema option is for PostgreSQL; SQLite has one per file")
        store = SQLStore(_sqlite_engine(parsed))
    else:
        engine, schema_name = _postgres_engine(parsed, schema)
        store = SQLStore(engine, lock_key=zlib.crc32(f"sieve.events:{schema_name}".encode()))
        if schema is not None or "schema" in parsed.query:
            with store._write("create schema") as conn:
                quoted = engine.dialect.identifier_preparer.quote_schema(schema_name)
                conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


__all__ = ["SUPPORTED_SCHEMES", "open_store"]
