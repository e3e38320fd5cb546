"""Throughput with 1 and with 2 server processes (`sieve serve --workers N`), by `wrk`.

One store (PostgreSQL by default: a fresh database, dropped afterwards) gets
the synthetic demo data through the API and a model trained by `sieve
train`. Then, for each number of worker processes (`--workers-list`, default
1 and 2), one `sieve serve --workers N` on loopback with a Redis cache (a key
prefix of its own per run) is measured for `--seconds` by `wrk` with
`--connections` connections of `GET /recommendations/{user}` for random known
users (the Lua script of `bench_wrk.py`):

1. `cached`: every list precomputed first (`sieve batch` into that Redis
   prefix), so each answer is one cache read;
2. `live`: a fresh prefix with nothing precomputed, so each answer runs the
   funnel (store read of the user's events, retrieval, ranking).

It prints requests/s, p50/p99 and errors of each run and, per mode, the
ratio of requests/s with 2 processes to 1 (issue 10's goal: ≥ 1.6× on cached
answers on a 2-core machine). Before measuring, it waits until every worker
process answers (each one's `/version` names its process), and warms up.

wrk must be installed (`apt-get install -y wrk`); Redis and, for
`--store postgres`, PostgreSQL must run (URLs: `SIEVE_BENCH_REDIS`, default
redis://127.0.0.1:6379/13, and `SIEVE_BENCH_POSTGRES`, see `harness.py`).

How to run (full version, a few minutes):

    PYTHONPATH=src python benchmarks/bench_workers.py --seconds 30 --out /tmp/bench_workers.json

A smoke run: `--seconds 5`. Other options: `--store sqlite`, `--connections 16`,
`--data synthetic:n_users=100000,n_items=100000` (a bigger world).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console
from rich.table import Table

from bench_wrk import LUA, run_wrk, wrk_cmd
from harness import CLI, WORKTREE, checkout, demo_data, fmt, fresh_store, prepare, serving

console = Console(width=None if sys.stdout.isatty() else 160)
REDIS = os.environ.get("SIEVE_BENCH_REDIS", "redis://127.0.0.1:6379/13")


def wait_for_workers(base: str, user: str, workers: int, timeout: float = 300.0) -> None:
    """Until `workers` distinct processes have answered a recommendation
    (new connections from several threads, so the kernel hands them around)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout

    def one(_: int) -> str | None:
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                if client.get(f"/recommendations/{user}", params={"n": 10}).status_code != 200:
                    return None
                return str(client.get("/version").json()["replica"])
        except httpx.HTTPError:
            return None

    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} worker processes answered")
        with ThreadPoolExecutor(8) as pool:
            seen.update(r for r in pool.map(one, range(16)) if r)
        time.sleep(0.2)


def precompute(env: dict[str, str], store_url: str, models: Path, cache_url: str) -> None:
    """Every known user's list into the cache, by `sieve batch`."""
    cmd = [sys.executable, "-c", CLI, "batch", "--store", store_url, "--model-dir", str(models)]
    proc = subprocess.run(
        [*cmd, "--cache", cache_url],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`sieve batch` failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def drop_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ref", default=WORKTREE, help="git ref (default: the working tree)")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--seconds", type=float, default=30.0, help="per measurement")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers-list", default="1,2", help="numbers of processes to compare")
    ap.add_argument("--modes", default="cached,live", help="cached, live or both")
    ap.add_argument("--data", default="synthetic", help="load_data spec of the demo data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_workers.json"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        console.print("[red]wrk is not installed[/red]: `apt-get install -y wrk`, then again")
        return 2
    counts = [int(w) for w in args.workers_list.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    data = demo_data(args.data)
    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory() as tmp, checkout({"version": args.ref}) as versions:
        v = versions["version"]
        console.print(v.describe())
        workdir = Path(tmp)
        lua = workdir / "recs.lua"
        lua.write_text(LUA)
        users = workdir / "users.txt"
        users.write_text("\n".join(urllib.parse.quote(u, safe="") for u in data.user_ids) + "\n")
        models = workdir / "models"
        with fresh_store(args.store, workdir) as url:
            took = prepare(v, url, models, data)
            console.print(f"store filled and model trained in {took:.0f}s")
            for mode in modes:
                for workers in counts:
                    prefix = f"sieve_bench_workers_{uuid.uuid4().hex[:12]}:"
                    cache = f"{REDIS}?prefix={prefix}"
                    try:
                        if mode == "cached":
                            precompute(v.env, url, models, cache)
                        extra = ["--workers", str(workers)]
                        with serving(v, url, models, cache=cache, extra=extra) as base:
                            wait_for_workers(base, data.user_ids[0], workers)
                            c = args.connections
                            run_wrk({"warm-up": wrk_cmd(base, "/", c, 2, lua, users)})
                            got = run_wrk({"r": wrk_cmd(base, "/", c, args.seconds, lua, users)})
                            results[mode][workers] = got["r"]
                            console.print(
                                f"{mode}, {workers} process(es): {got['r']['rps']:.0f} req/s, "
                                f"p99 {got['r']['p99_ms']:.1f} ms"
                            )
                    finally:
                        drop_prefix(prefix)

    table = Table(
        title=f"wrk, {args.connections} connections, {args.seconds:.0f}s each · "
        f"{v.describe()} · {args.store} · Redis cache · {os.cpu_count()} CPUs"
    )
    for col in ("answers", "processes", "requests", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="right")
    ratios: dict[str, float] = {}
    for mode, runs in results.items():
        for workers, r in runs.items():
            table.add_row(
                mode,
                str(workers),
                str(r["requests"]),
                fmt(r["rps"]),
                fmt(r["p50_ms"], 2),
                fmt(r["p99_ms"], 2),
                str(r["errors"]),
            )
        if 1 in runs and 2 in runs:
            ratios[mode] = runs[2]["rps"] / runs[1]["rps"]
    console.print(table)
    for mode, ratio in ratios.items():
        console.print(f"{mode}: 2 processes / 1 process = {ratio:.2f}× requests/s")
    args.out.write_text(
        json.dumps(
            {
                "config": {k: str(x) if isinstance(x, Path) else x for k, x in vars(args).items()},
                "version": {"ref": v.ref, "commit": v.commit},
                "cpus": os.cpu_count(),
                "results": {m: {str(w): r for w, r in runs.items()} for m, runs in results.items()},
                "ratio_2_over_1": ratios,
            },
            indent=2,
        )
    )
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
