"""`sieve export`: the event log and the catalog as a Parquet data lake.

Layout under the export folder:

    events/day=YYYY-MM-DD/part-<first seq>-<k>.parquet   events by UTC day
    catalog/seq=<last seq>/items.parquet                  the catalog as of each export
    _manifest.json                                        one record per export

Events are read from the store in pages of `batch` rows (`events_frame` with
`since_seq`/`limit`: never the whole log) and appended to one Parquet writer
per day, so memory is bounded by a page, whatever the log's size. The
catalog is mutable (items change and disappear), so each export writes a
snapshot of it; a reader takes the newest. The manifest is written last, by
rename: an interrupted export leaves no record, and running the command again
redoes it from the last recorded sequence number (the files of the unfinished
run have the same names and are replaced). Spark — or any engine a team
already runs — reads the folder as a day-partitioned table.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sieve.storage import Store

MANIFEST = "_manifest.json"
#: The schema of the exported events (fixed, so files of every export agree).
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("type", pa.string()),
        ("value", pa.float64()),
        ("timestamp", pa.float64()),
        ("seq", pa.int64()),
    ]
)
ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("created_at", pa.float64()),
        ("attributes", pa.string()),  # JSON: free fields of any shape
        ("available", pa.bool_()),
    ]
)
#: Day partitions kept open at once; older writers are closed (a later page of
#: the same day then starts a new file).
_OPEN_WRITERS = 64


@dataclass(frozen=True)
class ExportRecord:
    """One export: events with `from_seq < seq <= to_seq`, how many, when,
    and the catalog snapshot written with it."""

    from_seq: int
    to_seq: int
    events: int
    days: list[str]
    catalog: str
    items: int
    exported_at: float


def read_manifest(root: str | Path) -> list[ExportRecord]:
    """The exports recorded under `root` (none when it holds no manifest)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
        return [ExportRecord(**r) for r in raw["exports"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an export manifest ({e}); export to a new folder") from e


def last_exported(root: str | Path) -> int:
    """The highest sequence number exported to `root` (0 when none)."""
    return max((r.to_seq for r in read_manifest(root)), default=0)


def export_log(
    store: Store, root: str | Path, since: int | None = None, batch: int = 200_000
) -> ExportRecord:
    """Export the events with `seq > since` (default: where the last export
    stopped) and a catalog snapshot; append the export to the manifest."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    root = Path(root)
    records = read_manifest(root)
    start = last_exported(root) if since is None else int(since)
    if start < 0:
        raise ValueError(f"--since must be >= 0, not {start}")
    upto = store.max_seq()  # a fixed end: events appended meanwhile go to the next export
    (root / "events").mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"events/day=*/part-{start:012d}-*.parquet"):
        stale.unlink()  # an interrupted run of this same export
    writers: OrderedDict[str, pq.ParquetWriter] = OrderedDict()
    files: dict[str, int] = {}
    cursor, count = start, 0
    try:
        while cursor < upto:
            page = store.events_frame(since_seq=cursor, limit=batch)
            page = page[page["seq"] <= upto]
            if page.empty:
                break
            cursor = int(page["seq"].max())
            count += len(page)
            days = _days(page["timestamp"].to_numpy(np.float64))
            for day, part in page.groupby(days, sort=True):
                _writer(root, str(day), start, writers, files).write_table(
                    pa.Table.from_pandas(part, schema=EVENT_SCHEMA, preserve_index=False)
                )
    finally:
        for w in writers.values():
            w.close()
    catalog = f"catalog/seq={upto:012d}"
    items = _export_items(store, root / catalog)
    record = ExportRecord(
        start, max(cursor, start), count, sorted(files), catalog, items, time.time()
    )
    _write_manifest(root, [*records, record])
    return record


def _days(timestamps: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, Any]:
    """UTC day (YYYY-MM-DD) of each timestamp; events without one go to `unknown`."""
    ok = np.isfinite(timestamps)
    out = np.full(len(timestamps), "unknown", dtype=object)
    out[ok] = (
        pd.to_datetime(timestamps[ok], unit="s", utc=True).strftime("%Y-%m-%d").to_numpy(object)
    )
    return out


def _writer(
    root: Path,
    day: str,
    start: int,
    writers: OrderedDict[str, pq.ParquetWriter],
    files: dict[str, int],
) -> pq.ParquetWriter:
    """The open writer of a day partition (a new file if it was closed)."""
    if day in writers:
        writers.move_to_end(day)
        return writers[day]
    if len(writers) >= _OPEN_WRITERS:
        _, oldest = writers.popitem(last=False)
        oldest.close()
    k = files.get(day, 0)
    files[day] = k + 1
    folder = root / "events" / f"day={day}"
    folder.mkdir(parents=True, exist_ok=True)
    writer = pq.ParquetWriter(folder / f"part-{start:012d}-{k:04d}.parquet", EVENT_SCHEMA)
    writers[day] = writer
    return writer


def _export_items(store: Store, folder: Path) -> int:
    """The catalog as one Parquet file (attributes as JSON text)."""
    items = store.items_frame()
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pydict(
        {
            "item_id": items["item_id"].astype(str).tolist(),
            "title": items["title"].astype(str).tolist(),
            "text": items["text"].astype(str).tolist(),
            "categories": [[str(c) for c in cs] for cs in items["categories"]],
            "created_at": items["created_at"].astype(np.float64).tolist(),
            "attributes": [json.dumps(a, default=str) for a in items["attributes"]],
            "available": items["available"].astype(bool).tolist(),
        },
        schema=ITEM_SCHEMA,
    )
    pq.write_table(table, folder / "items.parquet")
    return table.num_rows


def _write_manifest(root: Path, records: list[ExportRecord]) -> None:
    text = json.dumps({"exports": [asdict(r) for r in records]}, indent=1)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MANIFEST}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, root / MANIFEST)


__all__ = ["EVENT_SCHEMA", "ExportRecord", "export_log", "last_exported", "read_manifest"]
