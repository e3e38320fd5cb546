"""Ranked candidates as served items, and a caller's own list re-ranked.

`served_items` turns ranked candidate positions into `Recommended` items
(their sources, a reason and, when asked, the ranker's largest feature
contributions: LightGBM's `pred_contrib`), for every list the funnel
serves. `rank_items` is `POST /rank`'s funnel side: the caller's items are
the candidates, scored through the same `featurize` as every list.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sieve.pipeline.config import FunnelConfig
from sieve.pipeline.features import featurize
from sieve.pipeline.ranked import relevance
from sieve.pipeline.training import FunnelState
from sieve.ranking.features import base_score
from sieve.realtime.counters import OnlineCounters
from sieve.rerank.explain import explain as explain_items
from sieve.retrieval.candidates import SOURCES, Candidates, Request
from sieve.types import Query, Recommended


def served_items(
    state: FunnelState,
    base_weight: float,
    req: Request,
    cands: Candidates,
    x: NDArray[np.float32] | None,
    positions: NDArray[np.int64],
    scores: NDArray[np.float64],
    explain: bool,
) -> list[Recommended]:
    """The candidates at `positions` as served items: sources, a reason and
    (`explain`, when the ranker scored them) feature contributions, the
    anchoring model's part as `base_score`."""
    reasons = explain_items(state.engine, req, cands, positions)
    ranker = state.ranker
    contributions: list[tuple[tuple[str, float], ...]] = [()] * len(positions)
    if explain and ranker is not None and x is not None and req.has_signal:
        contributions = ranker.contributions(x[positions], base_weight * base_score(x)[positions])
    # plain lists once for the block, not numpy scalars per item and field
    proposed = (~np.isnan(cands.ranks[positions])).tolist()
    source_scores = cands.scores[positions].astype(np.float64).tolist()
    items = cands.items[positions].tolist()
    values = np.asarray(scores, dtype=np.float64).tolist()
    return [
        Recommended(
            item,
            score,
            {name: got for name, on, got in zip(SOURCES, props, row, strict=True) if on},
            reason,
            contrib,
        )
        for item, score, props, row, reason, contrib in zip(
            items, values, proposed, source_scores, reasons, contributions, strict=True
        )
    ]


def rank_items(
    state: FunnelState,
    config: FunnelConfig,
    online: OnlineCounters | None,
    query: Query,
    items: NDArray[np.int64],
    *,
    explain: bool = False,
) -> list[Recommended]:
    """A caller's items (distinct indices) ranked for the query, every one of
    them: the candidates are these items, with what the sources said of
    them, their features from the same `featurize` as every list's (the
    caller's per-item fields in `query.item_fields`). No re-ranking stage
    applies (the caller's list is the answer); with nothing personal (no
    history) or no ranker they are ordered by the source blend, ties in the
    caller's order."""
    items = np.asarray(items, dtype=np.int64)
    if len(items) == 0:
        return []
    req, cands, x = featurize(
        state.engine,
        query,
        None,
        exclude_seen=False,
        with_features=state.ranker is not None,
        online=online,
        attributes=state.attributes,
        items=items,
    )
    scores = relevance(state, config, req, cands, x)
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    base_weight = config.ranker.base_weight
    return served_items(state, base_weight, req, cands, x, order, scores[order], explain)


__all__ = ["rank_items", "relevance", "served_items"]
