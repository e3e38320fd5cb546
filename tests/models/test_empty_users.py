"""A user the factor models know but who had no training events: no
arbitrary list from an untrained or zero user vector."""

from __future__ import annotations

from functools import cache

import numpy as np
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.models.factorization import ALS, BPR

EMPTY = 4


@cache
def data() -> Dataset:
    ds = load_data("synthetic:users=150,items=80,seed=2").to_dataset()
    return ds.subset((ds.events["user_idx"] != EMPTY).to_numpy())


def test_als_lists_nothing_for_a_user_without_training_events() -> None:
    ds = data()
    als = ALS(factors=8, iterations=4, num_threads=1).fit(ds)
    assert not als.state.user_factors[EMPTY].any()  # every item would score 0
    users = np.array([EMPTY, 0, -1], dtype=np.int64)
    rows = sp.vstack([ds.matrix[EMPTY], ds.matrix[0], ds.matrix[EMPTY]]).tocsr()
    top = als.recommend_batch(users, rows, 5)
    assert (top.items[0] == -1).all() and np.isneginf(top.scores[0]).all()
    assert (top.items[2] == -1).all()  # an unknown user with an empty row: the same
    assert (top.items[1] >= 0).all()  # a user with events is unaffected
    assert np.isneginf(als.score_batch(users[:1], rows[:1])).all()


def test_bpr_user_without_training_events_gets_the_empty_row_fold_in() -> None:
    ds = data()
    bpr = BPR(factors=8, iterations=5, num_threads=1).fit(ds)
    empty_row = sp.csr_matrix((1, ds.n_items), dtype=np.float32)
    known = bpr.score_batch(np.array([EMPTY]), empty_row)
    unknown = bpr.score_batch(np.array([-1]), empty_row)
    # not its random starting vector: the item biases, as for a new user
    np.testing.assert_allclose(known, unknown, rtol=1e-6)
    np.testing.assert_allclose(known[0], bpr.state.item_factors[:, -1], rtol=1e-6)
