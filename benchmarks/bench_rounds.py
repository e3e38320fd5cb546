"""One version under the bounded load for consecutive rounds: does its
throughput fall as the event log grows, or does the machine's?

The same load as `bench_load.py` (6 readers, 2 writers of 10-event batches,
the synthetic demo store, one server process), on one version only, round
after round with no pause, so the log grows by the writers' rate throughout.
Run two versions one after the other to tell a version's decline from the
machine's:

    PYTHONPATH=src python benchmarks/bench_rounds.py --ref HEAD --store sqlite --rounds 4
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from harness import (
    WORKTREE,
    LoadClient,
    checkout,
    demo_data,
    events,
    fresh_store,
    prepare,
    recommendations,
    serving,
    summarize,
    wait_for_model,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ref", default=WORKTREE, help="git ref (default: the working tree)")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    data = demo_data()
    with checkout({"version": args.ref}) as versions, ExitStack() as stack:
        version = versions["version"]
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(fresh_store(args.store, workdir))
        prepare(version, url, workdir / "models", data)
        base = stack.enter_context(serving(version, url, workdir / "models"))
        wait_for_model(base, data.user_ids[0])
        makers = [recommendations(data.user_ids)] * 6 + [
            events(data.user_ids, data.item_ids, 10)
        ] * 2
        for r in range(1, args.rounds + 1):
            samples, elapsed = LoadClient(base, makers, seed=r).run_for(args.seconds)
            s = summarize(samples, elapsed)
            parts = ", ".join(
                f"{k} {e['rps']:.1f}/s p50 {e['p50_ms']:.1f} p99 {e['p99_ms']:.1f} ms"
                for k, e in s["endpoints"].items()
            )
            print(f"{version.ref} {args.store} round {r}: {s['rps']:.1f} req/s ({parts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
