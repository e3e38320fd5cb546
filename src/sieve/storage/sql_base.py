"""`SQLBase`: the engine, transactions and error translation every part of `SQLStore` uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from sqlalchemy import Connection, Engine, exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from sieve.storage.base import StoreError, StoreUnavailable


class SQLBase:
    """An SQLAlchemy engine (SQLite or PostgreSQL) with read and write transactions
    whose database errors become `StoreError`; `SQLStore` builds on it.

    Thread-safe: every call checks a connection out of the engine's pool.
    """

    def __init__(self, engine: Engine, *, url: str | None = None, lock_key: int = 0) -> None:
        self._engine = engine
        self.url = url or engine.url.render_as_string(hide_password=True)
        self._pg = engine.dialect.name == "postgresql"
        # PostgreSQL reads run each statement in its own implicit transaction
        # (autocommit; the same pool): a read is then one round trip, where
        # BEGIN and the ROLLBACK on the connection's return made it three.
        # Under READ COMMITTED a transaction's statements each see a snapshot
        # of their own anyway, so no read sees anything else. SQLite keeps its
        # read transactions: they are a consistent snapshot there, and local.
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if self._pg else engine
        )
        self._lock_key = lock_key
        self._insert = pg_dialect.insert if self._pg else sqlite_dialect.insert

    @property
    def engine(self) -> Engine:
        return self._engine

    # ---------------------------------------------------------- transactions
    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Database errors → `StoreError` naming the operation (and the URL if unreachable)."""
        try:
            yield
        except (exc.IntegrityError, exc.DataError) as e:
            raise StoreError(f"{what} rejected, nothing stored: {e.orig}") from e
        except (exc.OperationalError, exc.InterfaceError) as e:
            msg = str(e.orig)
            if "no such table" in msg:  # SQLite's word for an unmigrated database
                raise StoreError(f"{what} failed: {msg}; run migrate()") from e
            raise StoreUnavailable(f"{what} failed: database at {self.url}: {msg}") from e
        except exc.DBAPIError as e:
            raise StoreError(f"{what} failed: {e.orig}") from e
        except self._engine.dialect.loaded_dbapi.OperationalError as e:  # a raw cursor's
            raise StoreUnavailable(f"{what} failed: database at {self.url}: {e}") from e
        except self._engine.dialect.loaded_dbapi.Error as e:
            raise StoreError(f"{what} failed: {e}") from e

    @contextmanager
    def _read(self, what: str, *, transaction: bool = False) -> Iterator[Connection]:
        """A connection for reads; with `transaction`, inside a transaction on
        PostgreSQL too (a server-side cursor needs one)."""
        engine = self._engine if transaction else self._reader
        with self._translate(what), engine.connect() as conn:
            yield conn

    @contextmanager
    def _statement(self, what: str) -> Iterator[Connection]:
        """A PostgreSQL connection in autocommit for a write that is ONE
        statement, atomic by itself: its own transaction, one round trip
        (BEGIN and COMMIT made it three): a connection as reads get one."""
        with self._read(what) as conn:
            yield conn

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        """A transaction that commits on success and rolls back on any error."""
        with (
            self._translate(what),
            self._engine.connect().execution_options(sieve_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
