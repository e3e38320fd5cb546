"""Serving latency on loopback: one `sieve serve` process, a bounded load.

Builds (once, cached in --workdir) a synthetic catalog of --items items and
--users users in a SQLite store, trains the funnel, precomputes the lists of a
sample of users into Redis, starts one server process, and sends a bounded
number of requests from --concurrency client threads, interleaving

- `GET /health` (the trivial endpoint: the same server's floor),
- `GET /recommendations/{user}` for users without a precomputed list (live funnel),
- `GET /recommendations/{user}` for users with one (cached answer).

It reports p50/p99 of the client-side latency and of the server time (the
`Server-Timing: app;dur=` header), each with its ratio to /health measured in
the same run: the ratios hold on a noisy shared machine, absolute times less so.

    python benchmarks/bench_latency.py --items 100000 --users 100000 --requests 3000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from sieve.data.synthetic import SyntheticConfig, generate
from sieve.serve.launch import free_port, start_server, stop_server
from sieve.serve.service import Service
from sieve.settings import Settings
from sieve.storage import open_store
from sieve.training.snapshot import import_data
from sieve.training.train import train

console = Console()
TIMING = re.compile(r"app;dur=([0-9.]+)")


def build(workdir: Path, n_users: int, n_items: int, seed: int) -> Settings:
    """Store + trained model in `workdir` (reused when already there)."""
    settings = Settings(
        store_url=f"sqlite:///{workdir / 'sieve.db'}",
        model_dir=workdir / "models",
        open_read=True,
    )
    marker = workdir / f"built-{n_users}x{n_items}-{seed}"
    if marker.exists():
        console.print(f"reusing {workdir}")
        return settings
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t = time.perf_counter()
    raw, _ = generate(
        SyntheticConfig(n_users=n_users, n_items=n_items, events_per_user=15, seed=seed)
    )
    console.print(f"generated {len(raw.events)} events in {time.perf_counter() - t:.0f}s")
    with open_store(settings.store_url) as store:
        t = time.perf_counter()
        import_data(store, raw)
        console.print(f"imported in {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        funnel, _ = train(settings, store)
        console.print(f"trained funnel {funnel.version} in {time.perf_counter() - t:.0f}s")
    marker.touch()
    return settings


def redis_url() -> str | None:
    url = os.environ.get("SIEVE_BENCH_REDIS", "redis://127.0.0.1:6379/14")
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return f"{url}?prefix=bench-{uuid.uuid4().hex[:8]}:"
    except OSError:
        return None


def percentiles(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=3000, help="total requests (bounded load)")
    ap.add_argument("--concurrency", type=int, default=2, help="client threads")
    ap.add_argument("--cached-users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sieve-latency"))
    args = ap.parse_args()

    settings = build(args.workdir, args.users, args.items, args.seed)
    cache = redis_url()
    rng = np.random.default_rng(args.seed)
    engine = Service.open(settings.model_copy(update={"cache_url": cache or "memory://"}))
    users = np.array([str(u) for u in engine.funnel.user_ids], dtype=object)
    engine_users = rng.permutation(users)
    cached = list(engine_users[: args.cached_users]) if cache else []
    live = list(engine_users[args.cached_users :])
    if cache:
        t = time.perf_counter()
        engine.precompute(10, users=cached)
        console.print(
            f"precomputed {len(cached)} lists into Redis in {time.perf_counter() - t:.1f}s"
        )
    else:
        console.print("[yellow]Redis not reachable: cached answers are not measured[/yellow]")
    engine.close()

    args_ = [
        "--store",
        settings.store_url,
        "--model-dir",
        str(settings.model_dir),
        "--no-access-log",
        "--cache",
        cache or "memory://",
    ]
    port = free_port()
    server = start_server(
        args_, port=port, env={"SIEVE_OPEN_READ": "true"}, ready_path="/ready", timeout=300
    )
    base = f"http://127.0.0.1:{port}"
    try:
        kinds = ["health", "live"] + (["cached"] if cached else [])
        plan = [(kinds[i % len(kinds)], i) for i in range(args.requests)]
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        errors: list[str] = []
        lock = threading.Lock()

        def worker(part: list[tuple[str, int]]) -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                for _ in range(20):  # warm-up: connections, caches, lazy imports
                    client.get("/health")
                    client.get(f"/recommendations/{live[0]}")
                for kind, i in part:
                    if kind == "health":
                        path = "/health"
                    elif kind == "live":
                        path = f"/recommendations/{live[i % len(live)]}?n=10"
                    else:
                        path = f"/recommendations/{cached[i % len(cached)]}?n=10"
                    t = time.perf_counter()
                    r = client.get(path)
                    wall = (time.perf_counter() - t) * 1000
                    m = TIMING.search(r.headers.get("server-timing", ""))
                    with lock:
                        if r.status_code != 200:
                            errors.append(f"{path}: {r.status_code}")
                        elif kind == "cached" and not r.json().get("cached"):
                            errors.append(f"{path}: expected a cached answer")
                        elif kind == "live" and r.json().get("cached"):
                            # each live request is a different user: none has a kept answer
                            errors.append(f"{path}: expected a live answer")
                        results[kind].append((wall, float(m.group(1)) if m else float("nan")))

        threads = [
            threading.Thread(target=worker, args=(plan[k :: args.concurrency],))
            for k in range(args.concurrency)
        ]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t0
    finally:
        stop_server(server)

    table = Table(
        title=f"{args.items} items · {args.users} users · {args.requests} requests · "
        f"{args.concurrency} clients · {elapsed:.1f}s · one server process"
    )
    for col in (
        "endpoint",
        "n",
        "client p50 ms",
        "client p99 ms",
        "server p50 ms",
        "server p99 ms",
        "client p50 / health",
        "client p99 / health",
    ):
        table.add_column(col, justify="right")
    ref_c = percentiles([w for w, _ in results["health"]])
    for kind in kinds:
        walls = [w for w, _ in results[kind]]
        servers = [s for _, s in results[kind]]
        c50, c99 = percentiles(walls)
        s50, s99 = percentiles(servers)
        table.add_row(
            kind,
            str(len(walls)),
            f"{c50:.2f}",
            f"{c99:.2f}",
            f"{s50:.3f}",
            f"{s99:.3f}",
            f"{c50 / ref_c[0]:.1f}×",
            f"{c99 / ref_c[1]:.1f}×",
        )
    console.print(table)
    if errors:
        console.print(f"[red]{len(errors)} failed requests[/red], e.g. {errors[:3]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
