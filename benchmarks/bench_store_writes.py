"""The serving writes' own cost in the store: a batch of served lists
(`log_impressions`, what the impression writer flushes) and a batch of events
(`append_events`, what `POST /events` commits), on SQLite and PostgreSQL.

Wall and CPU time of this process per batch (the store's driver runs here;
PostgreSQL's own work is in its server process and counts only in the wall
time). Run it with `PYTHONPATH` at two checkouts to compare versions:

    PYTHONPATH=src python benchmarks/bench_store_writes.py [--batches 60] [--lists 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sieve.data.records import Event, Impression, ImpressionItem
from sieve.storage import open_store

console = Console()
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def store_url(kind: str) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL schema, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{Path(d) / 'bench.db'}"
        return
    import psycopg

    schema = f"bench_writes_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def lists(n: int, slots: int = 10) -> list[Impression]:
    now = datetime.now(UTC)
    return [
        Impression(
            request_id=uuid.uuid4().hex,
            user_id=f"u{k}",
            model_version="v1",
            timestamp=now,
            context={"hour": 3, "device": None},
            items=[
                ImpressionItem(
                    item_id=f"i{j}", position=j, score=1.0 / (j + 1), sources=["ann", "popular"]
                )
                for j in range(slots)
            ],
        )
        for k in range(n)
    ]


def events(k: int, n: int = 10) -> list[Event]:
    now = datetime.now(UTC)
    return [
        Event(
            id=uuid.uuid4().hex,
            user_id=f"u{(k * 7 + j) % 500}",
            item_id=f"i{j}",
            type="click",
            timestamp=now,
        )
        for j in range(n)
    ]


def timed(batches: list[Any], write: Callable[[Any], Any]) -> tuple[float, float]:
    """Mean wall and CPU milliseconds per batch."""
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        write(batch)
    n = len(batches)
    return (time.perf_counter() - wall) / n * 1e3, (time.process_time() - cpu) / n * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--lists", type=int, default=20, help="served lists per impression batch")
    ap.add_argument("--store", action="append", choices=["sqlite", "postgres"])
    args = ap.parse_args()
    table = Table(title=f"{args.batches} batches each; ms per batch (this process)")
    for col in ("store", "write", "wall ms", "CPU ms"):
        table.add_column(col, justify="right")
    for kind in args.store or ["sqlite", "postgres"]:
        with store_url(kind) as url, open_store(url) as store:
            store.log_impressions(lists(2))  # connections, statement caches
            store.append_events(events(0), create_users=True)
            wall, cpu = timed(
                [lists(args.lists) for _ in range(args.batches)], store.log_impressions
            )
            table.add_row(kind, f"{args.lists} lists of 10", f"{wall:.2f}", f"{cpu:.2f}")
            wall, cpu = timed(
                [events(k) for k in range(args.batches)],
                lambda b: store.append_events(b, create_users=True),
            )
            table.add_row(kind, "10 events", f"{wall:.2f}", f"{cpu:.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
