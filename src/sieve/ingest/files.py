"""`sieve import items|users|events FILE`: a table into an existing store.

- Reading and checking are the importers' (`data.reading`, `data.rows`,
  `data.tables`, `data.catalog`): one piece of code decides what a good row
  is, with the API's rules (ids as `records.Id`, the configured event
  types, no timestamp past the allowed clock skew; items and users through
  the `Item`/`User` models themselves). Every refused row is reported with
  its line and reason; the good ones are written.
- Idempotent: events by the file's event id column, else by a hash of their
  content (`data.tables.content_ids`), so importing a file twice, or two
  files that overlap, stores each event once; items and users are upserts.
- Batches: each batch of good rows is one transaction; for events, the
  checkpoint (the last line committed, per file) moves in that transaction
  (`SQLBulk.append_columns`). A second run of an interrupted import starts
  after the checkpoint, unless the file's start changed (then from line 1,
  which idempotency makes safe) or `restart` is asked.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sieve.data.catalog import CatalogMapping, items_from_rows, users_from_rows
from sieve.data.raw import ImportProblem
from sieve.data.reading import read_rows, table_format
from sieve.data.rows import _sorted
from sieve.data.tables import ColumnMapping, events_from_rows
from sieve.storage import EventColumns, ImportCheckpoint, SQLStore

Kind = Literal["items", "users", "events"]
KINDS: tuple[Kind, ...] = ("items", "users", "events")
#: Good rows per transaction.
DEFAULT_BATCH = 50_000
#: Bytes of a file's start that identify it for its checkpoint.
_FINGERPRINT_BYTES = 1 << 20

Progress = Callable[[int, int], None]


@dataclass
class ImportReport:
    """What an import did. `rows`: data rows read; `written`: new events, or
    items/users upserted; `duplicates`: events already stored; `resumed_after`:
    the checkpoint's line (0: from the start); `problems`: every refused row
    after it, by line."""

    kind: Kind
    source: str
    rows: int = 0
    written: int = 0
    duplicates: int = 0
    resumed_after: int = 0
    restarted_changed_file: bool = False
    problems: list[ImportProblem] = field(default_factory=list)


def mapping_for(kind: Kind, pairs: Mapping[str, str], **options: Any) -> Any:
    """The kind's mapping (`ColumnMapping` for events, `CatalogMapping` for
    items and users) from `field → column` pairs and options; an unknown field
    is a `ValueError` naming the known ones."""
    cls: Any = ColumnMapping if kind == "events" else CatalogMapping
    known = {f.name for f in fields(cls)}
    names = {"sep", "categories_sep", "time_format", "time_unit", "default_type"}
    unknown = sorted(set(pairs) - (known - names))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} in the {kind} column mapping; "
            f"known: {sorted(known - names)}"
        )
    values = {**{k: v for k, v in options.items() if v is not None and k in known}, **pairs}
    return cls(**values)


def fingerprint(path: Path) -> str:
    """A hash of the file's first MiB: the same file, grown or not, keeps it."""
    with path.open("rb") as f:
        return hashlib.blake2b(f.read(_FINGERPRINT_BYTES), digest_size=16).hexdigest()


def checkpoint_source(kind: Kind, path: Path) -> str:
    return f"{kind}:{path.resolve()}"


def import_file(
    store: SQLStore,
    kind: Kind,
    path: Path,
    mapping: Any = None,
    *,
    format: str | None = None,
    batch: int = DEFAULT_BATCH,
    event_types: Collection[str] | None = None,
    latest: float | None = None,
    known_items: bool = True,
    restart: bool = False,
    progress: Progress | None = None,
    on_users: Callable[[Sequence[str]], None] | None = None,
) -> ImportReport:
    """Import one file of `kind` into `store` (see the module doc).

    `known_items`: refuse events whose item is not in the catalog, as
    `POST /events` does. `progress(done, total)` is called after each batch;
    `on_users(user_ids)` after each committed batch of events or users with
    their ids (the CLI stamps them changed: `sieve.storage.changes`).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown import kind {kind!r}; expected one of {list(KINDS)}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    mapping = mapping if mapping is not None else mapping_for(kind, {})
    source = checkpoint_source(kind, path)
    print_ = fingerprint(path)
    report = ImportReport(kind, str(path))
    saved = None if restart else store.import_checkpoint(source)
    if saved is not None and saved.fingerprint != print_:
        report.restarted_changed_file = True
        saved = None
    after = saved.line if saved is not None else 0
    report.resumed_after = after
    rows = read_rows(path, table_format(path, format), mapping.sep)
    report.rows = rows.n_rows
    last_line = int(max([0, *rows.line.tolist(), *(p.line for p in rows.problems)]))
    if kind == "events":
        frame = events_from_rows(
            rows, mapping, event_types=event_types, latest=latest, ids="content"
        )
        if known_items and len(frame):
            frame = _drop_unknown_items(store, frame, rows.problems, rows.source)
        if rows.n_rows and not len(frame) and after == 0:
            first = min(rows.problems, key=lambda p: p.line)
            raise ValueError(f"{path}: no valid row; first problem: {first}")
        frame = frame[frame["line"].to_numpy() > after]
        _write_events(store, frame, source, print_, last_line, batch, report, progress, on_users)
    else:
        records = (
            items_from_rows(rows, mapping) if kind == "items" else users_from_rows(rows, mapping)
        )
        if rows.n_rows and not records and after == 0:
            first = min(rows.problems, key=lambda p: p.line)
            raise ValueError(f"{path}: no valid row; first problem: {first}")
        todo = [r for line, r in records if line > after]
        lines = [line for line, _ in records if line > after]
        _write_catalog(
            store, kind, todo, lines, source, print_, last_line, batch, report, progress, on_users
        )
    report.problems = [p for p in _sorted(rows.problems) if p.line > after]
    return report


def _drop_unknown_items(
    store: SQLStore, frame: pd.DataFrame, problems: list[ImportProblem], source: str
) -> pd.DataFrame:
    """Events about items not in the catalog are refused, as by `POST /events`."""
    known = store.item_ids()
    unknown = ~frame["item_id"].isin(known).to_numpy(dtype=bool)
    for line, item in zip(frame["line"][unknown], frame["item_id"][unknown], strict=True):
        problems.append(
            ImportProblem(
                int(line),
                f"unknown item id {item!r}: import the items first (sieve import items), "
                "or pass --allow-unknown-items",
                source,
            )
        )
    return frame[~unknown]


def _write_events(
    store: SQLStore,
    frame: pd.DataFrame,
    source: str,
    print_: str,
    last_line: int,
    batch: int,
    report: ImportReport,
    progress: Progress | None,
    on_users: Callable[[Sequence[str]], None] | None = None,
) -> None:
    total = len(frame)
    micros = np.round(frame["timestamp"].to_numpy(dtype=np.float64) * 1e6)
    values = frame["value"].to_numpy(dtype=np.float64)
    lines = frame["line"].to_numpy()
    ids, users, items, types = (
        frame[c].tolist() for c in ("event_id", "user_id", "item_id", "type")
    )
    for start in range(0, max(total, 1), batch):
        stop = min(start + batch, total)
        line = last_line if stop == total else int(lines[stop - 1])
        part = EventColumns(
            event_id=ids[start:stop],
            user_id=users[start:stop],
            item_id=items[start:stop],
            type=types[start:stop],
            value=[None if math.isnan(v) else v for v in values[start:stop].tolist()],
            timestamp_us=[None if math.isnan(t) else int(t) for t in micros[start:stop].tolist()],
        )
        inserted = store.append_columns(part, checkpoint=ImportCheckpoint(source, line, print_))
        if on_users is not None and inserted:
            on_users(part.user_id)
        report.written += inserted
        report.duplicates += (stop - start) - inserted
        if progress is not None:
            progress(stop, total)


def _write_catalog(
    store: SQLStore,
    kind: Kind,
    records: list[Any],
    lines: list[int],
    source: str,
    print_: str,
    last_line: int,
    batch: int,
    report: ImportReport,
    progress: Progress | None,
    on_users: Callable[[Sequence[str]], None] | None = None,
) -> None:
    total = len(records)
    for start in range(0, max(total, 1), batch):
        stop = min(start + batch, total)
        part = records[start:stop]
        if part:
            write = store.upsert_items if kind == "items" else store.upsert_users
            report.written += write(part)
            if kind == "users" and on_users is not None:
                on_users([str(r.id) for r in part])  # the ranker may read attributes
        # upserts may run again: the checkpoint follows in its own transaction
        line = last_line if stop == total else lines[stop - 1]
        store.save_import_checkpoint(ImportCheckpoint(source, line, print_))
        if progress is not None:
            progress(stop, total)


__all__ = [
    "DEFAULT_BATCH",
    "KINDS",
    "ImportReport",
    "Kind",
    "checkpoint_source",
    "fingerprint",
    "import_file",
    "mapping_for",
]
