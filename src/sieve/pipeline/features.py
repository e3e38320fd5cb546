"""Request → candidates → ranking features: the one code path shared by the
ranker's training set and every live request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sieve.ranking.attributes import AttributeFeatures
from sieve.ranking.features import candidate_features_many
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
    together, as for logged impressions: `sieve.ranking.logged.with_items`).
    Without `items`, the block of one of `featurize_many`."""
    if items is None:
        return featurize_many(
            engine,
            [query],
            blocked,
            exclude_seen=exclude_seen,
            with_features=with_features,
            online=online,
            attributes=attributes,
        )[0]
    req = engine.request(query, exclude_seen=exclude_seen)
    cands = with_items(engine.candidates(req, blocked), items)
    ((_, cands, x),) = _with_features(engine, [req], [cands], with_features, online, attributes)
    rows = positions(items, cands.items)
    cands = Candidates(cands.items[rows], cands.scores[rows], cands.ranks[rows])
    return req, cands, None if x is None else x[rows]


def featurize_many(
    engine: CandidateEngine,
    queries: Sequence[Query],
    blocked: NDArray[np.bool_] | None,
    *,
    exclude_seen: bool = True,
    with_features: bool = True,
    online: OnlineCounters | None = None,
    attributes: AttributeFeatures | None = None,
) -> list[tuple[Request, Candidates, NDArray[np.float32] | None]]:
    """`featurize` of each query of a block: the candidates and the feature
    rows of the block's requests computed together
    (`CandidateEngine.candidates_many`, `candidate_features_many`)."""
    reqs = engine.requests(queries, exclude_seen=exclude_seen)
    cands = engine.candidates_many(reqs, blocked)
    return _with_features(engine, reqs, cands, with_features, online, attributes)


def _with_features(
    engine: CandidateEngine,
    reqs: list[Request],
    cands: list[Candidates],
    with_features: bool,
    online: OnlineCounters | None,
    attributes: AttributeFeatures | None,
) -> list[tuple[Request, Candidates, NDArray[np.float32] | None]]:
    """Each request with its candidates and, when asked and the request has
    something personal, their feature rows."""
    xs: list[NDArray[np.float32] | None] = [None] * len(reqs)
    if with_features:
        personal = [k for k, req in enumerate(reqs) if req.has_signal]
        rows = candidate_features_many(
            engine, [reqs[k] for k in personal], [cands[k] for k in personal], online, attributes
        )
        for k, x in zip(personal, rows, strict=True):
            xs[k] = x
    return list(zip(reqs, cands, xs, strict=True))
