"""`SQLShared`: what several server processes and workers coordinate through
in the store, beside the event log.

- The catalog change sequence: every item written or deleted gets a row in
  `catalog_changes` in the same transaction as the write, numbered in commit
  order (catalog writers take a lock: SQLite's write lock, a
  transaction-scoped advisory lock on PostgreSQL), so a replica that
  remembers the last number it read never misses a change another replica
  committed later. Replicas poll it (`catalog_changes(after_seq)`) to serve
  each other's `POST /items` without a reload. Old rows can be pruned
  (`prune_catalog_changes`): a replica only reads rows newer than its start.
- Leases: a named lease held by one holder until it expires (`acquire_lease`
  renews it for its holder); the retraining worker holds one so two workers
  never train or promote at once. Time is the database server's on
  PostgreSQL (one clock for every host), the local clock on SQLite (one host).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, func, select, text

from sieve.storage.sql_base import SQLBase
from sieve.storage.tables import _to_us, catalog_changes_table, leases_table

#: Added to the event log's advisory lock key: the catalog writers' own lock.
_CATALOG_LOCK_OFFSET = 1 << 32


class SQLShared(SQLBase):
    """The catalog change sequence and leases; mixed into `SQLStore`."""

    # ------------------------------------------------------- catalog changes
    def _log_catalog_changes(self, conn: Connection, item_ids: Iterable[str]) -> None:
        """Number the written or deleted items, inside the caller's write
        transaction (which takes the catalog writers' lock first)."""
        now = _to_us(datetime.now(UTC))
        rows = [{"item_id": i, "at_us": now} for i in dict.fromkeys(item_ids)]
        if rows:
            conn.execute(catalog_changes_table.insert(), rows)

    def _lock_catalog(self, conn: Connection) -> None:
        """Serialise catalog writers so change numbers follow commit order."""
        if self._pg:
            key = self._lock_key + _CATALOG_LOCK_OFFSET
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def catalog_seq(self) -> int:
        """The newest catalog change number (0: none yet)."""
        t = catalog_changes_table
        with self._read("catalog_seq") as conn:
            return int(conn.execute(select(func.coalesce(func.max(t.c.seq), 0))).scalar_one())

    def catalog_changes(self, after_seq: int, limit: int = 10_000) -> list[tuple[int, str]]:
        """The first `limit` catalog changes numbered after `after_seq`, in
        order: (number, item id); the item's state now is in `items`."""
        t = catalog_changes_table
        query = select(t.c.seq, t.c.item_id).where(t.c.seq > after_seq).order_by(t.c.seq)
        with self._read("catalog_changes") as conn:
            return [(int(r.seq), str(r.item_id)) for r in conn.execute(query.limit(limit))]

    def prune_catalog_changes(self, older_than_seconds: float) -> int:
        """Delete change rows older than this many seconds; returns how many."""
        cut = _to_us(datetime.now(UTC)) - int(older_than_seconds * 1e6)
        t = catalog_changes_table
        with self._write("prune_catalog_changes") as conn:
            return int(conn.execute(delete(t).where(t.c.at_us < cut)).rowcount or 0)

    # ---------------------------------------------------------------- leases
    def _now_us(self, conn: Connection) -> int:
        if self._pg:
            sql = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
            return int(conn.execute(text(sql)).scalar_one())
        return int(time.time() * 1e6)

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease `name` for `seconds` if it is free or expired, or
        renew it if `holder` has it; False when another holder has it."""
        t = leases_table
        with self._write("acquire_lease") as conn:
            now = self._now_us(conn)
            stmt = self._insert(t).values(
                name=name, holder=holder, expires_us=now + int(seconds * 1e6)
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.name],
                set_={"holder": stmt.excluded.holder, "expires_us": stmt.excluded.expires_us},
                where=(t.c.expires_us < now) | (t.c.holder == holder),
            )
            return conn.execute(stmt.returning(t.c.holder)).first() is not None

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease back if `holder` has it; False if it did not."""
        t = leases_table
        with self._write("release_lease") as conn:
            done = conn.execute(delete(t).where((t.c.name == name) & (t.c.holder == holder)))
            return bool(done.rowcount)

    def lease(self, name: str) -> tuple[str, float] | None:
        """(holder, seconds left) of the lease `name`, or None when nobody holds it."""
        t = leases_table
        with self._read("lease") as conn:
            row = conn.execute(select(t.c.holder, t.c.expires_us).where(t.c.name == name)).first()
            now = self._now_us(conn)
        if row is None or row.expires_us < now:
            return None
        return str(row.holder), (row.expires_us - now) / 1e6


__all__ = ["SQLShared"]
