"""`SQLStore`: the catalog and event log on SQLite or PostgreSQL (SQLAlchemy Core).

One implementation serves both dialects; only the upsert construct, the
connection set-up and the append lock differ.

Durability. A method returns only after its transaction committed, so "a 2xx
means committed" holds if the API answers after the call. On PostgreSQL that
is the server's own guarantee (fsync on commit by default). SQLite runs in WAL
mode with `synchronous=NORMAL`: a committed transaction survives a crash or
`kill -9` of the process, but the last transactions before a power loss or an
OS crash may be lost. Add `?synchronous=FULL` to the URL to close that gap at
the cost of one fsync per commit.

Ordering. Every event gets `seq`, an increasing number (with gaps where a
duplicate or a failed batch consumed one). Appends take a
write lock (SQLite's `BEGIN IMMEDIATE`; a transaction-scoped advisory lock on
PostgreSQL), so `seq` order is commit order and a reader that remembers the
last `seq` it saw never misses an event committed later with a lower number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, delete, func, select, text

from sieve.data.records import Event, Item, User
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from sieve.storage.base import AppendResult
from sieve.storage.migrations import MIGRATIONS, Migration, apply_migrations
from sieve.storage.sql_bulk import SQLBulk
from sieve.storage.sql_charts import SQLCharts
from sieve.storage.sql_impressions import SQLImpressions
from sieve.storage.sql_reports import SQLReports
from sieve.storage.sql_shared import SQLShared
from sieve.storage.sql_signals import SQLSignals
from sieve.storage.tables import (
    _arrays,
    _chunks,
    _from_us,
    _seconds,
    _sqlite_insert_new,
    _to_us,
    events_table,
    experiments_table,
    items_table,
    users_table,
)

_EVENT_INSERT_COLUMNS = (
    "event_id",
    "user_id",
    "item_id",
    "type",
    "value",
    "timestamp_us",
    "request_id",
)
#: PostgreSQL's whole append in one statement, sent in autocommit (its own
#: transaction: one round trip where BEGIN, the lock, the users, the events
#: and COMMIT were five): the event log's lock (taken before any row reaches
#: the events' insert, so `seq` follows commit order), the batch's new users,
#: then the events; returns ("user", id) of the users created and ("event",
#: id) of the events inserted. The batch travels as one array per column
#: (several times faster than a multi-row VALUES list), and its rows keep
#: batch order, so `seq` follows it.
_PG_APPEND_ALL = text(
    """
    WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(:lock_key) AS held),
    new_users AS (
        INSERT INTO users (id, attributes)
        SELECT id, CAST('{}' AS jsonb) FROM unnest(CAST(:new_user AS text[])) AS batch(id)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    ),
    new_events AS (
        INSERT INTO events (event_id, user_id, item_id, type, value, timestamp_us, request_id)
        SELECT event_id, user_id, item_id, type, value, timestamp_us, request_id
        FROM locked, unnest(
            CAST(:event_id AS text[]), CAST(:user_id AS text[]), CAST(:item_id AS text[]),
            CAST(:type AS text[]), CAST(:value AS float8[]), CAST(:timestamp_us AS int8[]),
            CAST(:request_id AS text[])
        ) WITH ORDINALITY
            AS batch(event_id, user_id, item_id, type, value, timestamp_us, request_id, ord)
        ORDER BY ord
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    )
    SELECT 'user' AS kind, id FROM new_users
    UNION ALL
    SELECT 'event' AS kind, event_id FROM new_events
    """
)


class SQLStore(SQLImpressions, SQLReports, SQLShared, SQLSignals, SQLCharts, SQLBulk):
    """The `Store` on an SQLAlchemy engine (SQLite or PostgreSQL); see the module doc.

    Thread-safe: every call checks a connection out of the engine's pool.
    """

    def migrate(self, target: int | None = None, steps: Sequence[Migration] = MIGRATIONS) -> int:
        """Apply pending migrations (up to `target`); return the schema version."""
        with self._write("migrate") as conn:
            return apply_migrations(conn, steps, target)

    # ----------------------------------------------------------------- items
    @staticmethod
    def _item_row(item: Item) -> dict[str, Any]:
        return {
            "id": item.id,
            "title": item.title,
            "text": item.text,
            "categories": list(item.categories),
            "created_at_us": None if item.created_at is None else _to_us(item.created_at),
            "available": item.available,
            "attributes": dict(item.attributes),
        }

    @staticmethod
    def _item(row: Any) -> Item:
        return Item(
            id=row.id,
            title=row.title,
            text=row.text,
            categories=row.categories,
            created_at=_from_us(row.created_at_us),
            available=row.available,
            attributes=row.attributes,
        )

    def _upsert(self, table: Table, rows: list[dict[str, Any]], what: str) -> int:
        """Insert-or-replace rows by primary key; the last row of a repeated id
        wins. Items are numbered in the catalog change sequence (`SQLShared`)."""
        by_id = {row["id"]: row for row in rows}
        if not by_id:
            return 0
        stmt = self._insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name != "id"},
        )
        catalog = table is items_table
        with self._write(what) as conn:
            if catalog:
                self._lock_catalog(conn)
            conn.execute(stmt, list(by_id.values()))
            if catalog:
                self._log_catalog_changes(conn, by_id)
        return len(by_id)

    def upsert_items(self, items: Sequence[Item]) -> int:
        return self._upsert(items_table, [self._item_row(i) for i in items], "upsert_items")

    def get_item(self, item_id: str) -> Item | None:
        return self.get_items([item_id]).get(item_id)

    def get_items(self, item_ids: Iterable[str]) -> dict[str, Item]:
        ids = list(dict.fromkeys(item_ids))
        out: dict[str, Item] = {}
        with self._read("get_items") as conn:
            for chunk in _chunks(ids):
                for row in conn.execute(select(items_table).where(items_table.c.id.in_(chunk))):
                    out[row.id] = self._item(row)
        return {i: out[i] for i in ids if i in out}

    def item_categories(self, item_ids: Iterable[str]) -> dict[str, list[str]]:
        ids = list(dict.fromkeys(item_ids))
        out: dict[str, list[str]] = {}
        t = items_table
        with self._read("item_categories") as conn:
            for chunk in _chunks(ids):
                for row in conn.execute(select(t.c.id, t.c.categories).where(t.c.id.in_(chunk))):
                    out[row.id] = list(row.categories or ())
        return out

    def _delete(self, table: Table, id_: str, what: str) -> bool:
        with self._write(what) as conn:
            return conn.execute(delete(table).where(table.c.id == id_)).rowcount > 0

    def delete_item(self, item_id: str) -> bool:
        with self._write("delete_item") as conn:
            self._lock_catalog(conn)
            gone = conn.execute(delete(items_table).where(items_table.c.id == item_id)).rowcount
            if gone:
                self._log_catalog_changes(conn, [item_id])
        return gone > 0

    def _page(self, table: Table, offset: int, limit: int, what: str) -> list[Any]:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")
        with self._read(what) as conn:
            query = select(table).order_by(table.c.id).offset(offset).limit(limit)
            return list(conn.execute(query))

    def list_items(self, offset: int = 0, limit: int = 100) -> list[Item]:
        return [self._item(r) for r in self._page(items_table, offset, limit, "list_items")]

    def _count(self, table: Table, what: str) -> int:
        with self._read(what) as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def count_items(self) -> int:
        return self._count(items_table, "count_items")

    def items_frame(self) -> pd.DataFrame:
        with self._read("items_frame") as conn:
            rows = conn.execute(select(items_table).order_by(items_table.c.id)).all()
        frame = pd.DataFrame(
            {
                "item_id": pd.Series([r.id for r in rows], dtype=str),
                "title": pd.Series([r.title for r in rows], dtype=object),
                "text": pd.Series([r.text for r in rows], dtype=object),
                "categories": pd.Series([list(r.categories) for r in rows], dtype=object),
                "created_at": _seconds([r.created_at_us for r in rows]),
                "attributes": pd.Series([dict(r.attributes) for r in rows], dtype=object),
                "available": np.array([bool(r.available) for r in rows], dtype=bool),
            }
        )
        return frame[[*ITEM_COLUMNS, "available"]]

    # ----------------------------------------------------------------- users
    def upsert_users(self, users: Sequence[User]) -> int:
        rows = [{"id": u.id, "attributes": dict(u.attributes)} for u in users]
        return self._upsert(users_table, rows, "upsert_users")

    def get_user(self, user_id: str) -> User | None:
        with self._read("get_user") as conn:
            row = conn.execute(select(users_table).where(users_table.c.id == user_id)).first()
        return None if row is None else User(id=row.id, attributes=row.attributes)

    def delete_user(self, user_id: str) -> bool:
        return self._delete(users_table, user_id, "delete_user")

    def list_users(self, offset: int = 0, limit: int = 100) -> list[User]:
        rows = self._page(users_table, offset, limit, "list_users")
        return [User(id=r.id, attributes=r.attributes) for r in rows]

    def count_users(self) -> int:
        return self._count(users_table, "count_users")

    def users_frame(self) -> pd.DataFrame:
        with self._read("users_frame") as conn:
            rows = conn.execute(select(users_table).order_by(users_table.c.id)).all()
        frame = pd.DataFrame(
            {
                "user_id": pd.Series([r.id for r in rows], dtype=str),
                "attributes": pd.Series([dict(r.attributes) for r in rows], dtype=object),
            }
        )
        return frame[USER_COLUMNS]

    # ---------------------------------------------------------------- events
    def append_events(self, events: Sequence[Event], *, create_users: bool = False) -> AppendResult:
        now_us = _to_us(datetime.now(UTC))
        rows: list[dict[str, Any]] = []
        first: set[str] = set()
        for e in events:
            if e.id in first:
                continue
            first.add(e.id)
            rows.append(
                {
                    "event_id": e.id,
                    "user_id": e.user_id,
                    "item_id": e.item_id,
                    "type": e.type,
                    "value": e.value,
                    "timestamp_us": now_us if e.timestamp is None else _to_us(e.timestamp),
                    "request_id": e.request_id,
                }
            )
        inserted: set[str] = set()
        created: set[str] = set()
        if rows and self._pg:
            columns: dict[str, Any] = _arrays(rows, _EVENT_INSERT_COLUMNS)
            columns["value"] = [None if v is None else float(v) for v in columns["value"]]
            columns["lock_key"] = self._lock_key
            columns["new_user"] = sorted({r["user_id"] for r in rows}) if create_users else []
            with self._statement("append_events") as conn:
                for kind, key in conn.execute(_PG_APPEND_ALL, columns):
                    (created if kind == "user" else inserted).add(str(key))
        elif rows:
            with self._write("append_events") as conn:
                if create_users:
                    created.update(self._create_users(conn, sorted({r["user_id"] for r in rows})))
                inserted.update(
                    _sqlite_insert_new(conn, "events", _EVENT_INSERT_COLUMNS, "event_id", rows)
                )
        duplicates: list[str] = []
        seen: set[str] = set()
        for e in events:
            if e.id in seen or e.id not in inserted:
                duplicates.append(e.id)
            seen.add(e.id)
        return AppendResult(
            inserted=len(inserted), duplicates=duplicates, created_users=sorted(created)
        )

    def _create_users(self, conn: Connection, user_ids: Sequence[str]) -> list[str]:
        """Insert the users among `user_ids` not yet stored (no attributes), inside
        the caller's SQLite transaction; returns the ids inserted (PostgreSQL
        creates them inside `_PG_APPEND_ALL`)."""
        new = [{"id": u, "attributes": "{}"} for u in user_ids]  # JSON as SQLite stores it
        return _sqlite_insert_new(conn, "users", ("id", "attributes"), "id", new)

    def events_frame(self, since_seq: int | None = None, limit: int | None = None) -> pd.DataFrame:
        t = events_table
        query = select(
            t.c.event_id,
            t.c.user_id,
            t.c.item_id,
            t.c.type,
            t.c.value,
            t.c.timestamp_us,
            t.c.seq,
            t.c.request_id,
        ).order_by(t.c.seq)
        if since_seq is not None:
            query = query.where(t.c.seq > since_seq)
        if limit is not None:
            query = query.limit(limit)
        with self._read("events_frame") as conn:
            rows = conn.execute(query).all()
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 8
        frame = pd.DataFrame(
            {
                "event_id": pd.Series(cols[0], dtype=str),
                "user_id": pd.Series(cols[1], dtype=str),
                "item_id": pd.Series(cols[2], dtype=str),
                "type": pd.Series(cols[3], dtype=str),
                "value": np.array(cols[4], dtype=np.float64),
                "timestamp": np.array(cols[5], dtype=np.int64) / 1e6,
                "seq": np.array(cols[6], dtype=np.int64),
                "request_id": pd.Series(cols[7], dtype=object),
            }
        )
        return frame[[*EVENT_COLUMNS, "seq", "request_id"]]

    def user_events(self, user_id: str, limit: int = 50) -> list[Event]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        t = events_table
        query = (
            select(t)
            .where(t.c.user_id == user_id)
            .order_by(t.c.timestamp_us.desc(), t.c.seq.desc())
            .limit(limit)
        )
        with self._read("user_events") as conn:
            rows = conn.execute(query).all()
        return [
            Event(
                id=r.event_id,
                user_id=r.user_id,
                item_id=r.item_id,
                type=r.type,
                value=r.value,
                timestamp=_from_us(r.timestamp_us),
                request_id=r.request_id,
            )
            for r in rows
        ]

    def user_interactions(self, user_id: str, limit: int = 50) -> list[tuple[str, str]]:
        # Every live answer reads this: the driver's cursor on a pooled
        # connection costs a quarter of a SQLAlchemy Core execute (0.08 vs
        # 0.3 ms on SQLite), and the statement is `user_events`'s on two columns,
        # both in the covering index `ix_events_user_recent` (migration 8).
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        mark = "?" if self._engine.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"SELECT item_id, type FROM {events_table.name} WHERE user_id = {mark} "
            f"ORDER BY timestamp_us DESC, seq DESC LIMIT {int(limit)}"
        )
        with self._read("user_interactions") as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (user_id,))
                return [(str(r[0]), str(r[1])) for r in cursor.fetchall()]
            finally:
                cursor.close()

    def count_events(self) -> int:
        return self._count(events_table, "count_events")

    def max_seq(self) -> int:
        with self._read("max_seq") as conn:
            return int(
                conn.execute(select(func.coalesce(func.max(events_table.c.seq), 0))).one()[0]
            )

    # ----------------------------------------------------------- experiments
    def add_experiment(self, definition: dict[str, Any], status: str, at: datetime) -> None:
        """Store a new experiment (`StoreError` from an IntegrityError when the
        name exists: the caller says so as a conflict)."""
        row = {
            "name": definition["name"],
            "layer": definition["layer"],
            "definition": definition,
            "status": status,
            "created_at_us": _to_us(at),
            "stopped_at_us": None,
        }
        with self._write("add_experiment") as conn:
            conn.execute(experiments_table.insert(), [row])

    def experiments(self) -> list[dict[str, Any]]:
        """Every experiment in creation order: `definition`, `status`,
        `created_at` and `stopped_at` (epoch seconds or None)."""
        t = experiments_table
        with self._read("experiments") as conn:
            rows = conn.execute(select(t).order_by(t.c.created_at_us, t.c.name)).all()
        return [
            {
                "definition": dict(r.definition),
                "status": r.status,
                "created_at": r.created_at_us / 1e6,
                "stopped_at": None if r.stopped_at_us is None else r.stopped_at_us / 1e6,
            }
            for r in rows
        ]

    def set_experiment_status(self, name: str, status: str, at: datetime) -> bool:
        """Set an experiment's status (stopping records the time); False if unknown."""
        t = experiments_table
        values: dict[str, Any] = {"status": status}
        if status == "stopped":
            values["stopped_at_us"] = _to_us(at)
        with self._write("set_experiment_status") as conn:
            result = conn.execute(t.update().where(t.c.name == name).values(**values))
        return bool(result.rowcount)

    def __repr__(self) -> str:
        return f"SQLStore({self.url!r})"


__all__ = ["SQLStore"]
