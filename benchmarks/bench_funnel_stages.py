"""Where the funnel's batched offline prediction spends its time, by stage.

MovieLens 100K, the core split (per-user random 75/25, seed 42), top 50 for
every test user through `Funnel.recommend_batch`, with wall-clock timers
around the stage functions (query building, request normalisation,
candidates, ranking features, the ranker, re-ranking); a stage a version of
the code lacks (the per-request names before blocks, the block names after)
is not timed, so the same script compares two checkouts:

    PYTHONPATH=src python benchmarks/bench_funnel_stages.py
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable
from typing import Any

import sieve.pipeline.ranked as ranked
import sieve.ranking.features as ranking_features
from sieve.data.io import load_data
from sieve.data.split import make_splits
from sieve.models.base import create_model
from sieve.pipeline.funnel import Funnel
from sieve.retrieval.sources import CandidateEngine

ML100K = "movielens-100k:/work/shared/data/ml-100k"
TOTAL: dict[str, float] = collections.defaultdict(float)
STAGES: list[tuple[Any, str, str]] = [
    (Funnel, "_batch_query", "query building"),
    (CandidateEngine, "request", "request"),
    (CandidateEngine, "requests", "request"),
    (CandidateEngine, "candidates", "candidates"),
    (CandidateEngine, "candidates_many", "candidates"),
    (ranking_features, "_base_features", "features"),
    (ranked, "relevance_many", "ranker (boosted trees)"),
    (ranked, "rerank", "re-ranking"),
    (ranked, "rerank_many", "re-ranking"),
]


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTAL[label] += time.perf_counter() - start

    return wrapper


def main() -> None:
    ds = load_data(ML100K).to_dataset()
    (split,) = make_splits(ds, "random:0.75", 42)
    users = split.test_users
    history = split.history[users].tocsr()
    funnel = create_model("funnel").fit(split.train)
    for owner, name, label in STAGES:
        if hasattr(owner, name):
            setattr(owner, name, timed(label, getattr(owner, name)))
    funnel.recommend_batch(users[:50], history[:50], 50)  # warm caches
    TOTAL.clear()
    start = time.perf_counter()
    funnel.recommend_batch(users, history, 50)
    total = time.perf_counter() - start
    parts = "; ".join(f"{k} {v:.2f}" for k, v in TOTAL.items())
    print(f"total {total:.2f} s; {parts}; rest {total - sum(TOTAL.values()):.2f}")


if __name__ == "__main__":
    main()
