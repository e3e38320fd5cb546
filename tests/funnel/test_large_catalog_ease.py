"""The funnel's EASE source past `ease_max_items`: sparse EASE can serve it.

Dense EASE's fit is O(n³) in the catalog; above the cap the funnel drops its
EASE source (`ease_large = "off"`, the default). With "sparse" the sparse
model serves it there: these check its proposals, its ranking features,
offline blocks equal to live requests, and save and load.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from sieve.config import ConfigError
from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.models.ease import EASE
from sieve.models.sparse_ease import SparseEASE
from sieve.pipeline import Funnel, FunnelConfig, featurize
from sieve.ranking.features import FEATURE_NAMES
from sieve.retrieval.candidates import SourcesConfig, StoredScores
from sieve.types import Query

SPEC = "synthetic:users=300,items=200,seed=1"
THREADS = {
    "als": {"num_threads": 1},
    "itemknn": {"num_threads": 1},
    "ranker": {"num_threads": 1},
    "sparse_ease": {"num_threads": 1, "neighbours": 48},
}


@cache
def data() -> Dataset:
    return load_data(SPEC).to_dataset()


@cache
def fitted(ease_large: str = "sparse") -> Funnel:
    """A funnel whose catalog (200 items) is over a cap of 100 items."""
    config = FunnelConfig.from_dict(
        {**THREADS, "sources": {"ease_max_items": 100, "ease_large": ease_large}}
    )
    return Funnel(config).fit(data())


def history_query(u: int, n: int = 10) -> Query:
    m = data().matrix
    lo, hi = m.indptr[u], m.indptr[u + 1]
    return Query(
        user=u, history=m.indices[lo:hi].astype(np.int64), history_weights=m.data[lo:hi], n=n
    )


def test_past_the_cap_sparse_ease_serves_the_ease_source() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    assert isinstance(engine.ease, SparseEASE)
    req = engine.request(history_query(3, n=20))
    proposals = {p.source: p for p in engine.propose(req)}
    assert len(proposals["ease"].items) > 0
    # its proposal is the sparse model's own ranking (seen items go at the merge)
    scores = engine.ease.score_batch(np.array([3]), data().matrix[[3]])[0]
    assert proposals["ease"].items[0] == int(np.argmax(scores))
    # and the ranker reads its scores as features
    _, cands, x = featurize(engine, history_query(3, n=20), None)
    assert x is not None
    column = FEATURE_NAMES.index("ease_z")
    assert np.isfinite(x[:, column]).sum() > 0.9 * len(cands)


def test_by_default_past_the_cap_there_is_no_ease_source() -> None:
    assert SourcesConfig().ease_large == "off"
    engine = fitted("off").state.engine
    assert engine.ease is None
    req = engine.request(history_query(3, n=20))
    assert "ease" not in {p.source for p in engine.propose(req)}


def test_a_block_of_requests_gets_each_requests_own_sparse_ease_scores() -> None:
    """The sparse product of a block gives each row the scores of the request
    alone (offline blocks equal live answers)."""
    engine = fitted().state.engine
    queries = [history_query(u) for u in (1, 2, 5, 8, 11)]
    alone = [engine.ease_scores(engine.request(q)) for q in queries]
    dense = engine.ease.score_batch(np.array([1]), data().matrix[[1]])[0]  # type: ignore[union-attr]
    first = alone[0]
    assert isinstance(first, StoredScores)
    np.testing.assert_allclose(first.at(np.arange(len(dense))), dense, rtol=1e-5, atol=1e-6)
    together = engine.ease_scores_many(engine.requests(queries))
    for a, b in zip(alone, together, strict=True):
        assert isinstance(a, StoredScores) and isinstance(b, StoredScores)
        assert np.array_equal(a.items, b.items) and np.array_equal(a.values, b.values)
        # the stored entries are the sparse model's scores, the others 0
        assert (a.values != 0).all()
    funnel = fitted()
    users = np.array([1, 2, 5, 8, 11], dtype=np.int64)
    rows = sp.csr_matrix(data().matrix[users])
    top = funnel.recommend_batch(users, rows, 15)
    for r, u in enumerate(users):
        recs = funnel.recommend_query(funnel._batch_query(int(u), rows, r, 15))
        assert recs and top.items[r].tolist() == [rec.item for rec in recs]


def test_a_saved_funnel_keeps_its_sparse_ease_source(tmp_path: Path) -> None:
    funnel = fitted()
    loaded = Funnel.load(funnel.save(tmp_path / "funnel"))
    assert isinstance(loaded.state.engine.ease, SparseEASE)
    q = history_query(4, n=12)
    assert [r.item for r in loaded.recommend_query(q)] == [
        r.item for r in funnel.recommend_query(q)
    ]


def test_under_the_cap_dense_ease_serves_it() -> None:
    config = FunnelConfig.from_dict({**THREADS, "ranker": {"enabled": False}})
    engine = Funnel(config).fit(data()).state.engine
    assert isinstance(engine.ease, EASE)


def test_an_unknown_large_catalog_choice_is_refused() -> None:
    with pytest.raises(ConfigError, match="ease_large"):
        SourcesConfig(ease_large="dense")  # type: ignore[arg-type]
