"""Recall and speed of the funnel's approximate item index against exact search.

100,000 synthetic items with 64-dimensional ALS-like factors (clustered
tastes, norms growing with popularity as ALS item norms do) and 1,000
user-like queries: recall@100 of `AnnIndex` (HNSW, inner-product metric)
against exact inner-product search (`IndexFlatIP`), and the single-threaded
query times of both. Target: recall@100 >= 0.95.

    .venv/bin/python benchmarks/bench_ann.py            # ALS-like factors
    .venv/bin/python benchmarks/bench_ann.py --random   # i.i.d. Gaussian factors
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from sieve.retrieval.ann import AnnConfig, AnnIndex

TARGET_RECALL = 0.95


def als_like(
    n_items: int, n_queries: int, dim: int, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Item and query factors shaped like ALS output: 200 taste clusters,
    users mixing 1-3 tastes, and item norms growing with popularity with the
    quantiles of 64-factor ALS item norms on MovieLens 100K (10%: 0.06,
    median 0.22, 90%: 0.42, 99%: 0.58, max 0.72)."""
    n_clusters = 200
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    items = centres[rng.integers(0, n_clusters, size=n_items)]
    items = items + 0.3 * rng.normal(size=(n_items, dim))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    quantile = rng.permutation(n_items) / max(n_items - 1, 1)
    norms = np.interp(quantile, [0, 0.1, 0.5, 0.9, 0.99, 1], [0.016, 0.06, 0.22, 0.42, 0.58, 0.72])
    items *= norms[:, None]
    mix = rng.integers(1, 4, size=n_queries)
    queries = np.stack([centres[rng.integers(0, n_clusters, size=m)].sum(axis=0) for m in mix])
    queries += 0.3 * rng.normal(size=queries.shape)
    return items.astype(np.float32), queries.astype(np.float32)


def gaussian(
    n_items: int, n_queries: int, dim: int, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """I.i.d. Gaussian factors: no structure, the hardest case for a graph index."""
    return (
        rng.normal(size=(n_items, dim)).astype(np.float32),
        rng.normal(size=(n_queries, dim)).astype(np.float32),
    )


def per_query_ms(search: object, queries: NDArray[np.float32], k: int) -> NDArray[np.float64]:
    """Milliseconds of each single-query search (one thread)."""
    times = np.empty(len(queries))
    for r, q in enumerate(queries):
        start = time.perf_counter()
        search(q[None, :], k)  # type: ignore[operator]
        times[r] = (time.perf_counter() - start) * 1000
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--random", action="store_true", help="i.i.d. Gaussian factors")
    parser.add_argument("--hnsw-m", type=int, default=AnnConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=AnnConfig.ef_construction)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[AnnConfig.ef_search])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    make = gaussian if args.random else als_like
    items, queries = make(args.items, args.queries, args.dim, rng)

    faiss.omp_set_num_threads(1)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(items)
    truth = exact.search(queries, args.k)[1]
    exact_ms = per_query_ms(exact.search, queries[:200], args.k)

    kind = "Gaussian" if args.random else "ALS-like"
    table = Table(
        title=f"ANN: {args.items:,} items × {args.dim} dims ({kind}), "
        f"{args.queries:,} queries, recall@{args.k} vs exact"
    )
    for col in ("index", "efSearch", "build s", f"recall@{args.k}", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    table.add_row(
        "IndexFlatIP (exact)",
        "-",
        "-",
        "1.0000",
        f"{np.percentile(exact_ms, 50):.3f}",
        f"{np.percentile(exact_ms, 99):.3f}",
    )
    faiss.omp_set_num_threads(2)
    default_recall = None
    start = time.perf_counter()
    config = AnnConfig(
        exact_max_items=0,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search[0],
    )
    index = AnnIndex.build(items, config)
    build_s = time.perf_counter() - start
    for ef in args.ef_search:
        index.config = config.replace(ef_search=ef)
        found = index.search(queries, args.k)[0]
        recall = float(
            np.mean([len(np.intersect1d(f, t)) / args.k for f, t in zip(found, truth, strict=True)])
        )
        if ef == AnnConfig.ef_search:
            default_recall = recall
        ms = per_query_ms(index.search, queries, args.k)
        table.add_row(
            f"HNSW M={args.hnsw_m}",
            str(ef),
            f"{build_s:.1f}",
            f"{recall:.4f}",
            f"{np.percentile(ms, 50):.3f}",
            f"{np.percentile(ms, 99):.3f}",
        )
    Console(width=120).print(table)
    if default_recall is None:
        return 0
    ok = default_recall >= TARGET_RECALL
    Console(width=120).print(
        f"recall@{args.k} at the default efSearch={AnnConfig.ef_search}: {default_recall:.4f}, "
        f"{'meets' if ok else 'misses'} the target {TARGET_RECALL}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
