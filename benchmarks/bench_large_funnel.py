"""The funnel on a catalog past `ease_max_items`: with and without its EASE source.

Above the cap (10,000 items by default) dense EASE's O(n³) fit is too slow to
run on every retrain, so the funnel either serves its EASE source with sparse
EASE (`sources.ease_large = "sparse"`) or drops it ("off", the default). This
evaluates both funnels, and the single models for reference, in one run of
`sieve.evaluate.protocol.evaluate` (per-user random 80/20 split, seed 42,
NDCG@10 with 95% intervals, each model paired against the first):

    PYTHONPATH=src python benchmarks/bench_large_funnel.py \
        [--data synthetic:users=20000,items=15000,events_per_user=8,seed=2] [--single]
        [--cap N] [--dense]

`--single` adds sparse EASE, ALS and item-kNN alone. `--cap N` sets
`ease_max_items` (so a catalog smaller than the default cap, MovieLens 100K
say, can be put past it) and `--dense` adds the funnel with dense EASE (the
cap raised above the catalog): how much of dense EASE's part the sparse
source keeps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sieve.data.io import load_data
from sieve.data.split import make_splits
from sieve.evaluate.protocol import ModelSpec, evaluate

DEFAULT_DATA = "synthetic:users=20000,items=15000,events_per_user=8,seed=2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA, help="a load_data spec")
    parser.add_argument("--single", action="store_true", help="also the single models")
    parser.add_argument("--cap", type=int, default=None, help="sources.ease_max_items")
    parser.add_argument("--dense", action="store_true", help="also the funnel with dense EASE")
    args = parser.parse_args()
    t = time.perf_counter()
    ds = load_data(args.data).to_dataset()
    print(f"{args.data}: {ds} ({time.perf_counter() - t:.0f} s)", flush=True)
    splits = make_splits(ds, "random:0.8", 42)
    specs = [
        ModelSpec("funnel, ease_large=off (default)", "funnel", _large("off", args.cap)),
        ModelSpec("funnel, ease_large=sparse", "funnel", _large("sparse", args.cap)),
    ]
    if args.dense:
        dense = {"sources": {"ease_max_items": ds.n_items}}
        specs.append(ModelSpec("funnel, dense EASE source", "funnel", dense))
    if args.single:
        specs += [
            ModelSpec("sparse-ease", "sparse-ease"),
            ModelSpec("als", "als"),
            ModelSpec("itemknn", "itemknn"),
        ]
    result = evaluate(ds, splits, specs, k=10, on_step=lambda s: print(s, flush=True), jobs=0)
    print("| model | NDCG@10 (95% CI) | vs first: mean diff, p | fit s | predict s |")
    print("|---|---|---|---|---|")
    for m in result.models:
        s = m.summary["ndcg@10"]
        vs = m.vs_baseline.get("ndcg@10")
        diff = f"{vs.mean_diff:+.4f}, p {vs.p_value:.2g}" if vs is not None else "—"
        print(
            f"| {m.label} | {s.mean:.4f} ({s.low:.4f}–{s.high:.4f}) | {diff} | "
            f"{m.fit_seconds:.1f} | {m.predict_seconds:.1f} |"
        )
    for label, reason in result.failures.items():
        print(f"| {label} | failed: {reason} | | | |")


def _large(choice: str, cap: int | None) -> dict[str, object]:
    sources: dict[str, object] = {"ease_large": choice}
    if cap is not None:
        sources["ease_max_items"] = cap
    return {"sources": sources}


if __name__ == "__main__":
    main()
