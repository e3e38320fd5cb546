"""Request → candidates → ranking features: the one code path shared by the
ranker's training set and every live request."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sieve.ranking.attributes import AttributeFeatures
from sieve.ranking.features import candidate_features
from sieve.ranking.logged import with_items
from sieve.realtime.counters import OnlineCounters
from sieve.retrieval.candidates import Candidates, Request, positions
from sieve.retrieval.sources import CandidateEngine
from sieve.types import Query


def featurize(
    engine: CandidateEngine,
    query: Query,
    blocked: NDArray[np.bool_] | None,
    *,
    exclude_seen: bool = True,
    with_features: bool = True,
    online: OnlineCounters | None = None,
    attributes: AttributeFeatures | None = None,
    items: NDArray[np.int64] | None = None,
) -> tuple[Request, Candidates, NDArray[np.float32] | None]:
    """Request → candidates → ranking features: the one code path shared by
    the ranker's training set (offline) and every live request (online);
    `online`: the counters the online features are read from; `attributes`:
    the funnel's declared attribute features. `items` (a caller's list to
    re-rank): these are the candidates, with what the sources said of them
    (features are computed among the sources' candidates and these items
    together, as for logged impressions: `sieve.ranking.logged.with_items`)."""
    req = engine.request(query, exclude_seen=exclude_seen)
    cands = engine.candidates(req, blocked)
    if items is not None:
        cands = with_items(cands, items)
    x = (
        candidate_features(engine, req, cands, online, attributes)
        if with_features and req.has_signal
        else None
    )
    if items is not None:
        rows = positions(items, cands.items)
        cands = Candidates(
            cands.items[rows], cands.scores[rows], cands.ranks[rows], cands.anchors[rows]
        )
        x = None if x is None else x[rows]
    return req, cands, x
