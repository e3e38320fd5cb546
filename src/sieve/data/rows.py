"""Row checking: the string columns of one file's rows (`_Rows`), with checks
that drop bad rows and report each as an `ImportProblem` named by file and
line, and the schema frames (events, items, users) built from the good rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from sieve.data.raw import ImportProblem
from sieve.data.records import _CONTROL, DEFAULT_MAX_FUTURE_SKEW_SECONDS, MAX_ID_LENGTH
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS


class _Rows:
    """String columns of one file's rows, with checks that drop bad rows.

    Each check marks failing rows bad and records one problem per row (the
    first failure), so the report names each bad line once.
    """

    def __init__(
        self,
        source: str,
        columns: dict[str, pd.Series],
        line: NDArray[np.int64],
        problems: list[ImportProblem],
        n_rows: int,
    ) -> None:
        self.source = source
        self.columns = columns
        self.line = line
        self.problems = problems
        self.n_rows = n_rows  # non-blank data rows, well-formed or not
        self.bad = np.zeros(len(line), dtype=bool)

    def __len__(self) -> int:
        return len(self.line)

    def fail(self, mask: Any, reason: str, values: Any = None) -> None:
        """Mark rows bad. `reason` may hold one `{!r}`, filled with the row's
        entry of `values` (formatted for the bad rows only: files are large)."""
        new = np.asarray(mask, dtype=bool) & ~self.bad
        if not new.any():
            return
        idx = np.flatnonzero(new)
        shown = None if values is None else np.asarray(values, dtype=object)[idx]
        self.problems.extend(
            ImportProblem(
                int(self.line[k]), reason if shown is None else reason.format(shown[j]), self.source
            )
            for j, k in enumerate(idx)
        )
        self.bad |= new

    def text(self, col: str, what: str, *, required: bool = True) -> pd.Series:
        """A stripped string column; empty values fail when `required`."""
        s = _as_str(self.columns[col])
        if required:
            self.fail(_blank(s), f"empty {what}")
        return s

    def ident(self, col: str, what: str) -> pd.Series:
        """An id column under the rules of `records.Id` (the API's): not blank,
        at most `MAX_ID_LENGTH` characters, no control characters."""
        s = self.text(col, what)
        for mask, reason in id_problems(s):
            self.fail(mask, f"{what} {{!r}} {reason}", s)
        return s

    def number(self, col: str, what: str, *, required: bool = True) -> NDArray[np.float64]:
        """A finite float column; non-numbers (and infinities) fail, empty
        values fail when `required`."""
        raw = self.columns[col]
        text = _as_str(raw)
        values = _to_float(text)
        blank = _blank(text)
        bad = np.isnan(values) & ~blank
        if bad.any():
            self.fail(bad, f"{what} {{!r}} is not a number", text)
        infinite = np.isinf(values)
        if infinite.any():
            self.fail(infinite, f"{what} {{!r}} is not finite", text)
            values = np.where(infinite, np.nan, values)
        if required:
            self.fail(blank, f"empty {what}")
        return values

    def check_all_bad(self, path: Path, *, events: bool = False) -> None:
        """Raise when a file that has rows has no good row at all (or, for
        an events file, no row at all: there is nothing to recommend from)."""
        if events and self.n_rows == 0:
            raise ValueError(f"{path}: no events (the file has no data rows)")
        if self.n_rows > 0 and (len(self) == 0 or self.bad.all()):
            first = min(self.problems, key=lambda p: p.line)
            raise ValueError(f"{path}: no valid row; first problem: {first}")

    def good(self) -> NDArray[np.bool_]:
        return ~self.bad


def id_problems(ids: pd.Series) -> list[tuple[NDArray[np.bool_], str]]:
    """(mask, reason) of the ids (stripped strings) that `records.Id` refuses
    beyond blankness: too long, or holding a control character (vectorised:
    the same rules as the API's, for files of millions of rows)."""
    out: list[tuple[NDArray[np.bool_], str]] = []
    long = (ids.str.len() > MAX_ID_LENGTH).to_numpy(dtype=bool)
    if long.any():
        out.append((long, f"is longer than {MAX_ID_LENGTH} characters"))
    control = ids.str.contains(_CONTROL.pattern, regex=True).to_numpy(dtype=bool)
    if control.any():
        out.append((control, "contains a control character"))
    return out


def _to_float(text: pd.Series) -> NDArray[np.float64]:
    """Parse numbers; what is not one becomes NaN. Arrow's cast is the fast
    path for clean columns, pandas' coercing parser the fallback."""
    try:
        return np.asarray(
            pc.cast(pa.array(text), pa.float64()).to_numpy(zero_copy_only=False),
            dtype=np.float64,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _as_str(s: pd.Series) -> pd.Series:
    """Values as stripped strings; missing values become ''."""
    return s.astype("str").fillna("").str.strip()


def _blank(s: pd.Series) -> NDArray[np.bool_]:
    return (s == "").to_numpy(dtype=bool)


def _latest(latest: float | None) -> float:
    """The latest accepted timestamp: `latest`, or now plus the default skew."""
    return time.time() + DEFAULT_MAX_FUTURE_SKEW_SECONDS if latest is None else latest


def _iso(seconds: float) -> str:
    """An epoch time as an ISO date, or as seconds beyond the year 9999."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{seconds:.0f} s after the epoch"


def _fail_future(rows: _Rows, seconds: NDArray[np.float64], latest: float | None) -> None:
    """Report rows timestamped after `_latest(latest)`, naming the date."""
    limit = _latest(latest)
    with np.errstate(invalid="ignore"):
        future = seconds > limit
    if not future.any():
        return
    shown = np.full(len(seconds), "", dtype=object)
    for k in np.flatnonzero(future):
        shown[k] = _iso(float(seconds[k]))
    limit_at = _iso(limit)
    rows.fail(
        future,
        f"timestamp {{}} is in the future (after {limit_at}): fix the clock or the time unit",
        shown,
    )


def _event_ids(rows: _Rows) -> pd.Series:
    """Unique, traceable event ids: `file:line`."""
    return pd.Series(rows.line, dtype="str").radd(f"{rows.source}:")


def _events_frame(
    rows: _Rows,
    event_id: pd.Series,
    user: pd.Series,
    item: pd.Series,
    type_: pd.Series | str,
    value: NDArray[np.float64],
    timestamp: NDArray[np.float64],
) -> pd.DataFrame:
    """The schema events frame of the good rows."""
    good = rows.good()
    n = int(good.sum())
    types = (
        pd.Series([type_] * n, dtype="str")
        if isinstance(type_, str)
        else type_[good].reset_index(drop=True)
    )
    out = pd.DataFrame(
        {
            "event_id": event_id[good].reset_index(drop=True),
            "user_id": user[good].reset_index(drop=True),
            "item_id": item[good].reset_index(drop=True),
            "type": types,
            "value": value[good],
            "timestamp": timestamp[good],
        }
    )
    return out[EVENT_COLUMNS]


def _items_frame(
    item_id: Sequence[str],
    title: Sequence[str],
    categories: Sequence[list[str]],
    created_at: NDArray[np.float64],
    attributes: Sequence[dict[str, Any]],
    tags: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Schema items frame; `text` is title, categories and tags (for content models)."""
    tags = tags or {}
    attrs = [dict(a) for a in attributes]
    texts = []
    for iid, t, cats, a in zip(item_id, title, categories, attrs, strict=True):
        item_tags = tags.get(iid)
        if item_tags:
            a["tags"] = item_tags
        texts.append(" ".join([t, *cats, *(item_tags or [])]))
    out = pd.DataFrame(
        {
            "item_id": pd.Series(list(item_id), dtype="str"),
            "title": pd.Series(list(title), dtype="str"),
            "text": pd.Series(texts, dtype="str"),
            "categories": pd.Series(list(categories), dtype=object),
            "created_at": np.asarray(created_at, dtype=np.float64),
            "attributes": pd.Series(attrs, dtype=object),
        }
    )
    return out[ITEM_COLUMNS]


def _users_frame(user_id: Sequence[str], attributes: Sequence[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_id": pd.Series(list(user_id), dtype="str"),
            "attributes": pd.Series(list(attributes), dtype=object),
        }
    )
    return out[USER_COLUMNS]


def _seconds(dt: pd.Series) -> NDArray[np.float64]:
    """Datetimes (naive = UTC) as float seconds since the epoch; NaT -> NaN."""
    if getattr(dt.dt, "tz", None) is None:
        dt = dt.dt.tz_localize("UTC")
    # the epoch in the column's own unit: a far date (9999-12-31, in µs) would
    # overflow nanoseconds
    epoch = pd.Timestamp(0, tz="UTC").as_unit(getattr(dt.dt, "unit", "ns"))
    delta = dt - epoch
    return (delta / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def _sorted(problems: list[ImportProblem]) -> list[ImportProblem]:
    return sorted(problems, key=lambda p: (p.source, p.line))
