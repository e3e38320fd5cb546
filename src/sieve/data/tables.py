"""Any event table, CSV (with a header line), Parquet or JSON Lines, read
through a `ColumnMapping` that names the columns holding the schema fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.raw import RawData
from sieve.data.reading import _check_header, read_rows, table_format
from sieve.data.rows import (
    _as_str,
    _blank,
    _event_ids,
    _events_frame,
    _fail_future,
    _Rows,
    _seconds,
    _sorted,
    _to_float,
)
from sieve.data.schema import DEFAULT_EVENT_WEIGHTS

_TIME_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class ColumnMapping(Config):
    """Which columns of an event table hold the schema fields.

    - `user`, `item`: user and item id columns (required);
    - `type`: event type column; absent from the file or empty cells give `default_type`;
    - `value`: numeric value column (a rating); None or absent: no values;
    - `timestamp`: time column, epoch numbers (in `time_unit`) or date strings
      (ISO 8601 unless `time_format`, a strftime pattern); None or absent: NaN;
    - `event_id`: id column; None: ids are `file:line` (or, for `sieve import
      events`, a hash of the row's content);
    - `default_type`: type of rows without one; None: "rating" when the table has
      a value column, else "click";
    - `sep`: CSV field separator;
    - `time_unit`: unit of numeric timestamps ("s", "ms" or "us").

    All fields are strings (or None), so a mapping can come from CLI options.
    """

    user: str = "user_id"
    item: str = "item_id"
    type: str | None = "type"
    value: str | None = "value"
    timestamp: str | None = "timestamp"
    event_id: str | None = None
    default_type: str | None = None
    sep: str = ","
    time_format: str | None = None
    time_unit: str = "s"

    def validate(self) -> None:
        if not self.sep:
            raise ConfigError("ColumnMapping.sep: must not be empty")
        if self.time_unit not in _TIME_UNIT:
            raise ConfigError(
                f"ColumnMapping.time_unit: expected one of {list(_TIME_UNIT)}, "
                f"got {self.time_unit!r}"
            )


def load_table(
    path: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    format: Literal["csv", "parquet", "jsonl"] | None = None,
    event_types: Collection[str] | None = None,
    latest: float | None = None,
    ids: Literal["line", "content"] = "line",
) -> RawData:
    """Events from a CSV (with a header line), Parquet or JSON Lines table.

    `format` defaults to the suffix (`.parquet`/`.pq` is Parquet,
    `.jsonl`/`.ndjson` JSON Lines, anything else CSV). Rows whose type is not
    in `event_types` (default: the types of `DEFAULT_EVENT_WEIGHTS`) are
    reported, and so are rows timestamped after `latest` (epoch seconds;
    default now plus `DEFAULT_MAX_FUTURE_SKEW_SECONDS`). Without an id column
    events are named `file:line`, or with `ids="content"` by a hash of their
    content (so the same event in another file is the same event). For
    Parquet, problem `line`s are 1-based row numbers.
    """
    path = Path(path)
    mapping = mapping or ColumnMapping()
    rows = read_rows(path, table_format(path, format), mapping.sep)
    events = events_from_rows(rows, mapping, event_types=event_types, latest=latest, ids=ids)
    rows.check_all_bad(path, events=True)
    return RawData(events.drop(columns="line"), problems=_sorted(rows.problems))


def events_from_rows(
    rows: _Rows,
    mapping: ColumnMapping,
    *,
    event_types: Collection[str] | None = None,
    latest: float | None = None,
    ids: Literal["line", "content"] = "line",
) -> pd.DataFrame:
    """The schema events frame (plus `line`) of the good rows; every bad row
    becomes a problem of `rows` (see `load_table`)."""
    path = Path(rows.source)
    found = list(rows.columns)
    _check_header(path, found, [mapping.user, mapping.item])
    if mapping.event_id is not None:
        _check_header(path, found, [mapping.event_id])
    has = {c for c in (mapping.type, mapping.value, mapping.timestamp) if c in rows.columns}

    user = rows.ident(mapping.user, "user id")
    item = rows.ident(mapping.item, "item id")
    n = len(rows)
    default_type = mapping.default_type or ("rating" if mapping.value in has else "click")
    if mapping.type in has:
        assert mapping.type is not None
        types = rows.text(mapping.type, "event type", required=False).str.lower()
        types = types.mask(types == "", default_type)
    else:
        types = pd.Series([default_type] * n, dtype="str")
    allowed = set(DEFAULT_EVENT_WEIGHTS if event_types is None else event_types)
    unknown = ~types.isin(allowed).to_numpy(dtype=bool)
    rows.fail(unknown, f"unknown event type {{!r}}; accepted: {sorted(allowed)}", types)
    value = np.full(n, np.nan)
    if mapping.value in has:
        assert mapping.value is not None
        value = rows.number(mapping.value, "value", required=False)
        is_rating = (types == "rating").to_numpy(dtype=bool)
        rows.fail(is_rating & np.isnan(value), "rating without a value")
    timestamp = np.full(n, np.nan)
    if mapping.timestamp in has:
        assert mapping.timestamp is not None
        timestamp = _parse_times(rows, mapping.timestamp, mapping)
        _fail_future(rows, timestamp, latest)
    if mapping.event_id is not None:
        event_id = rows.ident(mapping.event_id, "event id")
        dup = event_id.duplicated().to_numpy(dtype=bool) & ~_blank(event_id)
        rows.fail(dup, "duplicate event id {!r}", event_id)
    elif ids == "content":
        event_id = content_ids(user, item, types, value, timestamp)
    else:
        event_id = _event_ids(rows)
    events = _events_frame(rows, event_id, user, item, types, value, timestamp)
    events["line"] = rows.line[rows.good()]
    return events


def content_ids(
    user: pd.Series,
    item: pd.Series,
    types: pd.Series,
    value: NDArray[np.float64],
    timestamp: NDArray[np.float64],
) -> pd.Series:
    """Event ids from the events' content: `h:` and a 128-bit BLAKE2b of user,
    item, type, value and time (µs). The same event imported twice, from the
    same file or another, gets the same id, so the store keeps it once; two
    events equal in every field are one event."""
    micros = np.where(np.isnan(timestamp), -(2**62), np.round(timestamp * 1e6)).astype(np.int64)
    values = ["" if v != v else repr(v) for v in np.asarray(value, dtype=np.float64).tolist()]
    digest = hashlib.blake2b
    keys = zip(
        user.astype("str").tolist(),
        item.astype("str").tolist(),
        types.astype("str").tolist(),
        values,
        micros.tolist(),
        strict=True,
    )
    ids = [
        "h:" + digest(f"{u}\x1f{i}\x1f{t}\x1f{v}\x1f{m}".encode(), digest_size=16).hexdigest()
        for u, i, t, v, m in keys
    ]
    return pd.Series(ids, dtype="str", index=user.index)


def _parse_times(rows: _Rows, col: str, mapping: ColumnMapping) -> NDArray[np.float64]:
    """Float seconds from epoch numbers, datetime columns or date strings."""
    raw = rows.columns[col]
    if pd.api.types.is_datetime64_any_dtype(raw):
        out = _seconds(raw)
        rows.fail(np.isnan(out), "empty timestamp")
        return out
    text = _as_str(raw)
    blank = _blank(text)
    rows.fail(blank, "empty timestamp")
    out = np.full(len(raw), np.nan)
    if mapping.time_format is None:
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            num = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            num = _to_float(text)
        out = num * _TIME_UNIT[mapping.time_unit]
    todo = np.isnan(out) & ~blank
    if todo.any():
        fmt = mapping.time_format or "ISO8601"
        dt = pd.to_datetime(text[todo], format=fmt, utc=True, errors="coerce")
        out[todo] = _seconds(pd.Series(dt))
    what = (
        f"a date in format {mapping.time_format!r}"
        if mapping.time_format
        else "a number or an ISO date"
    )
    rows.fail(np.isnan(out) & ~blank, f"timestamp {{!r}} is not {what}", text)
    return out
