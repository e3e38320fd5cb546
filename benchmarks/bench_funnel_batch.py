"""The funnel's offline prediction, batched, against the slowest single model.

MovieLens 100K (or `--data`, any `load_data` spec such as
`synthetic:users=60000,items=5000,events_per_user=15,seed=1`), the core
split (per-user random 75/25, seed 42), top 50 for every test user, in one
process: each single model's `recommend_batch` (EASE, item-kNN, ALS, BPR),
the funnel's `recommend_batch` (blocks of users) and the funnel asked one
`recommend_query` per user (the live path, a block of one) for the first
`--check-users` users (0: all), with the ratio of the batched funnel to the
slowest single model. The two funnel answers are checked equal (items and scores). The batched
funnel is timed in this process alone (`--jobs 1`) and shared among `--jobs`
forked processes (`sieve.forked`; 0, the default: one per core, as `sieve
evaluate` runs it), whose lists are checked equal to the first. `--profile`
prints the batched run's profile. `--lightgbm` also times the batched funnel
with LightGBM's own predictor instead of the compiled trees
(`sieve.ranking.trees`), alternating, and checks the lists equal.

    python benchmarks/bench_funnel_batch.py [--profile] [--users N] [--data SPEC]
        [--check-users N] [--lightgbm] [--jobs N]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sieve import forked
from sieve.data.io import load_data
from sieve.data.split import make_splits
from sieve.models.base import create_model
from sieve.pipeline.funnel import BATCH_BLOCK, Funnel
from sieve.types import TopN

ML100K = "movielens-100k:/work/shared/data/ml-100k"
DEPTH = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", action="store_true", help="profile the batched funnel")
    parser.add_argument("--users", type=int, default=0, help="first N test users (0: all)")
    parser.add_argument("--data", default=ML100K, help="a load_data spec")
    parser.add_argument(
        "--check-users", type=int, default=0, help="users asked one query each (0: all)"
    )
    parser.add_argument(
        "--lightgbm", action="store_true", help="also time LightGBM's own predictor"
    )
    parser.add_argument(
        "--jobs", type=int, default=0, help="processes for the shared run (0: one per core)"
    )
    args = parser.parse_args()
    ds = load_data(args.data).to_dataset()
    print(f"{args.data}: {ds.n_users} users, {ds.n_items} items, {ds.matrix.nnz} interactions")
    (split,) = make_splits(ds, "random:0.75", 42)
    users = split.test_users[: args.users or None]
    history = split.history[users].tocsr()
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name in ("ease", "itemknn", "als", "bpr"):
        model = create_model(name).fit(split.train)
        t, c = time.perf_counter(), time.process_time()
        model.recommend_batch(users, history, DEPTH)
        times[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        print(f"{name}: {times[name]:.2f} s (CPU {cpu[name]:.2f} s)", flush=True)
    t = time.perf_counter()
    funnel = create_model("funnel").fit(split.train)
    assert isinstance(funnel, Funnel)
    print(f"funnel fit: {time.perf_counter() - t:.0f} s", flush=True)
    profile = cProfile.Profile() if args.profile else None
    t, c = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    top = funnel.recommend_batch(users, history, DEPTH)
    if profile is not None:
        profile.disable()
    batched, batched_cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    checked = args.check_users or len(users)
    items = np.full((checked, DEPTH), -1, dtype=np.int64)
    scores = np.full((checked, DEPTH), -np.inf, dtype=np.float32)
    for r, u in enumerate(users[:checked]):
        query = funnel._batch_query(int(u), history, r, DEPTH)
        for k, rec in enumerate(funnel.recommend_query(query)[:DEPTH]):
            items[r, k] = rec.item
            scores[r, k] = rec.score
    per_user = time.perf_counter() - t
    slowest = max(times, key=times.__getitem__)
    t = time.perf_counter()
    with forked.jobs(args.jobs):
        n_jobs = forked.planned_jobs(-(-len(users) // BATCH_BLOCK))
        shared = funnel.recommend_batch(users, history, DEPTH)
    shared_s = time.perf_counter() - t
    same_shared = bool((shared.items == top.items).all() and (shared.scores == top.scores).all())
    print(f"funnel, batched: {batched:.2f} s (CPU {batched_cpu:.2f} s) for {len(users)} users")
    print(f"funnel, batched in {n_jobs} processes: {shared_s:.2f} s, same lists: {same_shared}")
    print(f"funnel, one query per user: {per_user:.2f} s for {checked} users")
    same_items = bool((items == top.items[:checked]).all())
    print(f"same lists: {same_items and bool((scores == top.scores[:checked]).all())}")
    print(f"batched / slowest single model ({slowest}): {batched / times[slowest]:.1f}x")
    print(f"{n_jobs} processes / slowest single model: {shared_s / times[slowest]:.1f}x")
    most = max(cpu, key=cpu.__getitem__)
    print(f"CPU: batched / most CPU of a single model ({most}): {batched_cpu / cpu[most]:.1f}x")
    if args.lightgbm:
        compare_predictors(funnel, users, history, top)
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


def compare_predictors(
    funnel: Funnel, users: NDArray[np.int64], history: sp.csr_matrix, top: TopN
) -> None:
    """The batched funnel with the compiled trees and with `Booster.predict`,
    three times each, alternating: CPU seconds, and whether the lists match."""
    ranker = funnel.state.ranker
    assert ranker is not None and ranker.scorer is not None
    scorer = ranker.scorer
    seconds: dict[str, list[float]] = {"compiled trees": [], "Booster.predict": []}
    same = True
    for _ in range(3):
        for label in seconds:
            ranker.scorer = scorer if label == "compiled trees" else None
            c = time.process_time()
            again = funnel.recommend_batch(users, history, DEPTH)
            seconds[label].append(time.process_time() - c)
            same = same and bool((again.items == top.items).all())
            same = same and bool((again.scores == top.scores).all())
    ranker.scorer = scorer
    for label, values in seconds.items():
        print(f"funnel batched, {label}: CPU " + " / ".join(f"{v:.2f}" for v in values) + " s")
    print(f"same lists with either predictor: {same}")


if __name__ == "__main__":
    main()
