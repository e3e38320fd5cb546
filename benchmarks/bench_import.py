"""Throughput of getting data in: `sieve import events FILE` and the Redis
Stream consumer (`sieve consume`), on SQLite and PostgreSQL.

Writes a seeded CSV of --events events (users, items, types, epoch times)
and its catalog, then for each store: imports the items, times the events
import (`sieve.ingest.files.import_file`, the code behind the command: read,
check, content ids, batched bulk appends with checkpoints), times a second
run of the same file (everything already stored), and as a same-run
reference times the previous path (one validated `Event` per row through
`append_events`, as `import_data` did) on the first --reference events.
Then --stream events go into a Redis Stream and one `StreamConsumer` stores
them; its rate counts from the first read to the last acknowledgement.

    PYTHONPATH=src python benchmarks/bench_import.py --store sqlite --store postgresql
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import redis
from rich.console import Console
from rich.table import Table

from sieve.data.records import Event
from sieve.data.tables import content_ids
from sieve.ingest.files import import_file
from sieve.ingest.stream import StreamConsumer
from sieve.storage import open_store

console = Console()
POSTGRES = os.environ.get("SIEVE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("SIEVE_BENCH_REDIS", "redis://127.0.0.1:6379/14")
TYPES = np.array(["view", "click", "cart", "purchase"])


def write_data(folder: Path, n_events: int, n_users: int, n_items: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    items = pd.DataFrame(
        {
            "id": [f"i{k}" for k in range(n_items)],
            "title": [f"item {k}" for k in range(n_items)],
            "categories": [f"c{k % 20}" for k in range(n_items)],
        }
    )
    item_path = folder / "items.csv"
    items.to_csv(item_path, index=False)
    popularity = rng.zipf(1.3, n_events) % n_items
    events = pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, n_users, n_events)).map("u{}".format),
            "item_id": pd.Series(popularity).map("i{}".format),
            "type": TYPES[rng.choice(4, n_events, p=[0.6, 0.3, 0.07, 0.03])],
            "timestamp": 1_700_000_000 + np.sort(rng.integers(0, 90 * 86400, n_events)),
        }
    )
    event_path = folder / "events.csv"
    events.to_csv(event_path, index=False)
    return item_path, event_path


def fresh_store(kind: str, folder: Path) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:6]}.db'}", None
    schema = f"bench_import_{uuid.uuid4().hex[:10]}"

    def drop() -> None:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{POSTGRES}?schema={schema}", drop


def reference(
    kind: str, folder: Path, event_path: Path, item_path: Path, n: int
) -> dict[str, float]:
    """The same first `n` events through both paths, each into a fresh store:
    the previous one (a validated `Event` per row, `append_events` per 10,000,
    as `import_data` did) and `import_file`; the same content ids, so only
    the code path differs."""
    head = folder / f"head-{n}.csv"
    frame = pd.read_csv(event_path, nrows=n, dtype=str)
    frame.to_csv(head, index=False)
    rates: dict[str, float] = {}
    for path in ("previous", "import_file"):
        url, drop = fresh_store(kind, folder)
        try:
            with open_store(url) as store:
                import_file(store, "items", item_path)
                start = time.perf_counter()
                if path == "import_file":
                    assert import_file(store, "events", head).written == n
                else:
                    _previous(store, frame)
                rates[path] = n / (time.perf_counter() - start)
        finally:
            if drop is not None:
                drop()
    return rates


def _previous(store: Any, frame: pd.DataFrame) -> None:
    stamps = frame["timestamp"].astype(float).to_numpy()
    ids = content_ids(
        frame["user_id"], frame["item_id"], frame["type"], np.full(len(frame), np.nan), stamps
    )
    for at in range(0, len(frame), 10_000):
        part = frame.iloc[at : at + 10_000]
        store.append_events(
            [
                Event(
                    id=ids.iloc[at + k],
                    user_id=r.user_id,
                    item_id=r.item_id,
                    type=r.type,
                    timestamp=datetime.fromtimestamp(float(r.timestamp), UTC),
                )
                for k, r in enumerate(part.itertuples(index=False))
            ]
        )


def consume(store: Any, n: int) -> dict[str, float]:
    client = redis.Redis.from_url(REDIS, decode_responses=True)
    stream = f"bench:import:{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    now = int(time.time())
    pipe = client.pipeline(transaction=False)
    for k in range(n):
        pipe.xadd(
            stream,
            {
                "user_id": f"u{rng.integers(0, 10_000)}",
                "item_id": f"i{rng.integers(0, 2_000)}",
                "type": "click",
                "timestamp": str(now - k),
            },
        )
        if k % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    worker = StreamConsumer(
        client, store, stream=stream, group="bench", consumer="c1", batch=1000, block_ms=200
    )
    start = time.perf_counter()
    totals = worker.run(max_events=n)
    seconds = time.perf_counter() - start
    pending = client.xpending(stream, "bench")["pending"]
    client.delete(stream, f"{stream}:rejected")
    client.close()
    assert totals.inserted == n and pending == 0, (totals, pending)
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--stream", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sieve-bench-import-"))
    item_path, event_path = write_data(folder, args.events, args.users, args.items)
    console.print(f"data: {args.events:,} events in {event_path} ({event_path.stat().st_size:,} B)")
    results: dict[str, Any] = {}
    for kind in args.store or ["sqlite", "postgresql"]:
        url, drop = fresh_store(kind, folder)
        try:
            with open_store(url) as store:
                import_file(store, "items", item_path)
                start = time.perf_counter()
                report = import_file(store, "events", event_path, batch=args.batch)
                seconds = time.perf_counter() - start
                assert report.written == args.events and not report.problems, report
                console.print(
                    f"{kind}: import {args.events / seconds:,.0f} rows/s ({seconds:.1f} s)"
                )
                start = time.perf_counter()
                again = import_file(store, "events", event_path, restart=True, batch=args.batch)
                rerun = time.perf_counter() - start
                assert again.written == 0 and again.duplicates == args.events
                console.print(f"{kind}: re-run {args.events / rerun:,.0f} rows/s")
                stream = consume(store, args.stream)
                console.print(f"{kind}: stream {stream['events_per_s']:,.0f} events/s")
            ref = reference(kind, folder, event_path, item_path, args.reference)
            console.print(f"{kind}: first {args.reference:,}: {ref}")
            results[kind] = {
                "events": args.events,
                "seconds": seconds,
                "rows_per_s": args.events / seconds,
                "rerun_seconds": rerun,
                "rerun_rows_per_s": args.events / rerun,
                "same_run_first_n": {"events": args.reference, **ref},
                "stream": stream,
            }
        finally:
            if drop is not None:
                drop()
    table = Table(
        "store", "import rows/s", "re-run rows/s", "first N: previous / now", "stream events/s"
    )
    for kind, r in results.items():
        first = r["same_run_first_n"]
        table.add_row(
            kind,
            f"{r['rows_per_s']:,.0f} ({r['seconds']:.1f} s)",
            f"{r['rerun_rows_per_s']:,.0f}",
            f"{first['previous']:,.0f} / {first['import_file']:,.0f}",
            f"{r['stream']['events_per_s']:,.0f}",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
