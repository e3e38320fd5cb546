"""Sieve at scale: a synthetic world of N users × M items with E events, stage by stage.

Each stage runs in its own child process (`scale_stages.py`), so its wall time
and peak resident memory (`ru_maxrss` of that child, from `os.wait4`) are its
own: generation, bulk import into the store (SQLite file, or a fresh
PostgreSQL schema with `--store postgres`), training of the funnel, recall@k
of the served HNSW index against exact search, and precomputed lists of a
sample of users into Redis. Then one `sieve serve` replica is started twice:
cold (a fresh Redis prefix: it folds the whole stored log into the online
counters before `/ready`) and warm (a second replica on the folded counters);
each start-up time and resident memory (VmRSS, VmHWM) is measured, and live
latency over a bounded number of requests. Redis memory per user and per item
comes from `MEMORY USAGE` of sampled keys of each kind, times their counts.

A watchdog polls each child's (and the server's) resident memory: past
`--max-rss-gib` it stops the stage, says which, and writes what ran.

    nice -n 19 python benchmarks/bench_scale.py --users 100000 --items 100000
    nice -n 19 python benchmarks/bench_scale.py --users 1000000 --items 1000000 \\
        --events-per-user 15 --workdir /tmp/sieve-scale-1m
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_stages import run_child
from sieve.serve.launch import free_port, start_server, stop_server

console = Console()
TIMING = re.compile(r"app;dur=([0-9.]+)")
GiB = 1024**3


class OutOfMemory(RuntimeError):
    """A stage went past the memory limit and was stopped."""


class Stop(Exception):
    """The run stops early on purpose (`--until`)."""


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes; zeros once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) * 1024 if m else 0
    return out["VmRSS"], out["VmHWM"]


def children() -> list[int]:
    """Pids of this process's direct children (from /proc)."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                pids.append(int(entry.name))
    return pids


class Watchdog(threading.Thread):
    """Polls the resident memory of the processes `pids()` names; kills them
    (SIGKILL) and records why once their sum passes `limit` bytes."""

    def __init__(self, pids: Callable[[], list[int]], limit: int, what: str) -> None:
        super().__init__(daemon=True)
        self.pids, self.limit, self.what = pids, limit, what
        self.peak = 0
        self.tripped: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            pids = self.pids()
            rss = sum(rss_bytes(p)[0] for p in pids)
            self.peak = max(self.peak, rss)
            if rss > self.limit:
                self.tripped = (
                    f"{self.what}: resident memory {rss / GiB:.1f} GiB passed the limit "
                    f"{self.limit / GiB:.1f} GiB; stopped"
                )
                for p in pids:
                    with contextlib.suppress(OSError):
                        os.kill(p, 9)
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_stage(name: str, params_file: Path, limit: int, progress: Progress) -> dict[str, Any]:
    """Run stage `name` in a child; its figures plus wall time and peak RSS."""
    task = progress.add_task(f"{name}", total=None)
    workdir = params_file.parent
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--stage", name, "--params", str(params_file)],
        stderr=(workdir / f"stage-{name}.err").open("wb"),
    )
    dog = Watchdog(lambda: [proc.pid], limit, f"stage {name}")
    dog.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        progress.update(task, description=f"{name} · {rss_bytes(proc.pid)[0] / GiB:.1f} GiB")
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    dog.stop()
    progress.update(task, description=f"{name} · done in {wall:.0f}s", total=1, completed=1)
    if dog.tripped:
        raise OutOfMemory(dog.tripped)
    if proc.returncode != 0:
        err = (workdir / f"stage-{name}.err").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"stage {name} exited with {proc.returncode}: {err}")
    result: dict[str, Any] = json.loads((workdir / f"stage-{name}.json").read_text())
    result["wall_s"] = wall
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # kB on Linux
    return result


def serve_replica(
    p: dict[str, Any], limit: int, what: str, progress: Progress
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start one `sieve serve` and time it until `/ready` answers 200."""
    task = progress.add_task(what, total=None)
    args = ["--store", p["store_url"], "--model-dir", str(Path(p["workdir"]) / "models")]
    args += ["--no-access-log", "--cache", p["cache_url"]]
    dog = Watchdog(children, limit, what)
    dog.start()
    t = time.perf_counter()
    try:
        proc = start_server(
            args,
            port=free_port(),
            env={"SIEVE_OPEN_READ": "true", "SIEVE_OPEN_WRITE": "true"},
            ready_path="/ready",
            timeout=p["ready_timeout"],
        )
    except RuntimeError:
        dog.stop()
        if dog.tripped:
            raise OutOfMemory(dog.tripped) from None
        raise
    ready = time.perf_counter() - t
    dog.stop()
    rss, hwm = rss_bytes(proc.pid)
    progress.update(task, description=f"{what} · ready in {ready:.0f}s", total=1, completed=1)
    return proc, {"ready_s": ready, "rss_bytes": rss, "hwm_bytes": hwm}


def base_url(proc: subprocess.Popen[bytes]) -> str:
    """The loopback URL of a server started by `start_server`."""
    args = proc.args
    assert isinstance(args, list)
    return f"http://127.0.0.1:{args[args.index('--port') + 1]}"


def live_latency(url: str, users: list[str], n_requests: int, list_n: int) -> dict[str, Any]:
    """Bounded sequential load of live `GET /recommendations/{user}`."""
    walls, servers, errors = [], [], 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for u in users[:20]:  # warm-up: connections, lazy imports, page cache
            client.get(f"/recommendations/{u}?n={list_n}")
        for k in range(n_requests):
            user = users[20 + k % max(1, len(users) - 20)]
            t = time.perf_counter()
            r = client.get(f"/recommendations/{user}?n={list_n}")
            walls.append((time.perf_counter() - t) * 1000)
            m = TIMING.search(r.headers.get("server-timing", ""))
            servers.append(float(m.group(1)) if m else float("nan"))
            errors += r.status_code != 200
    return {
        "requests": n_requests,
        "errors": errors,
        "client_p50_ms": float(np.percentile(walls, 50)),
        "client_p99_ms": float(np.percentile(walls, 99)),
        "server_p50_ms": float(np.nanpercentile(servers, 50)),
        "server_p99_ms": float(np.nanpercentile(servers, 99)),
    }


def post_events(url: str, users: list[str], items: list[str]) -> int:
    """One click per sampled user through `POST /events` (sets the users'
    last-event keys and moves their counters, as live traffic does)."""
    stamp = uuid.uuid4().hex[:8]
    batch = [
        {
            "id": f"scale-{stamp}-{k}",
            "user_id": u,
            "item_id": items[k % len(items)],
            "type": "click",
        }
        for k, u in enumerate(users)
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(batch), 500):
            r = client.post("/events", json={"events": batch[start : start + 500]})
            r.raise_for_status()
    return len(batch)


def redis_memory(client: redis.Redis, prefix: str, n_users: int, n_items: int) -> dict[str, Any]:
    """Key counts per kind under `prefix`, `MEMORY USAGE` of up to 300 keys of
    each kind, and the bytes per user and per item they add up to."""
    counts: dict[str, int] = {}
    samples: dict[str, list[bytes]] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        rest = key[len(prefix) :].decode()
        kind = rest.rsplit(":", 1)[0] if ":" in rest else rest  # the key without its id
        counts[kind] = counts.get(kind, 0) + 1
        if len(samples.setdefault(kind, [])) < 300:
            samples[kind].append(key)
    kinds = {}
    for kind, keys in samples.items():
        sizes = [client.memory_usage(k, samples=0) or 0 for k in keys]
        kinds[kind] = {"keys": counts[kind], "mean_bytes": float(np.mean(sizes))}
    user_kinds = ("feat:v2:user", "feat:v2:ucat", "recs", "last_event")
    per_user = {
        k: kinds[k]["mean_bytes"] * kinds[k]["keys"] / n_users for k in user_kinds if k in kinds
    }
    item = kinds.get("feat:v2:item", {"mean_bytes": 0.0, "keys": 0})
    per_item = item["mean_bytes"] * item["keys"] / n_items
    total = sum(v["mean_bytes"] * v["keys"] for v in kinds.values())
    return {
        "kinds": kinds,
        "per_user_bytes": per_user,
        "per_user_counters_bytes": per_user.get("feat:v2:user", 0)
        + per_user.get("feat:v2:ucat", 0),
        "per_precomputed_list_bytes": kinds.get("recs", {}).get("mean_bytes", 0.0),
        "per_item_bytes": per_item,
        "total_sampled_bytes": total,
    }


def store_url(args: argparse.Namespace, schema: str) -> str:
    if args.store == "postgres":
        return f"{args.postgres_url}?schema={schema}"
    return f"sqlite:///{args.workdir / 'sieve.db'}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events-per-user", type=float, default=15.0, help="mean (log-normal)")
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sieve-scale"))
    ap.add_argument("--out", type=Path, help="JSON figures (default: WORKDIR/scale.json)")
    ap.add_argument("--max-rss-gib", type=float, default=16.0, help="memory limit per stage")
    ap.add_argument("--chunk", type=int, default=10_000, help="events per import transaction")
    ap.add_argument("--requests", type=int, default=500, help="live requests (bounded load)")
    ap.add_argument("--recall-users", type=int, default=1000)
    ap.add_argument("--recall-k", type=int, default=100)
    ap.add_argument("--precompute-users", type=int, default=2000)
    ap.add_argument("--event-users", type=int, default=2000, help="users posting one click")
    ap.add_argument("--ready-timeout", type=float, default=3600.0)
    ap.add_argument(
        "--until",
        choices=("generate", "import", "train", "recall"),
        help="stop after this stage (e.g. bulk import throughput alone)",
    )
    ap.add_argument("--keep-redis", action="store_true", help="leave the run's keys in Redis")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--params", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.stage:
        run_child(args.stage, args.params)
        return 0
    run_id = uuid.uuid4().hex[:8]
    schema = f"scale_{run_id}"
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    prefix = f"scale-{run_id}:"
    p: dict[str, Any] = {
        "users": args.users,
        "items": args.items,
        "events_per_user": args.events_per_user,
        "seed": args.seed,
        "workdir": str(args.workdir),
        "store": args.store,
        "schema": schema,
        "store_url": store_url(args, schema),
        "cache_url": f"{args.redis}?prefix={prefix}",
        "chunk": args.chunk,
        "recall_users": args.recall_users,
        "recall_k": args.recall_k,
        "list_n": 10,
        "ready_timeout": args.ready_timeout,
    }
    params_file = args.workdir / "params.json"
    params_file.write_text(json.dumps(p, indent=1))
    out_path = args.out or args.workdir / "scale.json"
    limit = int(args.max_rss_gib * GiB)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "params": {k: v for k, v in p.items() if k != "cache_url"},
        "max_rss_gib": args.max_rss_gib,
        "cpus": os.cpu_count(),
        "stages": {},
    }
    stages = report["stages"]
    client = redis.Redis.from_url(args.redis)
    rng = np.random.default_rng(args.seed)
    width = len(str(args.users - 1))
    users = [f"u{k:0{width}d}" for k in rng.choice(args.users, 5000, replace=args.users < 5000)]
    iwidth = len(str(args.items - 1))
    items = [f"i{k:0{iwidth}d}" for k in rng.choice(args.items, 1000, replace=args.items < 1000)]
    t0 = time.perf_counter()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            for name in ("generate", "import", "train", "recall"):
                stages[name] = run_stage(name, params_file, limit, progress)
                if name == "train":
                    p["model_path"] = stages[name]["model_path"]
                    params_file.write_text(json.dumps(p, indent=1))
                out_path.write_text(json.dumps(report, indent=1))
                if name == args.until:
                    raise Stop(f"stopped after {name} (--until)")
            base_mem = int(client.info("memory")["used_memory"])
            cold, stages["serve_cold"] = serve_replica(p, limit, "serve (cold Redis)", progress)
            servers.append(cold)
            stages["serve_cold"]["redis_used_memory_delta_bytes"] = (
                int(client.info("memory")["used_memory"]) - base_mem
            )
            stages["latency"] = live_latency(base_url(cold), users, args.requests, p["list_n"])
            stop_server(cold)
            servers.remove(cold)
            warm, stages["serve_warm"] = serve_replica(p, limit, "serve (warm Redis)", progress)
            servers.append(warm)
            post_events(base_url(warm), users[: args.event_users], items)
            stop_server(warm)
            servers.remove(warm)
            p["precompute_users"] = users[: args.precompute_users]
            params_file.write_text(json.dumps(p, indent=1))
            stages["precompute"] = run_stage("precompute", params_file, limit, progress)
            stages["redis"] = redis_memory(client, prefix, args.users, args.items)
            stages["redis"]["used_memory_delta_bytes"] = (
                int(client.info("memory")["used_memory"]) - base_mem
            )
        report["outcome"] = "completed"
    except Stop as e:
        report["outcome"] = str(e)
    except OutOfMemory as e:
        report["outcome"] = str(e)
        report["out_of_memory"] = True
        console.print(f"[red]{e}[/red]: the largest stage that ran is in {out_path}")
    finally:
        for s in servers:
            stop_server(s)
        report["total_s"] = time.perf_counter() - t0
        out_path.write_text(json.dumps(report, indent=1))
        if not args.keep_redis:
            for batch in _batches(client.scan_iter(match=f"{prefix}*", count=10_000), 10_000):
                client.delete(*batch)
        if args.store == "postgres":
            report["postgres_schema"] = schema  # left in place for inspection
    print_report(report)
    console.print(f"figures written to {out_path}")
    return 2 if report.get("out_of_memory") else 0


def _batches(it: Any, n: int) -> Any:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def headline(name: str, r: dict[str, Any]) -> str:
    """The one-line figure of a stage in the summary table."""
    if name == "generate":
        return f"{r['events']:,} events"
    if name == "import":
        return f"{r['events_per_s']:,.0f} events/s"
    if name == "train":
        return ", ".join(f"{k}={'on' if v else 'off'}" for k, v in r["fitted"].items())
    if name == "recall":
        return f"recall@{r['k']} {r['recall']:.3f}, ANN p50 {r['ann_p50_ms']:.2f} ms"
    if name.startswith("serve"):
        return f"RSS {r['rss_bytes'] / GiB:.2f} GiB"
    if name == "latency":
        return f"p50 {r['client_p50_ms']:.1f} ms, p99 {r['client_p99_ms']:.1f} ms"
    if name == "precompute":
        return f"{r['precomputed']} lists"
    if name == "redis":
        per_user = sum(r["per_user_bytes"].values())
        return f"{per_user:.0f} B/user, {r['per_item_bytes']:.0f} B/item"
    return ""


def print_report(report: dict[str, Any]) -> None:
    """A Rich table of each stage's time and memory, then the outcome."""
    p, s = report["params"], report["stages"]
    table = Table(title=f"{p['users']:,} users × {p['items']:,} items · store {p['store']}")
    for col in ("stage", "wall s", "peak RSS GiB", "figures"):
        table.add_column(col, justify="right" if col != "figures" else "left")
    for name, r in s.items():
        wall = r.get("wall_s", r.get("ready_s"))
        peak = r.get("peak_rss_bytes", r.get("hwm_bytes"))
        table.add_row(
            name,
            "" if wall is None else f"{wall:.1f}",
            "" if peak is None else f"{peak / GiB:.2f}",
            headline(name, r),
        )
    console.print(table)
    console.print(f"outcome: {report.get('outcome')}; total {report.get('total_s', 0):.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
