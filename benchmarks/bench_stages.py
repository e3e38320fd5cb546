"""Where a live answer's CPU time goes, stage by stage, in one process.

Opens a trained store (the work directory `bench_latency.py` builds, by
default), wraps the live path's stages in timers of the calling thread's CPU
time (`time.thread_time`: what other processes on a shared machine do to the
wall clock does not count) and asks `Service.recommend_user` for --requests
random known users after --warmup others. Prints p50/p99/mean of the whole
answer and each stage's mean per answer (nested stages overlap: `candidates`
includes `content.top` and `ann.search`).

    PYTHONPATH=src python benchmarks/bench_stages.py --workdir /tmp/sieve-latency
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import sieve.pipeline.ranked as ranked
import sieve.pipeline.served as served
import sieve.ranking.features as ranking_features
import sieve.rerank.stages as rerank_stages
import sieve.retrieval.sources as sources
import sieve.serve.live as live
from sieve.pipeline.funnel import Funnel
from sieve.retrieval.ann import AnnIndex
from sieve.retrieval.content import ContentIndex
from sieve.retrieval.sources import CandidateEngine
from sieve.serve.service import Service
from sieve.settings import Settings

console = Console()
TOTAL: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()

#: (owner, attribute, label) of every timed stage
STAGES: list[tuple[Any, str, str]] = [
    (live.LiveAnswers, "user_events", "store read (user's events)"),
    (Funnel, "query", "query builder"),
    (CandidateEngine, "request", "request normalisation"),
    (CandidateEngine, "candidates", "candidates (all sources + merge)"),
    (CandidateEngine, "candidates_many", "candidates (all sources + merge)"),
    (AnnIndex, "search", "  ANN search"),
    (ContentIndex, "top", "  content search"),
    (CandidateEngine, "_charts", "  charts"),
    (CandidateEngine, "knn", "  item-to-item scores"),
    (CandidateEngine, "best_anchors", "  item-to-item anchors"),
    (sources, "merge", "  merge"),
    (sources, "merge_many", "  merge"),
    (ranking_features, "_base_features", "ranking features"),
    (ranking_features, "_put_online", "  online-counter features"),
    (ranked, "relevance_many", "ranker (boosted trees)"),
    (rerank_stages, "_greedy", "re-ranking (greedy slots)"),
    (served, "explain_items", "explanations"),
    (live, "listed", "response items"),
]


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTAL[label] += time.thread_time() - start
            CALLS[label] += 1

    return wrapper


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sieve-latency"))
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.workdir / "sieve.db").exists():
        console.print(f"[red]no store in {args.workdir}[/red]: run bench_latency.py first")
        return 2
    settings = Settings(
        store_url=f"sqlite:///{args.workdir / 'sieve.db'}",
        model_dir=args.workdir / "models",
        cache_url="memory://",
        open_read=True,
    )
    service = Service.open(settings)
    service.flush_counters()
    for owner, name, label in STAGES:
        if hasattr(owner, name):  # a stage another version of the code lacks is not timed
            setattr(owner, name, timed(label, getattr(owner, name)))
    users = np.random.default_rng(args.seed).permutation(
        np.array([str(u) for u in service.funnel.user_ids], dtype=object)
    )[: args.warmup + args.requests]
    for user in users[: args.warmup]:
        service.recommend_user(str(user), 10, log=False)
    TOTAL.clear()
    CALLS.clear()
    cpu = []
    for user in users[args.warmup :]:
        start = time.thread_time()
        service.recommend_user(str(user), 10, log=False)
        cpu.append((time.thread_time() - start) * 1000)
    service.close()
    n = len(cpu)
    table = Table(
        title=f"{args.workdir}: {service.funnel.n_items} items · {n} live answers · CPU ms "
        f"p50 {np.percentile(cpu, 50):.2f}, p99 {np.percentile(cpu, 99):.2f}, "
        f"mean {np.mean(cpu):.2f}"
    )
    table.add_column("stage")
    table.add_column("ms per answer", justify="right")
    table.add_column("calls per answer", justify="right")
    for label in dict.fromkeys(label for _, _, label in STAGES):  # a label per stage, once
        table.add_row(label, f"{TOTAL[label] / n * 1000:.3f}", f"{CALLS[label] / n:.1f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
