"""Latency under 8 concurrent connections, measured by `wrk` (not by Python clients).

One version (`--ref`, default the working tree) gets a fresh store filled with
the synthetic demo data through its API, a model trained by its own `sieve
train`, and one `sieve serve` process. Then, each for `--seconds`:

1. `recommendations`: 8 connections of `GET /recommendations/{user}` for random
   known users (a Lua script reads the user list from a file);
2. `health`: 8 connections of `GET /health` (the server's floor);
3. `mixed`: two wrk processes at once, 7 connections of recommendations and 1
   of `/health`, so /health's latency is measured while the service is busy.

It reports requests/s, p50/p99/max and errors of each. The server runs as the
quickstart demo serves it, with `--precompute` (so, with no writes, every list
comes from the cache); `--no-precompute` measures the live funnel instead.
Goals of issue 9: recommendations p99 < 50 ms and /health p99 < 20 ms at 8
connections. To compare with the old code, run it again with `--ref 541c46a`.

wrk must be installed: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install
wrk`; the script says so and exits 2 if it is missing.

How to run (full version, a few minutes):

    PYTHONPATH=src python benchmarks/bench_wrk.py --seconds 30 --out /tmp/bench_wrk.json

Other options: `--ref REF` (a commit-ish; default the working tree), `--store
postgres`, `--data synthetic:n_users=100000,n_items=100000` (a bigger world).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import (
    WORKTREE,
    checkout,
    demo_data,
    fmt,
    fresh_store,
    prepare,
    serving,
    wait_for_model,
)

console = Console(width=None if sys.stdout.isatty() else 160)

LUA = r"""
-- random known users for GET /recommendations/{user}; prints one JSON line at the end
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
users = {}
function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
  if args[1] then
    for line in io.lines(args[1]) do users[#users + 1] = line end
  end
end
function request()
  if #users == 0 then return wrk.format("GET", wrk.path) end
  return wrk.format("GET", "/recommendations/" .. users[math.random(#users)] .. "?n=10")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def wrk_cmd(
    base: str, path: str, connections: int, seconds: float, lua: Path, users: Path | None
) -> list[str]:
    threads = min(2, connections)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        f"{base}{path}",
    ]
    return cmd + (["--", str(users)] if users else [])


def parse(out: str) -> dict[str, Any]:
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")
    raw = json.loads(m.group(1))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": raw["non2xx"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "raw": raw,
    }


def run_wrk(cmds: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Run the wrk commands at the same time; their parsed results by name."""
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, cmd in cmds.items()
    }
    return {name: parse(p.communicate()[0]) for name, p in procs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ref", default=WORKTREE, help="git ref (default: the working tree)")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--seconds", type=float, default=30.0, help="per measurement")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--data", default="synthetic", help="load_data spec of the demo data")
    ap.add_argument("--cache", default="memory://")
    ap.add_argument(
        "--no-precompute",
        dest="precompute",
        action="store_false",
        help="serve without `--precompute`: live answers only (default: with it, as the "
        "quickstart demo serves; with no writes every answer then comes from the cache)",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_wrk.json"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        console.print(
            "[red]wrk is not installed[/red]: install it with `apt-get install -y wrk` "
            "(Debian/Ubuntu) or `brew install wrk` (macOS), then run this again"
        )
        return 2

    data = demo_data(args.data)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, checkout({"version": args.ref}) as versions:
        v = versions["version"]
        console.print(v.describe())
        workdir = Path(tmp)
        lua = workdir / "recs.lua"
        lua.write_text(LUA)
        users = workdir / "users.txt"
        users.write_text("\n".join(urllib.parse.quote(u, safe="") for u in data.user_ids) + "\n")
        with fresh_store(args.store, workdir) as url:
            took = prepare(v, url, workdir / "models", data)
            console.print(f"store filled and model trained in {took:.0f}s")
            with serving(
                v,
                url,
                workdir / "models",
                cache=args.cache,
                extra=["--precompute"] if args.precompute else [],
            ) as base:
                wait_for_model(base, data.user_ids[0])
                c, s = args.connections, args.seconds
                run_wrk({"warm-up": wrk_cmd(base, "/", c, 2, lua, users)})
                recs = run_wrk({"r": wrk_cmd(base, "/", c, s, lua, users)})
                results["recommendations"] = recs["r"]
                health = run_wrk({"h": wrk_cmd(base, "/health", c, s, lua, None)})
                results["health"] = health["h"]
                mixed = run_wrk(
                    {
                        "r": wrk_cmd(base, "/", max(1, c - 1), s, lua, users),
                        "h": wrk_cmd(base, "/health", 1, s, lua, None),
                    }
                )
                results["mixed: recommendations"] = mixed["r"]
                results["mixed: health"] = mixed["h"]

    table = Table(
        title=f"wrk, {args.connections} connections, {args.seconds:.0f}s each · "
        f"{v.describe()} · {args.store} · "
        f"{'precomputed (cached) answers' if args.precompute else 'live answers'}"
    )
    for col in ("run", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            str(r["requests"]),
            fmt(r["rps"]),
            fmt(r["p50_ms"], 2),
            fmt(r["p90_ms"], 2),
            fmt(r["p99_ms"], 2),
            fmt(r["max_ms"], 2),
            str(r["errors"]),
        )
    console.print(table)
    goals = {
        "recommendations p99 < 50 ms": results["recommendations"]["p99_ms"] < 50,
        "/health p99 < 20 ms": results["health"]["p99_ms"] < 20,
        "/health p99 < 20 ms while recommendations run (mixed)": results["mixed: health"]["p99_ms"]
        < 20,
        "no errors": all(r["errors"] == 0 for r in results.values()),
    }
    for goal, ok in goals.items():
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {goal}")
    args.out.write_text(
        json.dumps(
            {
                "config": {k: str(x) if isinstance(x, Path) else x for k, x in vars(args).items()},
                "version": {"ref": v.ref, "commit": v.commit},
                "results": results,
                "goals": goals,
            },
            indent=2,
        )
    )
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
