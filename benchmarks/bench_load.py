"""Bounded load, two code versions side by side: requests/s and p50/p99 per endpoint.

For each store (SQLite file, PostgreSQL database), each version — `--baseline`
(default 541c46a, the commit before the serving-core rebuild) and `--candidate`
(default the working tree) — gets its own fresh store filled with the same
synthetic demo data through its API, its own model trained by its own
`sieve train`, and its own `sieve serve` process (the two run side by side; only
one is under load at a time). Each round puts on one version, for `--seconds`:

- 6 client threads: `GET /recommendations/{user}` for random known users;
- 2 client threads: `POST /events`, batches of 10 new events (random known
  users and items), so the event log grows by the same amount for both;

both served without precomputed lists. Where a version reports its live
lane's time (`sieve_live_lane_seconds`, `…_cpu_seconds`), a table gives per
round the lane's computations, their mean block, wall and CPU ms each, and
the CPU share of the wall time (the rest waited for the interpreter lock
that the process's other threads held). Each version serves with its own
defaults: since `answer_ttl_seconds` exists, a plain request's live answer is
kept until the user's next event, so a user asked for again before the writers
touch them gets that kept answer (the `cached` column counts them);
`--live-only` sets `SIEVE_ANSWER_TTL_SECONDS=0` so that every recommendation is
a live answer (the serving core's own cost). (`--precompute` serves as the
quickstart demo does: a user's list then comes from the cache until the user's
next event, so the cached share — shown in the table — falls as the writers
touch users, and it depends on how fast each version writes: a confound for
the comparison and for round 3 vs round 1.)

Versions alternate: baseline r1, candidate r1, baseline r2, … It reports per store,
version and round the requests/s overall and per endpoint, p50/p99 per endpoint
and errors; the candidate/baseline ratios of throughput and of recommendations'
p99 (all rounds pooled); and whether the last round's throughput is within 10%
of the first's (it must not fall as the log grows). Goals of issue 9: ≥ 3× the
baseline throughput, recommendations p99 < 50 ms, last round within 10% of round 1.

How to run (full version, about 20 min on the 2-core machine):

    PYTHONPATH=src python benchmarks/bench_load.py --out /tmp/bench_load.json

Short check: `--seconds 5 --rounds 1 --store sqlite`. `--writer-pause S`: each
writer waits S seconds after each answer (the writers' rate then depends
less on how fast a version takes events, and so does the share of the
interpreter left to the readers). Other versions:
`--baseline REF --candidate REF` (any commit-ish; WORKTREE = the files as they are).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import (
    DEFAULT_BASELINE,
    WORKTREE,
    LoadClient,
    Maker,
    checkout,
    demo_data,
    events,
    fmt,
    fresh_store,
    lane_counters,
    lane_figures,
    percentile,
    prepare,
    recommendations,
    serving,
    summarize,
    wait_for_model,
)

console = Console(width=None if sys.stdout.isatty() else 160)
WARMUP_SECONDS = 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref (default %(default)s)")
    ap.add_argument("--candidate", default=WORKTREE, help="git ref (default: the working tree)")
    ap.add_argument("--store", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--seconds", type=float, default=60.0, help="per round and version")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--readers", type=int, default=6)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=10, help="events per POST /events")
    ap.add_argument(
        "--writer-pause",
        type=float,
        default=0.0,
        help="seconds each writer waits after an answer (default 0: back to back)",
    )
    ap.add_argument("--data", default="synthetic", help="load_data spec of the demo data")
    ap.add_argument("--cache", default="memory://", help="cache URL given to both servers")
    ap.add_argument(
        "--precompute",
        action="store_true",
        help="serve with `--precompute`, as the quickstart demo does (default: live answers)",
    )
    ap.add_argument(
        "--live-only",
        action="store_true",
        help="every recommendation live: no kept answers (SIEVE_ANSWER_TTL_SECONDS=0)",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_load.json"))
    args = ap.parse_args()
    stores = args.store or ["sqlite", "postgres"]

    data = demo_data(args.data)
    console.print(
        f"demo data {args.data}: {len(data.items)} items, {len(data.users)} users, "
        f"{len(data.events)} events"
    )
    rows: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str], list[Any]] = {}
    with checkout({"baseline": args.baseline, "candidate": args.candidate}) as versions:
        for v in versions.values():
            console.print(v.describe())
        for store in stores:
            with ExitStack() as stack:
                bases: dict[str, str] = {}
                for label, v in versions.items():
                    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                    url = stack.enter_context(fresh_store(store, workdir))
                    took = prepare(v, url, workdir / "models", data)
                    console.print(
                        f"{store} · {label}: store filled and model trained in {took:.0f}s"
                    )
                    bases[label] = stack.enter_context(
                        serving(
                            v,
                            url,
                            workdir / "models",
                            cache=args.cache,
                            extra=["--precompute"] if args.precompute else [],
                            env={"SIEVE_ANSWER_TTL_SECONDS": "0"} if args.live_only else None,
                        )
                    )
                    wait_for_model(bases[label], data.user_ids[0])
                for r in range(1, args.rounds + 1):
                    for label in versions:
                        readers = [recommendations(data.user_ids)] * args.readers
                        writers = [events(data.user_ids, data.item_ids, args.batch)] * args.writers
                        pace = args.writer_pause
                        run_mixed(bases[label], readers, writers, WARMUP_SECONDS, -r, pace)
                        lane_before = lane_counters(bases[label])
                        samples, elapsed = run_mixed(
                            bases[label], readers, writers, args.seconds, r, pace
                        )
                        s = summarize(samples, elapsed)
                        s["lane"] = lane_figures(lane_before, lane_counters(bases[label]))
                        rows.append({"store": store, "version": label, "round": r, **s})
                        pooled.setdefault((store, label), []).extend(samples)
                        rec = s["endpoints"].get("recommendations", {})
                        console.print(
                            f"{store} · {label} · round {r}: {s['rps']:.0f} req/s, "
                            f"recommendations p99 {fmt(rec.get('p99_ms', float('nan')))} ms, "
                            f"{s['errors']} errors"
                        )

    summary = summarize_runs(rows, pooled, stores, list(versions))
    print_tables(rows, summary)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {k: {"ref": v.ref, "commit": v.commit} for k, v in versions.items()},
        "data": {"items": len(data.items), "users": len(data.users), "events": len(data.events)},
        "rounds": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"written to {args.out}")
    return 0


def run_mixed(
    base: str,
    readers: list[Maker],
    writers: list[Maker],
    seconds: float,
    seed: int,
    writer_pause: float,
) -> tuple[list[Any], float]:
    """Readers back to back and writers `writer_pause` apart, for `seconds`:
    one client when the writers do not pause, else two running together."""
    if not writer_pause:
        return LoadClient(base, readers + writers, seed=seed).run_for(seconds)
    read = LoadClient(base, readers, seed=seed)
    write = LoadClient(base, writers, seed=seed + 1000, pause=writer_pause)
    t0 = time.monotonic()
    read.start()
    write.start()
    time.sleep(seconds)
    samples = read.stop() + write.stop()
    return samples, time.monotonic() - t0


def summarize_runs(
    rows: list[dict[str, Any]],
    pooled: dict[tuple[str, str], list[Any]],
    stores: list[str],
    labels: list[str],
) -> list[dict[str, Any]]:
    """Per store: each version's pooled figures, the ratios and the goals."""
    out = []
    for store in stores:
        entry: dict[str, Any] = {"store": store}
        for label in labels:
            mine = [r for r in rows if r["store"] == store and r["version"] == label]
            if not mine:
                continue
            seconds = sum(r["seconds"] for r in mine)
            rec_samples = [s for s in pooled[(store, label)] if s.endpoint == "recommendations"]
            recs = [s.ms for s in rec_samples]
            first, last = mine[0]["rps"], mine[-1]["rps"]
            entry[label] = {
                "rps": sum(r["n"] for r in mine) / seconds,
                "recommendations_p50_ms": percentile(recs, 50),
                "recommendations_p99_ms": percentile(recs, 99),
                "recommendations_cached_share": (
                    sum(1 for s in rec_samples if s.cached) / len(rec_samples)
                    if rec_samples
                    else 0.0
                ),
                "errors": sum(r["errors"] for r in mine),
                "last_round_over_first": last / first if len(mine) > 1 else None,
                "last_round_within_10pct": abs(last / first - 1) <= 0.10 if len(mine) > 1 else None,
            }
        if "baseline" in entry and "candidate" in entry:
            b, c = entry["baseline"], entry["candidate"]
            entry["throughput_ratio"] = c["rps"] / b["rps"]
            entry["p99_ratio"] = c["recommendations_p99_ms"] / b["recommendations_p99_ms"]
            entry["goals"] = {
                "throughput ≥ 3× baseline": entry["throughput_ratio"] >= 3,
                "recommendations p99 < 50 ms": c["recommendations_p99_ms"] < 50,
                "last round within 10% of round 1": c["last_round_within_10pct"],
                "no errors": c["errors"] == 0,
            }
        out.append(entry)
    return out


def print_tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    table = Table(title="bounded load: one server process, per round")
    cols = (
        "store",
        "version",
        "round",
        "endpoint",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "cached",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        head = [r["store"], r["version"], str(r["round"])]
        table.add_row(*head, "all", fmt(r["rps"]), "", "", str(r["errors"]), "")
        for e, d in r["endpoints"].items():
            cached = f"{d['cached'] / d['n']:.0%}" if e == "recommendations" and d["n"] else ""
            p50, p99 = fmt(d["p50_ms"]), fmt(d["p99_ms"])
            table.add_row("", "", "", e, fmt(d["rps"]), p50, p99, str(d["errors"]), cached)
    console.print(table)

    lanes = [r for r in rows if r.get("lane")]
    if lanes:  # where the version reports its live lane (`sieve_live_lane_*`)
        table = Table(title="the live lane per round: one computation answers a block of requests")
        for col in ("store", "version", "round", "blocks", "mean block", "wall ms", "CPU ms"):
            table.add_column(col, justify="right")
        table.add_column("CPU share of wall", justify="right")
        for r in lanes:
            ln = r["lane"]
            table.add_row(
                r["store"],
                r["version"],
                str(r["round"]),
                f"{ln['computations']:.0f}",
                f"{ln['mean_block']:.2f}",
                fmt(ln["wall_ms"], 2),
                fmt(ln["cpu_ms"], 2),
                f"{ln['cpu_share']:.0%}",
            )
        console.print(table)

    table = Table(title="all rounds pooled: candidate (cand) / baseline (base)")
    for col in (
        "store",
        "base req/s",
        "cand req/s",
        "ratio",
        "base recs p99 ms",
        "cand recs p99 ms",
        "p99 ratio",
        "base last/first",
        "cand last/first",
        "cand cached",
    ):
        table.add_column(col, justify="right")
    for s in summary:
        b, c = s.get("baseline", {}), s.get("candidate", {})

        def stability(d: dict[str, Any]) -> str:
            x = d.get("last_round_over_first")
            if x is None:
                return "– (1 round)"
            return f"{x:.2f} {'ok' if d['last_round_within_10pct'] else '(> 10%)'}"

        table.add_row(
            s["store"],
            fmt(b.get("rps", float("nan"))),
            fmt(c.get("rps", float("nan"))),
            f"{s['throughput_ratio']:.2f}×" if "throughput_ratio" in s else "–",
            fmt(b.get("recommendations_p99_ms", float("nan"))),
            fmt(c.get("recommendations_p99_ms", float("nan"))),
            f"{s['p99_ratio']:.2f}×" if "p99_ratio" in s else "–",
            stability(b),
            stability(c),
            f"{c.get('recommendations_cached_share', 0.0):.0%}",
        )
    console.print(table)
    for s in summary:
        for goal, ok in s.get("goals", {}).items():
            verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
            colour = {"PASS": "green", "FAIL": "red"}.get(verdict, "yellow")
            console.print(f"[{colour}]{verdict}[/{colour}] {s['store']}: candidate {goal}")


if __name__ == "__main__":
    raise SystemExit(main())
