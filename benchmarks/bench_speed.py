"""Speed of sieve's wrappers against the `implicit` library used directly.

For ALS, BPR and ItemKNN (cosine) on MovieLens 100K (every rating a positive,
a per-user random 75/25 split with seed 42): the time of fit plus batch
top-10 for all users, through sieve and through implicit with the same
hyperparameters and thread count, as the median of several repetitions (the
two sides alternate so that machine load drifts hit both). Targets: each ratio
sieve/implicit ≤ 1.2, and EASE fits 1,682 items in under a second.

    .venv/bin/python benchmarks/bench_speed.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import threadpoolctl
from rich.console import Console
from rich.table import Table

from sieve.data.dataset import Dataset
from sieve.models.ease import EASE
from sieve.models.factorization import ALS, BPR, ALSConfig, BPRConfig
from sieve.models.itemknn import ItemKNN, ItemKNNConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
MAX_RATIO = 1.2
MAX_EASE_SECONDS = 1.0
TOP_N = 10


def load_split(path: Path, seed: int = 42) -> Dataset:
    """The training part of a per-user random 75/25 split of u.data."""
    file = path / "u.data" if path.is_dir() else path
    raw = np.loadtxt(file, dtype=np.int64)
    rng = np.random.default_rng(seed)
    users = raw[:, 0]
    train = np.ones(len(raw), dtype=bool)
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for idx in np.split(order, bounds):
        held = rng.permutation(idx)[: len(idx) // 4]
        train[held] = False
    events = pd.DataFrame(
        {
            "event_id": np.arange(len(raw)).astype(str),
            "user_id": raw[:, 0].astype(str),
            "item_id": raw[:, 1].astype(str),
            "type": "rating",
            "value": raw[:, 2].astype(np.float64),
            "timestamp": raw[:, 3].astype(np.float64),
        }
    )
    return Dataset.from_frames(events).subset(train)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean([len(set(x) & set(y)) / max(1, len(x)) for x, y in zip(a, b, strict=True)])
    )


def bench_pair(
    sieve_run: Callable[[], np.ndarray], direct_run: Callable[[], np.ndarray], repeats: int
) -> tuple[float, float, float]:
    """Median seconds of both sides (after one warm-up each) and the mean
    overlap of their top-10 lists."""
    sieve_run()
    direct_run()
    ts, td = [], []
    for _ in range(repeats):
        t, a = _timed(sieve_run)
        ts.append(t)
        t, b = _timed(direct_run)
        td.append(t)
    return statistics.median(ts), statistics.median(td), _overlap(a, b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-100k folder or u.data")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per side")
    parser.add_argument("--threads", type=int, default=0, help="threads for both sides (0 = all)")
    args = parser.parse_args(argv)
    console = Console(width=110)

    ds = load_split(args.data)
    x = sp.csr_matrix(ds.matrix, dtype=np.float32)
    users = np.arange(ds.n_users)
    console.print(f"{ds}; train interactions {x.nnz}; threads {args.threads or 'all'}")

    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from implicit.nearest_neighbours import CosineRecommender

    als = ALSConfig(num_threads=args.threads)
    bpr = BPRConfig(num_threads=args.threads)
    knn = ItemKNNConfig(num_threads=args.threads)

    def sieve(model_factory: Callable[[], Any]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            model = model_factory().fit(ds)
            return np.asarray(model.recommend_batch(users, ds.matrix, TOP_N).items)

        return run

    def direct_mf(factory: Callable[[], Any]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with threadpoolctl.threadpool_limits(1, "blas"):
                model = factory()
                model.fit(x, show_progress=False)
            ids, _ = model.recommend(users, x, N=TOP_N, filter_already_liked_items=True)
            return np.asarray(ids)

        return run

    def direct_knn() -> np.ndarray:
        # K + 1: implicit counts the item itself among its K neighbours
        model = CosineRecommender(K=knn.k + 1, num_threads=args.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # implicit's own COO→CSR notice
            model.fit(x, show_progress=False)
        ids, _ = model.recommend(users, x, N=TOP_N, filter_already_liked_items=True)
        return np.asarray(ids)

    cases: list[tuple[str, Callable[[], np.ndarray], Callable[[], np.ndarray]]] = [
        (
            f"ALS (factors={als.factors}, iterations={als.iterations})",
            sieve(lambda: ALS(als)),
            direct_mf(
                lambda: AlternatingLeastSquares(
                    factors=als.factors,
                    regularization=als.regularization,
                    alpha=als.alpha,
                    iterations=als.iterations,
                    random_state=als.random_state,
                    num_threads=als.num_threads,
                )
            ),
        ),
        (
            f"BPR (factors={bpr.factors}, iterations={bpr.iterations})",
            sieve(lambda: BPR(bpr)),
            direct_mf(
                lambda: BayesianPersonalizedRanking(
                    factors=bpr.factors,
                    learning_rate=bpr.learning_rate,
                    regularization=bpr.regularization,
                    iterations=bpr.iterations,
                    random_state=bpr.random_state,
                    num_threads=bpr.num_threads,
                )
            ),
        ),
        (f"ItemKNN cosine (k={knn.k})", sieve(lambda: ItemKNN(knn)), direct_knn),
    ]

    table = Table(title=f"fit + top-{TOP_N} for {ds.n_users} users, median of {args.repeats}")
    for col in ("model", "sieve s", "implicit s", "ratio", "top-10 overlap", "target"):
        table.add_column(col, justify="left" if col == "model" else "right")
    ok = True
    for label, run_sieve, run_direct in cases:
        ts, td, overlap = bench_pair(run_sieve, run_direct, args.repeats)
        ratio = ts / td
        passed = ratio <= MAX_RATIO
        ok &= passed
        table.add_row(
            label,
            f"{ts:.3f}",
            f"{td:.3f}",
            f"{ratio:.2f}",
            f"{overlap:.2f}",
            f"[green]≤ {MAX_RATIO}[/]" if passed else f"[red]> {MAX_RATIO}[/]",
        )
    EASE().fit(ds)  # warm-up
    ease_times = [_timed(lambda: EASE().fit(ds))[0] for _ in range(args.repeats)]
    ease_s = statistics.median(ease_times)
    ease_ok = ease_s < MAX_EASE_SECONDS
    ok &= ease_ok
    table.add_row(
        f"EASE fit ({ds.n_items} items)",
        f"{ease_s:.3f}",
        "",
        "",
        "",
        f"[green]< {MAX_EASE_SECONDS} s[/]" if ease_ok else f"[red]≥ {MAX_EASE_SECONDS} s[/]",
    )
    console.print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
