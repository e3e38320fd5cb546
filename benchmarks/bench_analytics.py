"""`GET /dashboard/api/kpis` and a drift check on logs of growing length: time
and process memory, old code against new, each in a fresh process.

    python benchmarks/bench_analytics.py --old /work/main/src --new src \\
        --events 40000 400000

For each size the log is built once per code version (the old schema has no
analytics indexes) in an SQLite file: synthetic events (`sieve.data.synthetic`)
spread over a span that grows with the log (30 days per 40K events, so the
traffic per hour is the same at every size), one served list of 10 slots per
10 events over the same span, and a fixed last hour of 2,000 served lists with
clicks, carts and purchases citing them. Then, in a fresh process per
(code, size, call): the KPI endpoint (60 minutes in 60 s buckets, through the
app's HTTP route with a TestClient) 5 times, or a drift check (a model whose
snapshot holds 90% of the log) 3 times; reported: the first and the median
call's seconds, and the process's resident memory before the first call and
at its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HOUR = 3600.0


def _mem_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(db: Path, n_events: int, now: float) -> None:
    """The log described in the module doc (runs under either code version)."""
    import numpy as np

    from sieve.data.records import Event, Impression, ImpressionItem
    from sieve.data.synthetic import SyntheticConfig, generate
    from sieve.storage import open_store

    span = 30 * 86400 * n_events / 40_000
    n_users = max(100, n_events // 40)
    cfg = SyntheticConfig(
        n_users=n_users,
        n_items=2000,
        events_per_user=40.0,
        start_time=now - span - HOUR,
        span_days=span / 86400,
        seed=7,
    )
    raw, _ = generate(cfg)
    ev = raw.events.head(n_events)
    store = open_store(f"sqlite:///{db}")
    rng = np.random.default_rng(7)
    ts = ev["timestamp"].to_numpy(dtype=np.float64)
    rows = [
        Event(
            id=f"e{k}",
            user_id=str(u),
            item_id=str(i),
            type=str(t),
            timestamp=datetime.fromtimestamp(float(s), UTC),
        )
        for k, (u, i, t, s) in enumerate(
            zip(ev["user_id"], ev["item_id"], ev["type"], ts, strict=True)
        )
    ]
    for k in range(0, len(rows), 20_000):
        store.append_events(rows[k : k + 20_000])
    items = [str(i) for i in raw.items["item_id"]]

    def lists(n: int, lo: float, hi: float, tag: str) -> list[Impression]:
        out = []
        for r in range(n):
            t = float(rng.uniform(lo, hi))
            picks = rng.choice(len(items), size=10, replace=False)
            out.append(
                Impression(
                    request_id=f"{tag}{r}",
                    user_id=f"u{int(rng.integers(n_users))}",
                    timestamp=datetime.fromtimestamp(t, UTC),
                    model_version="v1",
                    items=[
                        ImpressionItem(item_id=items[j], position=p, score=float(rng.normal()))
                        for p, j in enumerate(picks)
                    ],
                )
            )
        return out

    old = lists(n_events // 10, now - span - HOUR, now - HOUR, "old")
    for k in range(0, len(old), 5000):
        store.log_impressions(old[k : k + 5000])
    recent = lists(2000, now - HOUR + 1, now - 1, "new")
    store.log_impressions(recent)
    clicks = []
    for imp in recent:
        for it in imp.items:
            for kind, p in (("click", 0.08), ("cart", 0.03), ("purchase", 0.01)):
                if rng.random() < p:
                    clicks.append(
                        Event(
                            id=f"c{len(clicks)}",
                            user_id=imp.user_id or "u0",
                            item_id=it.item_id,
                            type=kind,
                            request_id=imp.request_id,
                            timestamp=imp.timestamp,
                        )
                    )
    store.append_events(clicks)
    store.close()


def measure(db: Path, what: str, model_dir: Path) -> dict[str, float]:
    """Time the calls in this (fresh) process; memory from /proc/self/status."""
    from sieve.settings import Settings
    from sieve.storage import open_store

    settings = Settings(
        store_url=f"sqlite:///{db}",
        model_dir=model_dir,
        open_read=True,
        drift_check_seconds=0,
        drift_min_impressions=1000,
        model_poll_seconds=0,
    )
    times: list[float] = []
    if what == "kpis":
        from fastapi.testclient import TestClient

        from sieve.serve.app import create_app

        with TestClient(create_app(settings)) as client:
            rss0 = _mem_mb("VmRSS")
            for _ in range(5):
                t0 = time.perf_counter()
                r = client.get("/dashboard/api/kpis", params={"minutes": 60, "bucket_seconds": 60})
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            extra = {"impressions": r.json()["totals"]["impressions"]}
    else:
        from sieve.monitoring.drift import DriftMonitor

        store = open_store(settings.store_url)
        monitor = DriftMonitor(settings, store, version=lambda: "v1")
        rss0 = _mem_mb("VmRSS")
        for _ in range(3):
            t0 = time.perf_counter()
            results = monitor.check()
            times.append(time.perf_counter() - t0)
        extra = {"ran": sum(r.value is not None for r in results)}
    return {
        "first_s": times[0],
        "median_s": statistics.median(times),
        "rss_before_mb": rss0,
        "rss_peak_mb": _mem_mb("VmHWM"),
        **extra,
    }


def _register(model_dir: Path, max_seq: int, created_at: float) -> None:
    folder = model_dir / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": "v1",
        "model": "funnel",
        "created_at": created_at,
        "data": {"max_seq": max_seq},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _child(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())}
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args[4:6]} under {code} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="src folder of the old code")
    p.add_argument("--new", required=True, help="src folder of the new code")
    p.add_argument("--events", type=int, nargs="+", default=[40_000, 400_000])
    p.add_argument("--work", type=Path, default=None, help="folder for the databases")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind = a.child[0]
        if kind == "build":
            build(Path(a.child[1]), int(a.child[2]), float(a.child[3]))
            print("built")
        else:
            print(json.dumps(measure(Path(a.child[1]), kind, Path(a.child[2]))))
        return
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    now = time.time()
    print("| events | code | call | first call s | median s | RSS before MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for n in a.events:
        for label, code in (("old", a.old), ("new", a.new)):
            db = work / f"{label}-{n}.db"
            if not db.exists():
                _child(
                    code, "--old", "-", "--new", "-", "--child", "build", str(db), str(n), str(now)
                )
            import sqlite3

            with sqlite3.connect(db) as conn:
                top = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            models = work / f"models-{label}-{n}"
            if not models.exists():
                _register(models, int(top * 0.9), now - 30 * 86400)
            for call in ("kpis", "drift"):
                r = json.loads(
                    _child(code, "--old", "-", "--new", "-", "--child", call, str(db), str(models))
                )
                print(
                    f"| {n:,} | {label} | {call} | {r['first_s']:.3f} | {r['median_s']:.3f} | "
                    f"{r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
