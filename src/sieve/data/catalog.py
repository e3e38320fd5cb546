"""Items and users from a table (CSV, Parquet or JSON Lines) through a
`CatalogMapping`: each row becomes the API's record (`records.Item` /
`records.User`), validated by the same pydantic model as `POST /items`, and a
row it refuses becomes an `ImportProblem` naming its line and the field.

Columns the mapping does not name become attributes, so a CSV with `brand`
and `price` columns needs no JSON. CSV cells are strings (an attribute
`price` stays `"119.0"`); Parquet and JSON Lines keep their types.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from sieve.config import Config, ConfigError
from sieve.data.raw import ImportProblem
from sieve.data.records import Item, User
from sieve.data.rows import _Rows
from sieve.data.tables import _TIME_UNIT, ColumnMapping, _parse_times


@dataclass(frozen=True)
class CatalogMapping(Config):
    """Which columns of an item or user table hold the record's fields.

    A field whose column is absent takes the record's default. `categories`
    is a list (Parquet, JSON) or, in a CSV, names joined by
    `categories_sep`; `attributes` a JSON object (or its text in a CSV);
    `created_at` epoch numbers in `time_unit` or dates (ISO 8601 unless
    `time_format`); `available` a boolean or true/false/1/0/yes/no.
    """

    id: str = "id"
    title: str = "title"
    text: str = "text"
    categories: str = "categories"
    created_at: str = "created_at"
    available: str = "available"
    attributes: str = "attributes"
    categories_sep: str = "|"
    sep: str = ","
    time_format: str | None = None
    time_unit: str = "s"

    def validate(self) -> None:
        if not self.sep or not self.categories_sep:
            raise ConfigError("CatalogMapping.sep and categories_sep must not be empty")
        if self.time_unit not in _TIME_UNIT:
            raise ConfigError(
                f"CatalogMapping.time_unit: expected one of {list(_TIME_UNIT)}, "
                f"got {self.time_unit!r}"
            )


_ITEM_FIELDS = ("id", "title", "text", "categories", "created_at", "available", "attributes")
_USER_FIELDS = ("id", "attributes")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def items_from_rows(rows: _Rows, mapping: CatalogMapping) -> list[tuple[int, Item]]:
    """(line, item) of every row the `Item` model accepts; the others become
    problems of `rows`."""
    return list(_records(rows, mapping, Item, _ITEM_FIELDS))


def users_from_rows(rows: _Rows, mapping: CatalogMapping) -> list[tuple[int, User]]:
    """(line, user) of every row the `User` model accepts; the others become
    problems of `rows`."""
    return list(_records(rows, mapping, User, _USER_FIELDS))


def _records(
    rows: _Rows, mapping: CatalogMapping, model: type[Any], fields: tuple[str, ...]
) -> Iterator[tuple[int, Any]]:
    column = {f: getattr(mapping, f) for f in fields}
    if column["id"] not in rows.columns:
        raise ValueError(
            f"{rows.source}: missing id column {column['id']!r}; found columns "
            f"{list(rows.columns)} (map it with --map id=COLUMN)"
        )
    present = {f: c for f, c in column.items() if c in rows.columns}
    extra = [c for c in rows.columns if c not in set(column.values())]
    created = None
    if "created_at" in present:
        times = ColumnMapping(time_format=mapping.time_format, time_unit=mapping.time_unit)
        created = _created_at(rows, present["created_at"], times)
    values = {f: rows.columns[c].tolist() for f, c in present.items() if f != "created_at"}
    extras = {c: rows.columns[c].tolist() for c in extra}
    for k in range(len(rows)):
        if rows.bad[k]:
            continue
        line = int(rows.line[k])
        try:
            data = _fields(values, k, mapping)
            if created is not None and not math.isnan(created[k]):
                data["created_at"] = float(created[k])
            attrs = {c: _plain(v[k]) for c, v in extras.items() if not _missing(v[k])}
            if attrs:
                data["attributes"] = {**attrs, **data.get("attributes", {})}
            yield line, model.model_validate(data)
        except (ValidationError, ValueError) as e:
            rows.problems.append(ImportProblem(line, _reason(e), rows.source))
            rows.bad[k] = True


def _created_at(rows: _Rows, col: str, mapping: ColumnMapping) -> np.ndarray:
    """Creation times in epoch seconds; empty cells are NaN (no time), not problems."""
    raw = rows.columns[col]
    blank = raw.isna().to_numpy(dtype=bool) | (raw.astype("str").str.strip() == "").to_numpy(
        dtype=bool
    )
    out = np.full(len(raw), np.nan)
    if (~blank).any():
        sub = _Rows(
            rows.source, {col: raw[~blank].reset_index(drop=True)}, rows.line[~blank], [], 0
        )
        out[~blank] = _parse_times(sub, col, mapping)
        failed = np.zeros(len(raw), dtype=bool)
        failed[np.flatnonzero(~blank)] = sub.bad
        rows.problems.extend(sub.problems)
        rows.bad |= failed
    return out


def _fields(values: dict[str, list[Any]], k: int, mapping: CatalogMapping) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f, column in values.items():
        v = column[k]
        if _missing(v):
            continue
        if f == "id":
            data["id"] = str(v).strip()
        elif f in ("title", "text"):
            data[f] = str(v)
        elif f == "categories":
            data[f] = _categories(v, mapping.categories_sep)
        elif f == "available":
            data[f] = _boolean(v)
        elif f == "attributes":
            data[f] = _attributes(v)
    return data


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _plain(v: Any) -> Any:
    """A JSON-ready value: numpy scalars and arrays (Parquet) become Python ones."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _categories(v: Any, sep: str) -> list[str]:
    if isinstance(v, str):
        return [c.strip() for c in v.split(sep) if c.strip()]
    if isinstance(v, np.ndarray | list | tuple):
        return [str(c) for c in _plain(v)]
    raise ValueError(f"categories: expected a list or names joined by {sep!r}, got {v!r}")


def _boolean(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    word = str(v).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"available: expected true or false, got {v!r}")


def _attributes(v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"attributes: not valid JSON ({e})") from None
    if not isinstance(v, dict):
        raise ValueError(f"attributes: expected a JSON object, got {type(v).__name__}")
    return {str(key): _plain(x) for key, x in v.items()}


def _reason(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg']}" for err in e.errors()
        )
    return str(e)


__all__ = ["CatalogMapping", "items_from_rows", "users_from_rows"]
