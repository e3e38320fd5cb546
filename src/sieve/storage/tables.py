"""The store's tables as they are now (the migrations create them) and the small
conversions between their columns and Python values (exact microseconds since the epoch)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Connection

from sieve.storage.migrations import JSONType, SeqType

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
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

catalog_changes_table = Table(
    "catalog_changes",
    _md,
    Column("seq", SeqType, Identity(), primary_key=True),
    Column("item_id", String(256), nullable=False),
    Column("at_us", BigInteger, nullable=False),
)
leases_table = Table(
    "leases",
    _md,
    Column("name", String(128), primary_key=True),
    Column("holder", String(256), nullable=False),
    Column("expires_us", BigInteger, nullable=False),
)
import_checkpoints_table = Table(
    "import_checkpoints",
    _md,
    Column("source", String(1024), primary_key=True),
    Column("line", BigInteger, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
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


def _arrays(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Rows as one list per column: the parameters of a PostgreSQL `unnest`
    insert, where each column travels as one array."""
    return {c: [r[c] for r in rows] for c in columns}


#: SQLite's lowest host-parameter limit: a statement's rows × columns stay within it.
_SQLITE_PARAMETERS = 999


def _sqlite_insert_new(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    key: str,
    rows: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Insert the rows whose `key` is new, with multi-row VALUES through the
    driver; the keys inserted. SQLAlchemy's insertmanyvalues built the same
    statements with ~0.3 ms of Python per batch: about 5% of a server under
    a write-heavy load."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    per = max(1, _SQLITE_PARAMETERS // len(columns))
    out: list[str] = []
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * len(part))} "
            f"ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
        )
        params = tuple(r[c] for r in part for c in columns)
        out.extend(str(r[0]) for r in conn.exec_driver_sql(sql, params))
    return out


def _chunks(values: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
