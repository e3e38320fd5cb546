"""The newest events held out, and a funnel's NDCG on them: how `sieve train`
and the retraining worker measure the version they register.

A version is scored on events it never saw: the newest `fraction` of the
snapshot's events by time is held out, the model is fitted on the rest, and
each holdout user with earlier history gets the list the service would
build from that history; NDCG@k counts the holdout items it finds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sieve.data.dataset import Dataset
from sieve.data.schema import UnknownIdError
from sieve.evaluate import metrics as M
from sieve.ranking.query import UserLog

if TYPE_CHECKING:
    from sieve.pipeline import Funnel


def newest_held(data: Dataset, fraction: float) -> np.ndarray:
    """Mask of the events in the newest `fraction` of `data` by timestamp."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the holdout fraction must lie in (0, 1), got {fraction}")
    ts = data.events["timestamp"].to_numpy(np.float64)
    if len(ts) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(ts > np.quantile(ts, 1.0 - fraction), dtype=bool)


def scorable_users(train: Dataset, test: Dataset) -> np.ndarray:
    """Users with events on both sides of the cut: the ones a holdout can score."""
    return np.flatnonzero((test.matrix.getnnz(axis=1) > 0) & (train.matrix.getnnz(axis=1) > 0))


def holdout_ndcg(
    model: Funnel,
    train: Dataset,
    test: Dataset,
    *,
    k: int = 10,
    max_users: int = 1000,
    seed: int = 42,
) -> float:
    """Mean NDCG@k of a funnel on the holdout users' new items, given each
    user's history before the holdout, matched by external ids (the funnel's
    vocabulary need not be the snapshot's); at most `max_users` users, drawn
    with `seed`."""
    users = scorable_users(train, test)
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    if len(users) == 0:
        raise ValueError("the holdout has no user with earlier history to score")
    recs = np.full((len(users), k), -1, dtype=np.int64)
    history = UserLog(train.events)
    for r, u in enumerate(users):
        user_id = str(train.user_ids[u])
        # the request the service would build from the store's events then
        query = model.query(history.events(user_id), user_id, n=k)
        for j, rec in enumerate(model.recommend_query(query)[:k]):
            try:
                recs[r, j] = train.item_index(str(model.item_ids[rec.item]))
            except UnknownIdError:
                recs[r, j] = -1
    relevant = (test.matrix[users] > 0).astype(np.float64).tocsr()
    return float(np.mean(M.ndcg_at_k(recs, relevant, k)))


__all__ = ["holdout_ndcg", "newest_held", "scorable_users"]
