"""Importers: MovieLens releases, any CSV/Parquet event table, and CLI data specs.

Every importer returns `RawData`: events, items and users frames in the schema
of `sieve.data.schema`, plus the problems found in malformed rows, each named
by file and 1-based line number. Good rows always import, so one stray line
does not cost a whole dataset; a file with no good row at all raises
`ValueError`, because that is a wrong format or a wrong file, not noise.

Timestamps more than `DEFAULT_MAX_FUTURE_SKEW_SECONDS` after the time of
loading (or after `latest`, when a caller passes one) are problems too: a
far-future event would count at full weight in decayed counters until then.

Parsing is vectorised (Arrow string kernels over whole files), so MovieLens
100K loads in a fraction of a second and 10M-rating files are practical.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.raw import ImportProblem, RawData
from sieve.data.records import DEFAULT_MAX_FUTURE_SKEW_SECONDS
from sieve.data.schema import (
    DEFAULT_EVENT_WEIGHTS,
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    empty_items,
    empty_users,
)

__all__ = [
    "ColumnMapping",
    "ImportProblem",
    "RawData",
    "load_data",
    "load_movielens_1m",
    "load_movielens_10m",
    "load_movielens_100k",
    "load_movielens_latest",
    "load_table",
]

#: Genre names of MovieLens 100K, used when `u.genre` is absent.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

#: Occupation codes of MovieLens 1M `users.dat` (from its README).
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip

_NO_GENRES = {"(no genres listed)", ""}


# ------------------------------------------------------------- row checking
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

    def number(self, col: str, what: str, *, required: bool = True) -> NDArray[np.float64]:
        """A float column; non-numbers fail, empty values fail when `required`."""
        raw = self.columns[col]
        text = _as_str(raw)
        values = _to_float(text)
        blank = _blank(text)
        bad = np.isnan(values) & ~blank
        if bad.any():
            self.fail(bad, f"{what} {{!r}} is not a number", text)
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


# ------------------------------------------------------------------ reading
def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _require_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    return folder


def _decode(path: Path, encoding: str | None) -> str:
    """File text; without an encoding, UTF-8 with a Latin-1 fallback (old MovieLens)."""
    data = path.read_bytes()
    if encoding:
        return data.decode(encoding)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_lines(path: Path, encoding: str | None) -> pa.ChunkedArray:
    """Every line of a text file (blank ones kept, so element k is line k+1).

    Arrow's multi-threaded reader does the work; without an `encoding`, UTF-8
    is tried first, then Latin-1 (old MovieLens releases).
    """
    if path.stat().st_size == 0:
        return pa.chunked_array([], type=pa.large_string())
    for enc in [encoding] if encoding else ["utf8", "latin-1"]:
        try:
            table = pcsv.read_csv(
                path,
                read_options=pcsv.ReadOptions(column_names=["line"], encoding=enc),
                parse_options=pcsv.ParseOptions(
                    delimiter="\x1f", quote_char=False, escape_char=False, ignore_empty_lines=False
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={"line": pa.large_string()},
                    strings_can_be_null=False,
                    null_values=[],
                ),
            )
            return table["line"]
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc) and enc == "utf8" and not encoding:
                continue  # not UTF-8: retry as Latin-1
            break  # e.g. a \x1f character in a line: split in Python instead
    text = _decode(path, encoding)
    lines = text.removesuffix("\n").split("\n") if text else []
    return pc.utf8_rtrim(
        pa.chunked_array([pa.array(lines, type=pa.large_string())]), characters="\r"
    )


def _split_lines(
    path: Path,
    sep: str,
    names: Sequence[str] | None,
    *,
    header: bool = False,
    encoding: str | None = None,
    lines: pa.ChunkedArray | None = None,
) -> _Rows:
    """Split an unquoted delimited file (or its already read `lines`) into
    named string columns.

    Lines with the wrong number of fields are reported and dropped. With
    `header`, line 1 names the columns instead of `names`.
    """
    if lines is None:
        lines = _read_lines(_require_file(path), encoding)
    first = 1
    if header:
        if len(lines) == 0:
            raise ValueError(f"{path}: empty file, expected a header line")
        cols = [c.strip().lstrip("\ufeff") for c in str(lines[0].as_py()).split(sep)]
        lines = lines.slice(1)
        first = 2
    else:
        assert names is not None
        cols = list(names)
    n = len(cols)
    line_no = np.arange(first, first + len(lines), dtype=np.int64)
    blank = pc.equal(pc.utf8_trim_whitespace(lines), "").to_numpy(zero_copy_only=False)
    counts = pc.add(pc.count_substring(lines, sep), 1).to_numpy(zero_copy_only=False)
    ok = (counts == n) & ~blank
    problems = [
        ImportProblem(
            int(ln), f"expected {n} fields separated by {sep!r}, found {int(c)}", path.name
        )
        for ln, c in zip(line_no[~ok & ~blank], counts[~ok & ~blank], strict=True)
    ]
    good = lines.filter(pa.array(ok))
    parts = pc.split_pattern(good, sep)
    columns = {
        c: pd.Series(pd.array(pc.list_element(parts, k), dtype="str"), copy=False)
        for k, c in enumerate(cols)
    }
    return _Rows(path.name, columns, line_no[ok], problems, int((~blank).sum()))


def _unclosed_quote(span: str, sep: str) -> bool:
    """True when `span` (the lines of one parsed row) ends inside a quoted field."""
    try:
        for _ in csv.reader(io.StringIO(span, newline=""), delimiter=sep, strict=True):
            pass
    except csv.Error as e:
        return "end of data" in str(e)
    return False


def _read_quoted(
    path: Path, sep: str, encoding: str | None = None, *, multiline: bool = False
) -> _Rows:
    """Read a quoted CSV with a header line (Python's csv module: exact line numbers).

    A quote left open makes the csv module read the lines after it (to the next
    quote, or the end of the file) as one field, dropping them without a word.
    Such a row is reported at the line where the quote opens, and reading
    resumes on the next line, so the rows around it still import. Without
    `multiline` every row must fit on one line (event tables: ids, types,
    numbers, times); with it, a quoted field may span lines (titles) and a row
    counts as broken when it runs to the end of the file inside a quote or has
    the wrong number of fields.
    """
    _require_file(path)
    physical = io.StringIO(_decode(path, encoding), newline="").readlines()
    reader = csv.reader(iter(physical), delimiter=sep)
    try:
        cols = [c.strip().lstrip("\ufeff") for c in next(reader)]
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected a header line") from None
    n = len(cols)
    data: list[list[str]] = []
    lines: list[int] = []
    problems: list[ImportProblem] = []
    base = 0  # physical lines before the current reader's first one
    start = reader.line_num + 1
    n_rows = 0
    budget = len(physical)  # lines read again after open quotes: at most the file once more

    def broken(row: list[str], first: int, last: int) -> bool:
        if last == first:
            return False
        if not multiline:
            return True
        if len(row) != n:
            return True
        return last == len(physical) and _unclosed_quote("".join(physical[first - 1 : last]), sep)

    while True:
        resume: int | None = None
        for row in reader:
            line, start = start, base + reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            n_rows += 1
            if broken(row, line, start - 1):
                budget -= start - 1 - line
                if budget < 0:
                    problems.append(
                        ImportProblem(
                            line,
                            'a quote (") opened on this line is never closed; too many such '
                            "lines, so the rest of the file is skipped: fix the quoting",
                            path.name,
                        )
                    )
                    break
                problems.append(
                    ImportProblem(
                        line,
                        'a quote (") opened on this line is never closed: line skipped, '
                        "reading resumes on the next one",
                        path.name,
                    )
                )
                resume = line  # read again from the physical line after it
                break
            if len(row) != n:
                problems.append(
                    ImportProblem(
                        line,
                        f"expected {n} fields separated by {sep!r}, found {len(row)}",
                        path.name,
                    )
                )
                continue
            data.append(row)
            lines.append(line)
        if resume is None:
            break
        base, start = resume, resume + 1
        reader = csv.reader(itertools.islice(physical, base, None), delimiter=sep)
    frame = pd.DataFrame(data, columns=cols, dtype="str") if data else None
    columns = {c: (frame[c] if frame is not None else pd.Series([], dtype="str")) for c in cols}
    return _Rows(path.name, columns, np.asarray(lines, dtype=np.int64), problems, n_rows)


def _read_csv(
    path: Path, sep: str, names: Sequence[str] | None = None, *, multiline: bool = False
) -> _Rows:
    """A headed CSV: the fast splitter unless the file uses quotes. With `multiline`,
    a quoted field may span lines (see `_read_quoted`)."""
    lines = _read_lines(_require_file(path), None)
    if pc.any(pc.match_substring(lines, '"')).as_py():
        rows = _read_quoted(path, sep, multiline=multiline)
    else:
        rows = _split_lines(path, sep, None, header=True, lines=lines)
    if names is not None:
        _check_header(path, list(rows.columns), names)
    return rows


def _check_header(path: Path, found: Sequence[str], expected: Sequence[str]) -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found columns {list(found)}")


# ------------------------------------------------------------------- frames
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


def _rating_events(rows: _Rows, path: Path, latest: float | None = None) -> pd.DataFrame:
    """Events of a MovieLens ratings file with columns user, item, rating, ts."""
    user = rows.text("user", "user id")
    item = rows.text("item", "item id")
    rating = rows.number("rating", "rating")
    ts = rows.number("ts", "timestamp")
    _fail_future(rows, ts, latest)
    rows.check_all_bad(path, events=True)
    return _events_frame(rows, _event_ids(rows), user, item, "rating", rating, ts)


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


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _year_seconds(titles: pd.Series) -> NDArray[np.float64]:
    """January 1st of the year in a MovieLens title, "Heat (1995)"; NaN without one."""
    years = titles.str.extract(_YEAR, expand=False)
    dt = pd.to_datetime(years, format="%Y", errors="coerce")
    return _seconds(pd.Series(dt))


def _tags_by_item(rows: _Rows, path: Path) -> dict[str, list[str]]:
    """Distinct tags of each item (first-seen order) from a tags file."""
    rows.text("user", "user id")
    item = rows.text("item", "item id")
    tag = rows.text("tag", "tag")
    rows.check_all_bad(path)
    good = rows.good()
    frame = pd.DataFrame({"item": item[good].to_numpy(), "tag": tag[good].to_numpy()})
    frame = frame.drop_duplicates()
    return {str(k): [str(t) for t in v] for k, v in frame.groupby("item", sort=False)["tag"]}


# --------------------------------------------------------------- MovieLens
def load_movielens_100k(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens 100K from its folder: `u.data` ratings, `u.item` movies, `u.user`.

    Items get title, release date (`created_at`), genres (`categories`, the
    placeholder genre "unknown" left out) and the IMDb URL; users get age,
    gender, occupation and zip code. Ratings after `latest` (epoch seconds;
    default now plus a few minutes) are reported, as in every loader here.
    """
    folder = _require_folder(path)
    events_path = folder / "u.data"
    ratings = _split_lines(events_path, "\t", ["user", "item", "rating", "ts"])
    events = _rating_events(ratings, events_path, latest)
    problems = ratings.problems
    genres = _ml100k_genres(folder / "u.genre")
    items = empty_items()
    if (folder / "u.item").is_file():
        items = _ml100k_items(folder / "u.item", genres, problems)
    users = empty_users()
    if (folder / "u.user").is_file():
        users = _ml100k_users(folder / "u.user", problems)
    return RawData(events, items, users, _sorted(problems))


def _ml100k_genres(path: Path) -> list[str]:
    if not path.is_file():
        return list(ML100K_GENRES)
    names = [ln.split("|")[0].strip() for ln in _decode(path, None).splitlines() if ln.strip()]
    return names


def _ml100k_items(path: Path, genres: list[str], problems: list[ImportProblem]) -> pd.DataFrame:
    names = [
        "item",
        "title",
        "release",
        "video_release",
        "imdb_url",
        *(f"g{k}" for k in range(len(genres))),
    ]
    rows = _split_lines(path, "|", names)  # UTF-8, else Latin-1 (the original)
    item = rows.text("item", "item id")
    title = rows.text("title", "title", required=False)
    release = rows.text("release", "release date", required=False)
    dt = pd.to_datetime(release, format="%d-%b-%Y", errors="coerce")
    undated = dt.isna().to_numpy() & ~_blank(release)
    rows.fail(undated, "release date {!r} is not a date like 01-Jan-1995", release)
    flags = np.empty((len(rows), len(genres)), dtype=object)
    for k in range(len(genres)):
        flags[:, k] = rows.text(f"g{k}", "genre flag").to_numpy(dtype=object)
    bad_flag = ~np.isin(flags, ["0", "1"]).all(axis=1)
    rows.fail(bad_flag, "genre flags must be 0 or 1")
    rows.check_all_bad(path)
    problems.extend(rows.problems)
    good = rows.good()
    is_genre = flags[good] == "1"
    keep = np.array([g != "unknown" for g in genres], dtype=bool)
    cats = [[genres[k] for k in np.flatnonzero(row & keep)] for row in is_genre]
    urls = rows.text("imdb_url", "IMDb URL", required=False)[good]
    videos = rows.text("video_release", "video release date", required=False)[good]
    attrs = [
        {k: v for k, v in (("imdb_url", u), ("video_release_date", vr)) if v}
        for u, vr in zip(urls, videos, strict=True)
    ]
    return _items_frame(item[good].tolist(), title[good].tolist(), cats, _seconds(dt[good]), attrs)


def _ml100k_users(path: Path, problems: list[ImportProblem]) -> pd.DataFrame:
    rows = _split_lines(path, "|", ["user", "age", "gender", "occupation", "zip"])
    user = rows.text("user", "user id")
    age = rows.number("age", "age")
    gender = rows.text("gender", "gender", required=False)
    occupation = rows.text("occupation", "occupation", required=False)
    zipcode = rows.text("zip", "zip code", required=False)
    rows.check_all_bad(path)
    problems.extend(rows.problems)
    good = rows.good()
    attrs = [
        {"age": int(a), "gender": g, "occupation": o, "zip": z}
        for a, g, o, z in zip(age[good], gender[good], occupation[good], zipcode[good], strict=True)
    ]
    return _users_frame(user[good].tolist(), attrs)


def load_movielens_1m(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens 1M from its folder: `ratings.dat`, `movies.dat`, `users.dat` (`::`-separated)."""
    return _load_movielens_dat(_require_folder(path), latest)


def load_movielens_10m(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens 10M from its folder: `ratings.dat` (half-star ratings), `movies.dat`,
    and `tags.dat` if present (tags go to item text and `attributes["tags"]`)."""
    return _load_movielens_dat(_require_folder(path), latest)


def _load_movielens_dat(folder: Path, latest: float | None = None) -> RawData:
    events_path = folder / "ratings.dat"
    ratings = _split_lines(events_path, "::", ["user", "item", "rating", "ts"])
    events = _rating_events(ratings, events_path, latest)
    problems = ratings.problems
    tags: dict[str, list[str]] = {}
    if (folder / "tags.dat").is_file():
        t = _split_lines(folder / "tags.dat", "::", ["user", "item", "tag", "ts"])
        tags = _tags_by_item(t, folder / "tags.dat")
        problems.extend(t.problems)
    items = empty_items()
    if (folder / "movies.dat").is_file():
        m = _split_lines(folder / "movies.dat", "::", ["item", "title", "genres"])
        items = _movies_frame(m, folder / "movies.dat", tags)
        problems.extend(m.problems)
    users = empty_users()
    if (folder / "users.dat").is_file():
        names = ["user", "gender", "age", "occupation", "zip"]
        u = _split_lines(folder / "users.dat", "::", names)
        users = _ml1m_users(u, folder / "users.dat")
        problems.extend(u.problems)
    return RawData(events, items, users, _sorted(problems))


def _movies_frame(rows: _Rows, path: Path, tags: dict[str, list[str]]) -> pd.DataFrame:
    """Items of a movies file with columns item, title, genres (`|`-separated)."""
    item = rows.text("item", "movie id")
    title = rows.text("title", "title", required=False)
    genres = rows.text("genres", "genres", required=False)
    rows.check_all_bad(path)
    good = rows.good()
    title = title[good].reset_index(drop=True)
    cats = [[] if g in _NO_GENRES else g.split("|") for g in genres[good]]
    return _items_frame(
        item[good].tolist(), title.tolist(), cats, _year_seconds(title), [{}] * len(title), tags
    )


def _ml1m_users(rows: _Rows, path: Path) -> pd.DataFrame:
    user = rows.text("user", "user id")
    gender = rows.text("gender", "gender", required=False)
    age = rows.number("age", "age")
    occ = rows.number("occupation", "occupation")
    zipcode = rows.text("zip", "zip code", required=False)
    unknown = ~np.isin(occ, np.arange(len(ML1M_OCCUPATIONS))) & ~np.isnan(occ)
    rows.fail(unknown, "occupation code {:g} is not in 0..20", occ)
    rows.check_all_bad(path)
    good = rows.good()
    attrs = [
        {"age": int(a), "gender": g, "occupation": ML1M_OCCUPATIONS[int(o)], "zip": z}
        for a, g, o, z in zip(age[good], gender[good], occ[good], zipcode[good], strict=True)
    ]
    return _users_frame(user[good].tolist(), attrs)


def load_movielens_latest(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens "latest" (also 20M/25M/32M) from its folder: `ratings.csv`,
    `movies.csv`, `tags.csv` and `links.csv` when present.

    Tags are not events: they are added to the item's text and
    `attributes["tags"]`; links add `imdb_id`/`tmdb_id` attributes.
    """
    folder = _require_folder(path)
    events_path = folder / "ratings.csv"
    ratings = _read_csv(events_path, ",", ["userId", "movieId", "rating", "timestamp"])
    ratings.columns = {
        "user": ratings.columns["userId"],
        "item": ratings.columns["movieId"],
        "rating": ratings.columns["rating"],
        "ts": ratings.columns["timestamp"],
    }
    events = _rating_events(ratings, events_path, latest)
    problems = ratings.problems
    tags: dict[str, list[str]] = {}
    if (folder / "tags.csv").is_file():
        t = _read_csv(folder / "tags.csv", ",", ["userId", "movieId", "tag"])
        t.columns = {
            "user": t.columns["userId"],
            "item": t.columns["movieId"],
            "tag": t.columns["tag"],
        }
        tags = _tags_by_item(t, folder / "tags.csv")
        problems.extend(t.problems)
    items = empty_items()
    if (folder / "movies.csv").is_file():
        m = _read_csv(folder / "movies.csv", ",", ["movieId", "title", "genres"], multiline=True)
        m.columns = {
            "item": m.columns["movieId"],
            "title": m.columns["title"],
            "genres": m.columns["genres"],
        }
        items = _movies_frame(m, folder / "movies.csv", tags)
        problems.extend(m.problems)
        if (folder / "links.csv").is_file():
            _add_links(items, folder / "links.csv", problems)
    return RawData(events, items, empty_users(), _sorted(problems))


def _add_links(items: pd.DataFrame, path: Path, problems: list[ImportProblem]) -> None:
    """Add IMDb/TMDb ids of `links.csv` to the items' attributes (in place)."""
    rows = _read_csv(path, ",", ["movieId", "imdbId", "tmdbId"])
    movie = rows.text("movieId", "movie id")
    rows.check_all_bad(path)
    problems.extend(rows.problems)
    good = rows.good()
    imdb = _as_str(rows.columns["imdbId"])[good]
    tmdb = _as_str(rows.columns["tmdbId"])[good]
    links = {m: (i, t) for m, i, t in zip(movie[good], imdb, tmdb, strict=True)}
    for iid, attrs in zip(items["item_id"], items["attributes"], strict=True):
        if iid in links:
            i, t = links[iid]
            attrs.update({k: v for k, v in (("imdb_id", i), ("tmdb_id", t)) if v})


def _sorted(problems: list[ImportProblem]) -> list[ImportProblem]:
    return sorted(problems, key=lambda p: (p.source, p.line))


# ------------------------------------------------------------ generic table
_TIME_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class ColumnMapping(Config):
    """Which columns of an event table hold the schema fields.

    - `user`, `item`: user and item id columns (required);
    - `type`: event type column; absent from the file or empty cells give `default_type`;
    - `value`: numeric value column (a rating); None or absent: no values;
    - `timestamp`: time column, epoch numbers (in `time_unit`) or date strings
      (ISO 8601 unless `time_format`, a strftime pattern); None or absent: NaN;
    - `event_id`: id column; None: ids are `file:line`;
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
    format: Literal["csv", "parquet"] | None = None,
    event_types: Collection[str] | None = None,
    latest: float | None = None,
) -> RawData:
    """Events from a CSV (with a header line) or Parquet table.

    `format` defaults to the suffix (`.parquet`/`.pq` is Parquet, anything else
    CSV). Rows whose type is not in `event_types` (default: the types of
    `DEFAULT_EVENT_WEIGHTS`) are reported, and so are rows timestamped after
    `latest` (epoch seconds; default now plus `DEFAULT_MAX_FUTURE_SKEW_SECONDS`).
    For Parquet, problem `line`s are 1-based row numbers.
    """
    path = Path(path)
    mapping = mapping or ColumnMapping()
    fmt = format or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    if fmt == "parquet":
        rows = _read_parquet(_require_file(path))
    elif fmt == "csv":
        rows = _read_csv(path, mapping.sep)
    else:
        raise ValueError(f"unknown table format {format!r}; expected 'csv' or 'parquet'")
    found = list(rows.columns)
    _check_header(path, found, [mapping.user, mapping.item])
    if mapping.event_id is not None:
        _check_header(path, found, [mapping.event_id])
    has = {c for c in (mapping.type, mapping.value, mapping.timestamp) if c in rows.columns}

    user = rows.text(mapping.user, "user id")
    item = rows.text(mapping.item, "item id")
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
        event_id = rows.text(mapping.event_id, "event id")
        dup = event_id.duplicated().to_numpy(dtype=bool) & ~_blank(event_id)
        rows.fail(dup, "duplicate event id {!r}", event_id)
    else:
        event_id = _event_ids(rows)
    rows.check_all_bad(path, events=True)
    events = _events_frame(rows, event_id, user, item, types, value, timestamp)
    return RawData(events, problems=_sorted(rows.problems))


def _read_parquet(path: Path) -> _Rows:
    frame = pd.read_parquet(path)
    columns = {str(c): frame[c].reset_index(drop=True) for c in frame.columns}
    lines = np.arange(1, len(frame) + 1, dtype=np.int64)
    return _Rows(path.name, columns, lines, [], len(frame))


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


# --------------------------------------------------------------- CLI specs
_LOADERS = {
    "movielens-100k": load_movielens_100k,
    "movielens-1m": load_movielens_1m,
    "movielens-10m": load_movielens_10m,
    "movielens-latest": load_movielens_latest,
}
KNOWN_SCHEMES = [*_LOADERS, "csv", "parquet", "synthetic"]

_SYNTHETIC_ALIASES = {
    "users": "n_users",
    "items": "n_items",
    "categories": "n_categories",
    "factors": "n_factors",
}


def load_data(
    spec: str, mapping: ColumnMapping | None = None, *, latest: float | None = None
) -> RawData:
    """Load data named by a CLI spec.

    `movielens-100k:PATH`, `movielens-1m:PATH`, `movielens-10m:PATH`,
    `movielens-latest:PATH`, `csv:PATH`, `parquet:PATH` (both with `mapping`),
    `synthetic` or `synthetic:key=value,...` (keys of `SyntheticConfig`, or
    `users`, `items`, `categories`, `factors`). Events timestamped after
    `latest` (default: now plus a few minutes) are reported as problems.
    """
    scheme, _, rest = spec.partition(":")
    scheme = scheme.strip().lower()
    if scheme == "synthetic":
        from sieve.data.synthetic import generate

        return generate(_synthetic_config(rest))[0]
    if scheme not in KNOWN_SCHEMES:
        raise ValueError(
            f"unknown data spec {spec!r}; expected one of {', '.join(KNOWN_SCHEMES)} "
            "as SCHEME:PATH (or 'synthetic[:key=value,...]')"
        )
    if not rest:
        raise ValueError(f"data spec {spec!r} needs a path: {scheme}:PATH")
    if scheme in _LOADERS:
        return _LOADERS[scheme](Path(rest).expanduser(), latest=latest)
    fmt: Literal["csv", "parquet"] = "csv" if scheme == "csv" else "parquet"
    return load_table(Path(rest).expanduser(), mapping, format=fmt, latest=latest)


def _synthetic_config(args: str) -> Any:
    """A `SyntheticConfig` from `key=value,...`, values typed by the field."""
    from sieve.data.synthetic import SyntheticConfig

    hints = typing.get_type_hints(SyntheticConfig)
    names = {f.name for f in fields(SyntheticConfig)}
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, raw = part.partition("=")
        key = _SYNTHETIC_ALIASES.get(key.strip(), key.strip())
        if not eq or key not in names:
            raise ValueError(
                f"bad synthetic option {part!r}; expected key=value with key in "
                f"{sorted(names | set(_SYNTHETIC_ALIASES))}"
            )
        values[key] = _typed(raw.strip(), hints[key], key)
    return SyntheticConfig(**values)


def _typed(raw: str, tp: Any, key: str) -> Any:
    try:
        if tp is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"synthetic option {key}: expected {tp.__name__}, got {raw!r}") from None
    return raw
