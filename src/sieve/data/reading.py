"""Reading tables into `_Rows`: text files decoded as UTF-8 with a Latin-1
fallback, lines split by Arrow string kernels, the quoted CSV path (a quoted
field may hold the separator, or span lines) where a file needs it, Parquet,
and JSON Lines (`read_rows` picks one by format or suffix).
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from sieve.data.raw import ImportProblem
from sieve.data.rows import _Rows


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


#: Table formats `read_rows` reads.
TableFormat = Literal["csv", "parquet", "jsonl"]
_SUFFIXES: dict[str, TableFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def table_format(path: Path, format: str | None = None) -> TableFormat:
    """The format named, or the one of the suffix (`.parquet`/`.pq`,
    `.jsonl`/`.ndjson`; anything else is CSV)."""
    if format is None:
        return _SUFFIXES.get(path.suffix.lower(), "csv")
    if format not in ("csv", "parquet", "jsonl"):
        raise ValueError(f"unknown table format {format!r}; expected 'csv', 'parquet' or 'jsonl'")
    return format  # type: ignore[return-value]


def read_rows(path: Path, format: str | None = None, sep: str = ",") -> _Rows:
    """A headed CSV, a Parquet file or a JSON Lines file as `_Rows`: CSV
    cells are strings; Parquet and JSON values keep their types (a list of
    categories stays a list). Parquet `line`s are 1-based row numbers."""
    fmt = table_format(path, format)
    _require_file(path)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "jsonl":
        return _read_jsonl(path)
    return _read_csv(path, sep)


def _read_parquet(path: Path) -> _Rows:
    frame = pd.read_parquet(path)
    columns = {str(c): frame[c].reset_index(drop=True) for c in frame.columns}
    lines = np.arange(1, len(frame) + 1, dtype=np.int64)
    return _Rows(path.name, columns, lines, [], len(frame))


def _read_jsonl(path: Path) -> _Rows:
    """One JSON object per line (blank lines skipped); a line that is not
    one is reported with its number. Columns are the union of the keys."""
    problems: list[ImportProblem] = []
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    n_rows = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            n_rows += 1
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                problems.append(ImportProblem(number, f"not valid JSON: {e}", path.name))
                continue
            if not isinstance(value, dict):
                problems.append(
                    ImportProblem(
                        number, f"expected a JSON object, found {type(value).__name__}", path.name
                    )
                )
                continue
            records.append(value)
            lines.append(number)
    keys = list(dict.fromkeys(k for r in records for k in r))
    columns = {
        str(k): pd.Series([r.get(k) for r in records], dtype=object, copy=False) for k in keys
    }
    return _Rows(path.name, columns, np.asarray(lines, dtype=np.int64), problems, n_rows)
