"""Ingestion throughput through the batch endpoint (`POST /events`).

Starts one `sieve serve` process on the given store (SQLite file, or a fresh
PostgreSQL schema), creates a catalog, then posts --batches batches of
--batch-size new events from --clients client threads and reports events per
second as acknowledged by the server (every 2xx means committed).

    python benchmarks/bench_ingest.py --store sqlite --store postgresql
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

from sieve.data.records import Item
from sieve.serve.launch import free_port, start_server, stop_server
from sieve.storage import open_store

console = Console()
POSTGRES = os.environ.get("SIEVE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def run(store_url: str, batches: int, batch_size: int, clients: int, n_items: int) -> float:
    with open_store(store_url) as store:
        store.upsert_items([Item(id=f"i{k}", title=f"item {k}") for k in range(n_items)])
    env = {"SIEVE_OPEN_READ": "true", "SIEVE_OPEN_WRITE": "true"}
    args = ["--store", store_url, "--no-access-log", "--model-dir", tempfile.mkdtemp()]
    port = free_port()
    server = start_server(args, port=port, env=env, timeout=60)
    base = f"http://127.0.0.1:{port}"
    try:
        acked = [0] * clients
        failures: list[str] = []

        def client(c: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as http:
                for b in range(c, batches, clients):
                    body = {
                        "events": [
                            {
                                "id": f"b{b}-{k}",
                                "user_id": f"u{(b * batch_size + k) % 5000}",
                                "item_id": f"i{(b * 7 + k) % n_items}",
                                "type": "view",
                            }
                            for k in range(batch_size)
                        ]
                    }
                    r = http.post("/events", json=body)
                    if r.status_code // 100 == 2:
                        acked[c] += r.json()["inserted"]
                    else:
                        failures.append(r.text[:200])

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    finally:
        stop_server(server)
    if failures:
        raise SystemExit(f"{len(failures)} failed batches, e.g. {failures[0]}")
    with open_store(store_url) as store:
        assert store.count_events() == sum(acked) == batches * batch_size
    return sum(acked) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--store", action="append", choices=["sqlite", "postgresql"])
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--items", type=int, default=10_000)
    args = ap.parse_args()
    table = Table(
        title=f"POST /events: {args.batches} batches of {args.batch_size} from "
        f"{args.clients} clients, one server process"
    )
    table.add_column("store")
    table.add_column("events/s", justify="right")
    for kind in args.store or ["sqlite", "postgresql"]:
        if kind == "sqlite":
            url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'ingest.db'}"
            rate = run(url, args.batches, args.batch_size, args.clients, args.items)
        else:
            schema = f"sieve_bench_{uuid.uuid4().hex[:12]}"
            url = f"postgresql+psycopg://{POSTGRES.split('://', 1)[1]}?schema={schema}"
            try:
                rate = run(url, args.batches, args.batch_size, args.clients, args.items)
            finally:
                with psycopg.connect(POSTGRES, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        table.add_row(kind, f"{rate:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
