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

import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    exc,
    exists,
    func,
    literal,
    select,
    text,
    union,
    union_all,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem, Item, User
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from sieve.storage.base import AppendResult, StoreError, StoreUnavailable, WindowCounts
from sieve.storage.migrations import MIGRATIONS, JSONType, Migration, SeqType, apply_migrations

#: URL schemes `open_store` understands.
SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Ids per `IN (…)` list; well under both dialects' bound-parameter limits.
_CHUNK = 1000

# The tables as they are now (the migrations create them).
_md = MetaData()
items_table = Table(
    "items",
    _md,
    Column("id", String(256), primary_key=True),
    Column("title", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("categories", JSONType, nullable=False),
    Column("created_at_us", BigInteger),
    Column("available", Boolean, nullable=False),
    Column("attributes", JSONType, nullable=False),
)
users_table = Table(
    "users",
    _md,
    Column("id", String(256), primary_key=True),
    Column("attributes", JSONType, nullable=False),
)
events_table = Table(
    "events",
    _md,
    Column("seq", SeqType, Identity(), primary_key=True),
    Column("event_id", String(256), nullable=False, unique=True),
    Column("user_id", String(256), nullable=False),
    Column("item_id", String(256), nullable=False),
    Column("type", String(32), nullable=False),
    Column("value", Float(53)),
    Column("timestamp_us", BigInteger, nullable=False),
    Column("request_id", String(256)),
)
impressions_table = Table(
    "impressions",
    _md,
    Column("request_id", String(256), primary_key=True),
    Column("user_id", String(256)),
    Column("timestamp_us", BigInteger, nullable=False),
    Column("model_version", String(256), nullable=False),
    Column("experiment", String(256)),
    Column("arm", String(256)),
    Column("context", JSONType, nullable=False),
)
impression_items_table = Table(
    "impression_items",
    _md,
    Column("request_id", String(256), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("user_id", String(256)),
    Column("item_id", String(256), nullable=False),
    Column("score", Float(53), nullable=False),
    Column("propensity", Float(53), nullable=False),
    Column("sources", JSONType, nullable=False),
    Column("timestamp_us", BigInteger, nullable=False),
)

experiments_table = Table(
    "experiments",
    _md,
    Column("name", String(256), primary_key=True),
    Column("layer", String(256), nullable=False),
    Column("definition", JSONType, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("stopped_at_us", BigInteger),
)
impression_arms_table = Table(
    "impression_arms",
    _md,
    Column("request_id", String(256), primary_key=True),
    Column("experiment", String(256), primary_key=True),
    Column("arm", String(256), nullable=False),
    Column("user_id", String(256)),
    Column("propensity", Float(53), nullable=False),
    Column("timestamp_us", BigInteger, nullable=False),
)

#: Columns of `impressions_frame`: one row per shown slot.
IMPRESSION_COLUMNS = [
    "request_id",
    "user_id",
    "item_id",
    "position",
    "score",
    "propensity",
    "sources",
    "model_version",
    "experiment",
    "arm",
    "timestamp",
]

_EVENT_INSERT_COLUMNS = (
    "event_id",
    "user_id",
    "item_id",
    "type",
    "value",
    "timestamp_us",
    "request_id",
)
#: PostgreSQL's bulk append: the batch travels as one array per column and is
#: inserted by one set-based statement (several times faster than a multi-row
#: VALUES list); rows keep batch order, so `seq` follows it.
_PG_APPEND = text(
    """
    INSERT INTO events (event_id, user_id, item_id, type, value, timestamp_us, request_id)
    SELECT event_id, user_id, item_id, type, value, timestamp_us, request_id
    FROM unnest(
        CAST(:event_id AS text[]), CAST(:user_id AS text[]), CAST(:item_id AS text[]),
        CAST(:type AS text[]), CAST(:value AS float8[]), CAST(:timestamp_us AS int8[]),
        CAST(:request_id AS text[])
    ) WITH ORDINALITY
        AS batch(event_id, user_id, item_id, type, value, timestamp_us, request_id, ord)
    ORDER BY ord
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)


def _to_us(value: datetime) -> int:
    """Exact microseconds since the epoch (a naive datetime is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICRO


def _from_us(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _seconds(us: Sequence[int | None]) -> np.ndarray:
    """Float seconds since the epoch; NaN where unknown."""
    arr = np.array([np.nan if u is None else u for u in us], dtype=np.float64)
    return arr / 1e6


def _chunks(values: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class SQLStore:
    """The `Store` on an SQLAlchemy engine (SQLite or PostgreSQL); see the module doc.

    Thread-safe: every call checks a connection out of the engine's pool.
    """

    def __init__(self, engine: Engine, *, url: str | None = None, lock_key: int = 0) -> None:
        self._engine = engine
        self.url = url or engine.url.render_as_string(hide_password=True)
        self._pg = engine.dialect.name == "postgresql"
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

    @contextmanager
    def _read(self, what: str) -> Iterator[Connection]:
        with self._translate(what), self._engine.connect() as conn:
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
        """Insert-or-replace rows by primary key; the last row of a repeated id wins."""
        by_id = {row["id"]: row for row in rows}
        if not by_id:
            return 0
        stmt = self._insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name != "id"},
        )
        with self._write(what) as conn:
            conn.execute(stmt, list(by_id.values()))
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
        return self._delete(items_table, item_id, "delete_item")

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
        created: list[str] = []
        if rows:
            with self._write("append_events") as conn:
                if self._pg:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
                if create_users:
                    created = self._create_users(conn, sorted({r["user_id"] for r in rows}))
                if self._pg:
                    columns = {c: [r[c] for r in rows] for c in _EVENT_INSERT_COLUMNS}
                    columns["value"] = [None if v is None else float(v) for v in columns["value"]]
                    inserted.update(conn.execute(_PG_APPEND, columns).scalars())
                else:
                    stmt = (
                        self._insert(events_table)
                        .on_conflict_do_nothing(index_elements=[events_table.c.event_id])
                        .returning(events_table.c.event_id)
                    )
                    inserted.update(conn.execute(stmt, rows).scalars())
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
        the caller's transaction; returns the ids inserted."""
        created: list[str] = []
        for start in range(0, len(user_ids), _CHUNK):
            chunk = user_ids[start : start + _CHUNK]
            stmt = (
                self._insert(users_table)
                .on_conflict_do_nothing(index_elements=[users_table.c.id])
                .returning(users_table.c.id)
            )
            rows = [{"id": u, "attributes": {}} for u in chunk]
            created.extend(conn.execute(stmt, rows).scalars())
        return created

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

    def count_events(self) -> int:
        return self._count(events_table, "count_events")

    def max_seq(self) -> int:
        with self._read("max_seq") as conn:
            return int(
                conn.execute(select(func.coalesce(func.max(events_table.c.seq), 0))).one()[0]
            )

    # ----------------------------------------------------------- impressions
    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        """Store served lists (idempotent by request id); returns how many were new."""
        now_us = _to_us(datetime.now(UTC))
        heads: dict[str, dict[str, Any]] = {}
        slots: list[dict[str, Any]] = []
        arms: list[dict[str, Any]] = []
        for imp in impressions:
            if imp.request_id in heads:
                continue
            ts = now_us if imp.timestamp is None else _to_us(imp.timestamp)
            heads[imp.request_id] = {
                "request_id": imp.request_id,
                "user_id": imp.user_id,
                "timestamp_us": ts,
                "model_version": imp.model_version,
                "experiment": imp.experiment,
                "arm": imp.arm,
                "context": dict(imp.context),
            }
            slots.extend(
                {
                    "request_id": imp.request_id,
                    "position": it.position,
                    "user_id": imp.user_id,
                    "item_id": it.item_id,
                    "score": it.score,
                    "propensity": it.propensity,
                    "sources": list(it.sources),
                    "timestamp_us": ts,
                }
                for it in imp.items
            )
            arms.extend(
                {
                    "request_id": imp.request_id,
                    "experiment": a.experiment,
                    "arm": a.arm,
                    "user_id": imp.user_id,
                    "propensity": a.propensity,
                    "timestamp_us": ts,
                }
                for a in imp.arms
            )
        if not heads:
            return 0
        with self._write("log_impressions") as conn:
            stmt = (
                self._insert(impressions_table)
                .on_conflict_do_nothing(index_elements=[impressions_table.c.request_id])
                .returning(impressions_table.c.request_id)
            )
            new = set(conn.execute(stmt, list(heads.values())).scalars())
            rows = [s for s in slots if s["request_id"] in new]
            if rows:
                conn.execute(impression_items_table.insert(), rows)
            arm_rows = [a for a in arms if a["request_id"] in new]
            if arm_rows:
                conn.execute(impression_arms_table.insert(), arm_rows)
        return len(new)

    def get_impression(self, request_id: str) -> Impression | None:
        """The logged response of a request, or None."""
        with self._read("get_impression") as conn:
            head = conn.execute(
                select(impressions_table).where(impressions_table.c.request_id == request_id)
            ).first()
            if head is None:
                return None
            rows = conn.execute(
                select(impression_items_table)
                .where(impression_items_table.c.request_id == request_id)
                .order_by(impression_items_table.c.position)
            ).all()
            arm_rows = conn.execute(
                select(impression_arms_table).where(
                    impression_arms_table.c.request_id == request_id
                )
            ).all()
        return Impression(
            request_id=head.request_id,
            user_id=head.user_id,
            timestamp=_from_us(head.timestamp_us),
            model_version=head.model_version,
            experiment=head.experiment,
            arm=head.arm,
            context=head.context,
            items=[
                ImpressionItem(
                    item_id=r.item_id,
                    position=r.position,
                    score=r.score,
                    sources=r.sources,
                    propensity=r.propensity,
                )
                for r in rows
            ],
            arms=[
                ImpressionArm(experiment=a.experiment, arm=a.arm, propensity=a.propensity)
                for a in arm_rows
            ],
        )

    def attribute(
        self, user_id: str, item_id: str, at: datetime | None, window_seconds: float
    ) -> str | None:
        """The request id of the latest impression of `item_id` to `user_id` at
        or before `at` (default now) and at most `window_seconds` earlier."""
        at_us = _to_us(at or datetime.now(UTC))
        t = impression_items_table
        query = (
            select(t.c.request_id)
            .where(
                t.c.user_id == user_id,
                t.c.item_id == item_id,
                t.c.timestamp_us <= at_us,
                t.c.timestamp_us >= at_us - int(window_seconds * 1e6),
            )
            .order_by(t.c.timestamp_us.desc())
            .limit(1)
        )
        with self._read("attribute") as conn:
            row = conn.execute(query).first()
        return None if row is None else str(row[0])

    def attribute_many(
        self, clicks: Sequence[tuple[str, str, datetime | None]], window_seconds: float
    ) -> list[str | None]:
        """`attribute` for many (user, item, time) at once, with one query per
        chunk of users instead of one per event (batch ingestion stays fast)."""
        if not clicks:
            return []
        now = datetime.now(UTC)
        at_us = [_to_us(at or now) for _, _, at in clicks]
        window_us = int(window_seconds * 1e6)
        t = impression_items_table
        found: dict[tuple[str, str], list[tuple[int, str]]] = {}
        users = sorted({u for u, _, _ in clicks})
        items = sorted({i for _, i, _ in clicks})
        with self._read("attribute_many") as conn:
            for chunk in _chunks(users):
                query = select(t.c.user_id, t.c.item_id, t.c.timestamp_us, t.c.request_id).where(
                    t.c.user_id.in_(chunk),
                    t.c.item_id.in_(items) if len(items) <= _CHUNK else t.c.item_id.isnot(None),
                    t.c.timestamp_us <= max(at_us),
                    t.c.timestamp_us >= min(at_us) - window_us,
                )
                for row in conn.execute(query):
                    found.setdefault((row.user_id, row.item_id), []).append(
                        (int(row.timestamp_us), str(row.request_id))
                    )
        out: list[str | None] = []
        for (user, item, _), when in zip(clicks, at_us, strict=True):
            shown = [
                (ts, rid)
                for ts, rid in found.get((user, item), [])
                if when - window_us <= ts <= when
            ]
            out.append(max(shown)[1] if shown else None)
        return out

    def impressions_frame(self, since: float | None = None) -> pd.DataFrame:
        """One row per shown slot (IMPRESSION_COLUMNS), oldest first; `since` in
        epoch seconds."""
        s, h = impression_items_table, impressions_table
        query = (
            select(
                s.c.request_id,
                s.c.user_id,
                s.c.item_id,
                s.c.position,
                s.c.score,
                s.c.propensity,
                s.c.sources,
                h.c.model_version,
                h.c.experiment,
                h.c.arm,
                s.c.timestamp_us,
            )
            .join(h, h.c.request_id == s.c.request_id)
            .order_by(s.c.timestamp_us, s.c.request_id, s.c.position)
        )
        if since is not None:
            query = query.where(s.c.timestamp_us >= int(since * 1e6))
        with self._read("impressions_frame") as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame(rows, columns=[*IMPRESSION_COLUMNS[:-1], "timestamp_us"])
        frame["timestamp"] = frame.pop("timestamp_us").astype(np.int64) / 1e6
        return frame[IMPRESSION_COLUMNS]

    # ------------------------------------------------------------- analytics
    def window_counts(self, start: float, end: float, bucket_seconds: int) -> WindowCounts:
        """Counts over `[start, end)` per bucket, aggregated in the database
        (range scans of the time indexes: the window's rows, not the log's)."""
        if bucket_seconds < 1 or end <= start:
            raise ValueError(
                f"need end > start and bucket_seconds >= 1, got [{start}, {end}) / {bucket_seconds}"
            )
        lo, hi, width = round(start * 1e6), round(end * 1e6), int(bucket_seconds) * 10**6
        s, e = impression_items_table, events_table

        def bucket(ts: Any) -> Any:
            # integer division (times are >= lo): the same bucket on both dialects
            return ((ts - literal(lo, BigInteger)) // literal(width, BigInteger)).label("bucket")

        in_slots = (s.c.timestamp_us >= lo, s.c.timestamp_us < hi)
        in_events = (e.c.timestamp_us >= lo, e.c.timestamp_us < hi)
        slot_q = (
            select(
                bucket(s.c.timestamp_us),
                func.count().label("impressions"),
                func.count(s.c.request_id.distinct()).label("requests"),
            )
            .where(*in_slots)
            .group_by(text("bucket"))
        )
        event_q = (
            select(
                bucket(e.c.timestamp_us),
                e.c.type,
                func.count().label("events"),
                func.count(e.c.request_id).label("cited"),
            )
            .where(*in_events)
            .group_by(text("bucket"), e.c.type)
        )
        who = union_all(
            select(bucket(e.c.timestamp_us), e.c.user_id.label("user_id")).where(*in_events),
            select(bucket(s.c.timestamp_us), s.c.user_id.label("user_id")).where(
                *in_slots, s.c.user_id.isnot(None)
            ),
        ).subquery()
        user_q = select(who.c.bucket, func.count(who.c.user_id.distinct()).label("users")).group_by(
            who.c.bucket
        )
        everyone = union(
            select(e.c.user_id.label("user_id")).where(*in_events),
            select(s.c.user_id.label("user_id")).where(*in_slots, s.c.user_id.isnot(None)),
        ).subquery()
        total_q = select(func.count()).select_from(everyone)
        with self._read("window_counts") as conn:
            slots = pd.DataFrame(
                conn.execute(slot_q).all(), columns=["bucket", "impressions", "requests"]
            )
            events = pd.DataFrame(
                conn.execute(event_q).all(), columns=["bucket", "type", "events", "cited"]
            )
            users = pd.DataFrame(conn.execute(user_q).all(), columns=["bucket", "users"])
            total = int(conn.execute(total_q).scalar_one())
        for frame in (slots, events, users):
            for col in frame.columns:
                if col != "type":
                    frame[col] = frame[col].astype(np.int64)
        return WindowCounts(
            start=start,
            end=end,
            bucket_seconds=int(bucket_seconds),
            slots=slots,
            events=events,
            users=users,
            total_users=total,
        )

    def event_counts(self, after_seq: int, upto_seq: int, by: str) -> pd.Series:
        """Events with `after_seq < seq <= upto_seq` per `item_id` or `type`
        (a range of the primary key, grouped in the database)."""
        if by not in ("item_id", "type"):
            raise ValueError(f"event_counts: `by` must be 'item_id' or 'type', got {by!r}")
        t = events_table
        column = t.c[by]
        query = (
            select(column, func.count())
            .where(t.c.seq > int(after_seq), t.c.seq <= int(upto_seq))
            .group_by(column)
            .order_by(column)
        )
        with self._read("event_counts") as conn:
            rows = conn.execute(query).all()
        return pd.Series(
            [int(n) for _, n in rows],
            index=pd.Index([str(k) for k, _ in rows], dtype=object, name=by),
            dtype=np.int64,
            name="events",
        )

    def shown_slots(
        self,
        model_version: str,
        since: float,
        until: float,
        click_types: Sequence[str],
        limit: int,
    ) -> pd.DataFrame:
        """The newest `limit` slots `model_version` showed in `[since, until)`
        with their score and whether a click of `click_types` cites them
        (index walks: version and time, then each slot's request)."""
        h, s, e = impressions_table, impression_items_table, events_table
        clicked = (
            exists()
            .where(
                e.c.request_id == s.c.request_id,
                e.c.item_id == s.c.item_id,
                e.c.type.in_(list(click_types)),
            )
            .label("clicked")
        )
        query = (
            select(h.c.timestamp_us, s.c.score, clicked)
            .join(s, s.c.request_id == h.c.request_id)
            .where(
                h.c.model_version == model_version,
                h.c.timestamp_us >= round(since * 1e6),
                h.c.timestamp_us < round(until * 1e6),
            )
            .order_by(h.c.timestamp_us.desc())
            .limit(int(limit))
        )
        with self._read("shown_slots") as conn:
            rows = conn.execute(query).all()
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 3
        return pd.DataFrame(
            {
                "timestamp": np.array(cols[0], dtype=np.int64) / 1e6,
                "score": np.array(cols[1], dtype=np.float64),
                "clicked": np.array([bool(c) for c in cols[2]], dtype=bool),
            }
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

    def experiment_frames(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """What an experiment served and what came of it.

        - slots: one row per shown slot of a request in the experiment
          (request_id, user_id, arm, arm_propensity, item_id, position,
          propensity, sources, timestamp); a request that showed nothing
          has one row with no item (item_id None);
        - events: the events citing those requests (request_id, user_id,
          item_id, type, value, timestamp).
        """
        a, s, e = impression_arms_table, impression_items_table, events_table
        slot_query = (
            select(
                a.c.request_id,
                a.c.user_id,
                a.c.arm,
                a.c.propensity.label("arm_propensity"),
                s.c.item_id,
                s.c.position,
                s.c.propensity,
                s.c.sources,
                a.c.timestamp_us,
            )
            # outer: a request that served an empty list still counts (one
            # row with no item), so an arm that fails to fill lists shows it
            .outerjoin(s, s.c.request_id == a.c.request_id)
            .where(a.c.experiment == name)
            .order_by(a.c.timestamp_us, a.c.request_id, s.c.position)
        )
        event_query = (
            select(e.c.request_id, e.c.user_id, e.c.item_id, e.c.type, e.c.value, e.c.timestamp_us)
            .join(a, a.c.request_id == e.c.request_id)
            .where(a.c.experiment == name)
            .order_by(e.c.seq)
        )
        with self._read("experiment_frames") as conn:
            slots = pd.DataFrame(
                conn.execute(slot_query).all(),
                columns=[
                    "request_id",
                    "user_id",
                    "arm",
                    "arm_propensity",
                    "item_id",
                    "position",
                    "propensity",
                    "sources",
                    "timestamp_us",
                ],
            )
            events = pd.DataFrame(
                conn.execute(event_query).all(),
                columns=["request_id", "user_id", "item_id", "type", "value", "timestamp_us"],
            )
        for frame in (slots, events):
            frame["timestamp"] = frame.pop("timestamp_us").astype(np.int64) / 1e6
        return slots, events

    def experiment_contexts(self, name: str) -> pd.DataFrame:
        """The logged context of each of the experiment's requests: columns
        request_id, arm (its arm in this experiment), context (a dict), oldest
        first. Reads the experiment's own impressions only (through
        `impression_arms`), never the whole log."""
        a, i = impression_arms_table, impressions_table
        query = (
            select(a.c.request_id, a.c.arm, i.c.context)
            .join(i, i.c.request_id == a.c.request_id)
            .where(a.c.experiment == name)
            .order_by(a.c.timestamp_us, a.c.request_id)
        )
        with self._read("experiment_contexts") as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(
            [(r.request_id, r.arm, r.context or {}) for r in rows],
            columns=["request_id", "arm", "context"],
        )

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

    def __repr__(self) -> str:
        return f"SQLStore({self.url!r})"


# ------------------------------------------------------------------ opening
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
    url = url.set(drivername="postgresql+psycopg", query=query)
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    return engine, schema or "public"


def open_store(
    url: str = "sqlite:///sieve.db", *, migrate: bool = True, schema: str | None = None
) -> SQLStore:
    """Open the store at `url` and (unless `migrate=False`) bring its schema up to date.

    - `sqlite:///PATH` (relative) or `sqlite:////abs/PATH`; `sqlite://` is in memory
      (one connection shared by all threads: for tests and one-off scripts).
      Options: `?synchronous=FULL` (see the module doc), `?busy_timeout=MS`.
    - `postgresql://…`, `postgres://…` or `postgresql+psycopg://…` (psycopg 3).
      `schema` (or `?schema=NAME`) puts the tables in that schema (created if
      missing) through the connection's search_path.
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


__all__ = ["SUPPORTED_SCHEMES", "SQLStore", "open_store"]
