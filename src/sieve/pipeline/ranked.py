"""Queries → ranked, re-ranked candidate positions: the one path of every
funnel list, for one live request or a block of offline users.

`rank_queries` runs the funnel's stages for a list of queries, each stage
over the whole block: the candidates and features through `featurize_many`
(the same code as the ranker's training set; sources' model outputs, the
merge and the feature columns computed for the block's requests together),
the ranker's scores for all the queries' candidates stacked into ONE
LightGBM call (predictions are per row, so stacking changes no score), the
greedy re-ranking as one slot loop over the block (`rerank_many`), then the
rules' last check. A live request is a block of one; offline top-N
(`Funnel.recommend_batch`) passes blocks of users. Every per-request number
is computed as for the request alone, so a list does not depend on its block.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from numpy.typing import NDArray

from sieve.monitoring.stages import observe_stage  # a no-op until an app listens
from sieve.pipeline.config import FunnelConfig
from sieve.pipeline.features import featurize_many
from sieve.pipeline.training import FunnelState
from sieve.ranking.features import base_score
from sieve.realtime.counters import OnlineCounters
from sieve.rerank.rules import blocked_items, violations
from sieve.rerank.stages import rerank_many
from sieve.retrieval.candidates import SOURCES, Candidates, Request
from sieve.types import Query


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One query's ranked list: its request, candidates and features, the
    served positions into the candidates and their (non-increasing) scores."""

    req: Request
    cands: Candidates
    x: NDArray[np.float32] | None
    positions: NDArray[np.int64]
    scores: NDArray[np.float64]


def rank_queries(
    state: FunnelState,
    config: FunnelConfig,
    online: OnlineCounters | None,
    queries: list[Query],
    *,
    exclude_seen: bool = True,
) -> tuple[list[Ranked], NDArray[np.bool_] | None, float]:
    """Each query's ranked list (see the module doc), the rules' blocked
    items (for the caller's backfill) and the seconds spent re-ranking (the
    caller reports the "rerank" stage with its own part of it). The
    "retrieval" and "ranking" stages are reported to
    `sieve.monitoring.stages` once per answer (each its share of the block)."""

    engine = state.engine
    t0 = time.perf_counter()
    blocked = blocked_items(engine.catalog, config.rerank.rules)
    rows = featurize_many(
        engine,
        queries,
        blocked,
        exclude_seen=exclude_seen,
        with_features=state.ranker is not None,
        online=online,
        attributes=state.attributes,
    )
    t1 = time.perf_counter()
    observe_stage("retrieval", t1 - t0, len(queries))  # candidates and their features
    scored = [len(cands) > 0 for _, cands, _ in rows]
    relevances = relevance_many(state, config, [r for r in rows if len(r[1])])
    t2 = time.perf_counter()
    observe_stage("ranking", t2 - t1, sum(scored))
    kept = [k for k, ok in enumerate(scored) if ok]
    chosen = rerank_many(
        engine,
        [rows[k][0] for k in kept],
        [rows[k][1].items for k in kept],
        relevances,
        [queries[k].n for k in kept],
        config.rerank,
    )
    out: list[Ranked] = []
    done = iter(zip(relevances, chosen, strict=True))
    for (req, cands, x), ok in zip(rows, scored, strict=True):
        if not ok:
            empty = np.empty(0, np.int64)
            out.append(Ranked(req, cands, x, empty, np.empty(0, np.float64)))
            continue
        rel, positions = next(done)
        # the rules were applied when merging; this is the last line of defence
        positions = positions[
            ~violations(cands.items[positions], engine.catalog, blocked, req.exclude)
        ]
        scores = np.minimum.accumulate(rel[positions])
        out.append(Ranked(req, cands, x, positions, scores))
    return out, blocked, time.perf_counter() - t2


def relevance(
    state: FunnelState,
    config: FunnelConfig,
    req: Request,
    cands: Candidates,
    x: NDArray[np.float32] | None,
) -> NDArray[np.float64]:
    """Ranker scores, or the source blend (ranker off, or nothing personal)."""
    return relevance_many(state, config, [(req, cands, x)])[0]


def relevance_many(
    state: FunnelState,
    config: FunnelConfig,
    rows: list[tuple[Request, Candidates, NDArray[np.float32] | None]],
) -> list[NDArray[np.float64]]:
    """`relevance` of each (request, candidates, features): the ranked ones'
    feature rows stacked into one ranker call, each base score computed
    among its own request's candidates."""
    ranker = state.ranker
    out: list[NDArray[np.float64]] = []
    stacked: list[tuple[int, NDArray[np.float32]]] = []  # (row, its features)
    for k, (req, cands, x) in enumerate(rows):
        if ranker is not None and x is not None and req.has_signal:
            stacked.append((k, x))
            out.append(np.empty(0, np.float64))
        else:
            out.append(_blend(config, cands))
    if ranker is not None and stacked:
        xs = [x for _, x in stacked]
        base = config.ranker.base_weight * np.concatenate([base_score(x) for x in xs])
        scores = ranker.predict(np.concatenate(xs), base)
        bounds = np.cumsum([0, *(len(x) for x in xs)])
        for j, (k, _) in enumerate(stacked):
            out[k] = scores[bounds[j] : bounds[j + 1]]
    return out


def _blend(config: FunnelConfig, cands: Candidates) -> NDArray[np.float64]:
    """The sources' reciprocal-rank blend (ranker off, or nothing personal)."""
    blend = config.blend
    weights = np.array([getattr(blend, s) for s in SOURCES])
    fused = np.where(np.isnan(cands.ranks), 0.0, weights / (blend.k + cands.ranks))
    return np.asarray(fused.sum(axis=1), dtype=np.float64)
