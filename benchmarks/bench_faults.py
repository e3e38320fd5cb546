"""Frozen dependencies under load: what the service answers while Redis or PostgreSQL hang.

One version (`--ref`, default the working tree) is served with the synthetic
demo data (filled through its API, model trained by its own `sieve train`),
under a steady load, while a dependency is frozen with SIGSTOP for `--freeze`
seconds and then resumed with SIGCONT. Nothing shared is touched:

- `redis`: a PRIVATE `redis-server` on a free port (never the shared one on
  6379) is the service's cache (`--cache redis://…`, every known user's list
  precomputed at start unless --no-precompute); the store is a SQLite file.
  Load: 4 threads of `GET /recommendations/{user}`, 1 of `POST /events`
  (10 events), a `/health` probe every 20 ms.
- `postgres`: the store is a fresh database on the shared PostgreSQL, reached
  through `tcp_proxy.py`, a forwarder in its own process; the proxy is frozen,
  not the server. Cache memory://. Load: 3 threads of recommendations, 1 of
  `POST /events`, 1 of `GET /items/{id}`, 1 of `GET /popular`, the /health probe.

A request belongs to the freeze when it overlaps it (it started before SIGCONT
and ended after SIGSTOP); `before` ended before the freeze, `after` started after
it. Per phase and endpoint it prints requests/s, status codes, p50/p99/max.
Then each expectation of issue 9 with PASS or FAIL:

- Redis frozen: /health p99 < 50 ms; recommendations all answered 200, live
  (not from the cache), each within `--within` seconds (the service's own
  cache timeout plus its normal latency); no request without an answer.
- PostgreSQL frozen: /health and /popular all 200 with p99 < 50 ms; every
  endpoint that needs the database answers 2xx or a clean 503 with
  Retry-After, never another error, each within `--within-db` seconds; writes
  succeed again within 10 s of the resume.

It is a measurement: the exit code is 0 whatever it measured (2 when
redis-server is missing).

How to run (full version, about 3 minutes):

    PYTHONPATH=src python benchmarks/bench_faults.py --freeze 20 --out /tmp/bench_faults.json

Short check: `--freeze 5 --before 5 --after 5`; one fault only: `--fault redis`
or `--fault postgres`; another version: `--ref REF`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from harness import (
    WORKTREE,
    LoadClient,
    Maker,
    Sample,
    Version,
    checkout,
    demo_data,
    events,
    fmt,
    fresh_store,
    item_lookup,
    plain,
    prepare,
    recommendations,
    serving,
    summarize,
    wait_for_model,
)
from sieve.serve.launch import free_port

console = Console(width=None if sys.stdout.isatty() else 160)
PROXY = Path(__file__).with_name("tcp_proxy.py")


@contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of our own on a free port, no persistence; killed afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the private redis-server on port {port} did not start")
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def proxy(target: str = "127.0.0.1:5432") -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`tcp_proxy.py` in its own process; yields it and its port."""
    proc = subprocess.Popen(
        [sys.executable, str(PROXY), "--target", target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"tcp_proxy.py did not start: {line!r}")
        yield proc, int(line.split()[-1])
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def freeze_under_load(
    base: str,
    makers: list[Maker],
    victim: subprocess.Popen[Any],
    *,
    before: float,
    freeze: float,
    after: float,
) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    """Load on, SIGSTOP `victim` after `before` s, SIGCONT after `freeze` s, load
    off `after` s later; samples and durations by phase."""
    timeout = freeze + 40  # long enough to measure a hang, not cut it short
    load = LoadClient(base, makers, timeout=timeout, seed=1)
    probe = LoadClient(base, [plain("health", "/health")], timeout=timeout, seed=2, pause=0.02)
    t0 = time.monotonic()
    load.start()
    probe.start()
    try:
        time.sleep(before)
        t_stop = time.monotonic()
        victim.send_signal(signal.SIGSTOP)
        console.print(f"  SIGSTOP pid {victim.pid} for {freeze:.0f}s")
        time.sleep(freeze)
    finally:
        victim.send_signal(signal.SIGCONT)
    t_cont = time.monotonic()
    console.print(f"  SIGCONT pid {victim.pid}")
    time.sleep(after)
    t_end = time.monotonic()
    samples = load.stop() + probe.stop()
    phases = {
        "before": [s for s in samples if s.end < t_stop],
        "freeze": [s for s in samples if s.start < t_cont and s.end >= t_stop],
        "after": [s for s in samples if s.start >= t_cont],
    }
    seconds = {"before": t_stop - t0, "freeze": t_cont - t_stop, "after": t_end - t_cont}
    return phases, seconds | {"t_stop": t_stop, "t_cont": t_cont}


def phase_table(
    title: str, phases: dict[str, list[Sample]], seconds: dict[str, float]
) -> dict[str, Any]:
    table = Table(title=title)
    for col in ("phase", "endpoint", "n", "req/s", "statuses", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    out = {}
    for phase, samples in phases.items():
        s = summarize(samples, seconds[phase])
        out[phase] = s
        for name, e in s["endpoints"].items():
            statuses = ", ".join(f"{k}×{v}" for k, v in sorted(e["statuses"].items()))
            if e["cached"]:
                statuses += f" ({e['cached']} cached)"
            table.add_row(
                phase,
                name,
                str(e["n"]),
                fmt(e["rps"]),
                statuses,
                fmt(e["p50_ms"]),
                fmt(e["p99_ms"]),
                fmt(e["max_ms"]),
            )
    console.print(table)
    return out


def verdicts(checks: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
    """Print `expected | measured | PASS/FAIL` per expectation."""
    out = []
    for expected, measured, ok in checks:
        tag = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        console.print(f"{tag} expected: {expected} · measured: {measured}")
        out.append({"expected": expected, "measured": measured, "pass": ok})
    return out


def of(phase: list[Sample], endpoint: str) -> list[Sample]:
    return [s for s in phase if s.endpoint == endpoint]


def statuses(samples: list[Sample]) -> str:
    counts: dict[str, int] = {}
    for s in samples:
        key = str(s.status) if s.status else (s.error or "no answer")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())) or "none"


def redis_fault(v: Version, data: Any, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    console.rule("Redis frozen")
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        private_redis(workdir) as (rproc, cache),
        fresh_store("sqlite", workdir) as url,
    ):
        prepare(v, url, workdir / "models-redis", data)
        extra = ["--precompute"] if args.precompute else []
        with serving(v, url, workdir / "models-redis", cache=cache, extra=extra) as base:
            wait_for_model(base, data.user_ids[0])
            makers = [recommendations(data.user_ids)] * 4 + [events(data.user_ids, data.item_ids)]
            phases, secs = freeze_under_load(
                base, makers, rproc, before=args.before, freeze=args.freeze, after=args.after
            )
    table = phase_table(
        f"Redis (private, SIGSTOP {args.freeze:.0f}s) · {v.describe()}", phases, secs
    )
    f = phases["freeze"]
    health = table["freeze"]["endpoints"].get("health", {})
    recs = of(f, "recommendations")
    # started and answered while Redis was stopped (the cache may have answered
    # a request that started before SIGSTOP, or one held up until SIGCONT)
    started = [s for s in recs if s.start >= secs["t_stop"] and s.end < secs["t_cont"]]
    before_recs = table["before"]["endpoints"].get("recommendations", {})
    freeze_recs = table["freeze"]["endpoints"].get("recommendations", {})
    max_ms = max((s.ms for s in recs), default=float("nan"))
    checks = [
        (
            "/health p99 < 50 ms during the freeze",
            f"p99 {fmt(health.get('p99_ms', float('nan')))} ms over {health.get('n', 0)} probes",
            health.get("p99_ms", 1e9) < 50,
        ),
        (
            "recommendations during the freeze: all 200",
            statuses(recs),
            bool(recs) and all(s.status == 200 for s in recs),
        ),
        (
            "recommendations started and answered during the freeze, live (not cached)",
            f"{sum(1 for s in started if s.cached is False)} live, "
            f"{sum(1 for s in started if s.cached)} cached",
            bool(started) and all(s.cached is False for s in started if s.status == 200),
        ),
        (
            f"every recommendation during the freeze within {args.within:.1f}s",
            f"max {fmt(max_ms)} ms",
            bool(recs) and max_ms <= args.within * 1000,
        ),
        (
            "recommendations keep flowing: ≥ 50% of the req/s before the freeze",
            f"{fmt(freeze_recs.get('rps', 0.0))} req/s during vs "
            f"{fmt(before_recs.get('rps', 0.0))} before",
            freeze_recs.get("rps", 0.0) >= 0.5 * before_recs.get("rps", float("inf")),
        ),
        (
            "no request without an answer (client timeout or connection error)",
            f"{sum(1 for p in phases.values() for s in p if s.status == 0)} without",
            all(s.status != 0 for p in phases.values() for s in p),
        ),
    ]
    console.print(f"(writes during the freeze, for information: {statuses(of(f, 'events'))})")
    return {"phases": table, "checks": verdicts(checks)}


def postgres_fault(
    v: Version, data: Any, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    console.rule("PostgreSQL frozen (through a proxy)")
    workdir.mkdir(parents=True, exist_ok=True)
    with proxy() as (pproc, port), fresh_store("postgres", workdir, port=port) as url:
        prepare(v, url, workdir / "models-pg", data)
        with serving(v, url, workdir / "models-pg") as base:
            wait_for_model(base, data.user_ids[0])
            makers = [recommendations(data.user_ids)] * 3 + [
                events(data.user_ids, data.item_ids),
                item_lookup(data.item_ids),
                plain("popular", "/popular"),
            ]
            phases, secs = freeze_under_load(
                base, makers, pproc, before=args.before, freeze=args.freeze, after=args.after
            )
    table = phase_table(
        f"PostgreSQL (proxy SIGSTOP {args.freeze:.0f}s) · {v.describe()}", phases, secs
    )
    f = phases["freeze"]
    checks = []
    for name in ("health", "popular"):
        mine = of(f, name)
        p99 = table["freeze"]["endpoints"].get(name, {}).get("p99_ms", float("nan"))
        checks.append(
            (
                f"/{name} unaffected during the freeze: all 200, p99 < 50 ms",
                f"{statuses(mine)}; p99 {fmt(p99)} ms",
                bool(mine) and all(s.status == 200 for s in mine) and p99 < 50,
            )
        )
    for name in ("events", "item", "recommendations"):
        mine = of(f, name)
        bad = [
            s for s in mine if not (200 <= s.status < 300 or (s.status == 503 and s.retry_after))
        ]
        max_ms = max((s.ms for s in mine), default=float("nan"))
        checks.append(
            (
                f"{name} during the freeze: 2xx or 503 with Retry-After only",
                statuses(mine)
                + (f" ({sum(1 for s in mine if s.status == 503 and not s.retry_after)} 503 "
                   "without Retry-After)" if any(s.status == 503 for s in mine) else ""),
                bool(mine) and not bad,
            )
        )  # fmt: skip
        checks.append(
            (
                f"{name} during the freeze: each answer within {args.within_db:.1f}s",
                f"max {fmt(max_ms)} ms",
                bool(mine) and max_ms <= args.within_db * 1000,
            )
        )
    writes = sorted(of(phases["after"], "events"), key=lambda s: s.start)
    ok_after = [s for s in writes if 200 <= s.status < 300]
    back = ok_after[0].end - secs["t_cont"] if ok_after else float("inf")
    checks.append(
        (
            "writes succeed again within 10 s of the resume",
            f"first 2xx POST /events {fmt(back)} s after SIGCONT",
            back <= 10,
        )
    )
    return {"phases": table, "checks": verdicts(checks)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ref", default=WORKTREE, help="git ref (default: the working tree)")
    ap.add_argument("--fault", action="append", choices=["redis", "postgres"])
    ap.add_argument("--freeze", type=float, default=20.0, help="seconds frozen")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of load before")
    ap.add_argument("--after", type=float, default=10.0, help="seconds of load after")
    ap.add_argument("--within", type=float, default=1.0, help="limit for recommendations, s")
    ap.add_argument("--within-db", type=float, default=5.0, help="limit for DB endpoints, s")
    ap.add_argument("--no-precompute", dest="precompute", action="store_false")
    ap.add_argument("--data", default="synthetic", help="load_data spec of the demo data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_faults.json"))
    args = ap.parse_args()
    faults = args.fault or ["redis", "postgres"]
    if "redis" in faults and shutil.which("redis-server") is None:
        console.print("[red]redis-server is not installed[/red]: `apt-get install -y redis-server`")
        return 2

    data = demo_data(args.data)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, checkout({"version": args.ref}) as versions:
        v = versions["version"]
        console.print(v.describe())
        for fault in faults:
            run = redis_fault if fault == "redis" else postgres_fault
            result[fault] = run(v, data, args, Path(tmp) / fault)
    config = {k: str(x) if isinstance(x, Path) else x for k, x in vars(args).items()}
    args.out.write_text(
        json.dumps({"config": config, "version": v.commit, "faults": result}, indent=2)
    )
    failed = sum(1 for r in result.values() for c in r["checks"] if not c["pass"])
    console.print(f"{failed} expectation(s) not met · written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
