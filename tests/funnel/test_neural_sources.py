"""The funnel's ANN source on a two-tower model (`sources.ann_model`): it
searches the item tower's vectors with the user tower's vector of the
request's interactions, for known and new users alike, and survives
save/load."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.pipeline import Funnel, FunnelConfig
from sieve.types import Query

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs the neural extra (PyTorch)"
)

CONFIG = FunnelConfig.from_dict(
    {
        "sources": {"ann_model": "two-tower", "ease": 0},
        "two_tower": {"dim": 16, "hidden": 16, "epochs": 3},
        "als": {"num_threads": 1, "factors": 8},
        "itemknn": {"num_threads": 1},
        "ranker": {"enabled": False},
    }
)


@cache
def data() -> Dataset:
    return load_data("synthetic:users=200,items=120,seed=3").to_dataset()


@cache
def fitted() -> Funnel:
    return Funnel(CONFIG).fit(data())


def _query(u: int, user: int) -> Query:
    m = data().matrix
    lo, hi = m.indptr[u], m.indptr[u + 1]
    return Query(user=user, history=m.indices[lo:hi].astype(np.int64), n=10)


def test_ann_source_searches_the_two_tower_vectors() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    assert engine.tower is not None
    np.testing.assert_array_equal(
        engine.ann.index.reconstruct_n(0, engine.ann.n_items), engine.tower.item_vectors()
    )
    for user in (5, -1):  # a known user, and the same history as a new user
        req = engine.request(_query(5, user))
        ann = next(p for p in engine.propose(req) if p.source == "ann")
        row = sp.csr_matrix(data().matrix[5])
        scores = engine.tower.score_batch(np.array([user]), row)[0]
        scores[row.indices] = -np.inf
        expected = np.argsort(-scores, kind="stable")[: len(ann.items)]
        assert len(np.intersect1d(ann.items, expected)) >= 0.95 * len(ann.items)


def test_a_two_tower_funnel_saves_and_loads(tmp_path: Path) -> None:
    funnel = fitted()
    loaded = Funnel.load(funnel.save(tmp_path / "f"))
    assert loaded.state.engine.tower is not None
    for u in (0, 7):
        a, b = funnel.recommend_query(_query(u, u)), loaded.recommend_query(_query(u, u))
        assert [r.item for r in a] == [r.item for r in b]
        ra = funnel.state.engine.ann_vector(funnel.state.engine.request(_query(u, u)))
        rb = loaded.state.engine.ann_vector(loaded.state.engine.request(_query(u, u)))
        assert ra is not None and rb is not None
        np.testing.assert_array_equal(ra, rb)
