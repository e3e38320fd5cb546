"""Request → candidates → ranking features: the one code path shared by the
ranker's training set and every live request."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sieve.ranking.features import candidate_features
from sieve.realtime.counters import OnlineCounters
from sieve.retrieval.candidates import Candidates, Request
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
) -> tuple[Request, Candidates, NDArray[np.float32] | None]:
    """Request → candidates → ranking features: the one code path shared by
    the ranker's training set (offline) and every live request (online);
    `online`: the counters the online features are read from."""
    req = engine.request(query, exclude_seen=exclude_seen)
    cands = engine.candidates(req, blocked)
    x = candidate_features(engine, req, cands, online) if with_features and req.has_signal else None
    return req, cands, x
