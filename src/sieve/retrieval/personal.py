"""Candidate sources read from the user's own and similar users' activity.

- Continuation (`comeback`): the items of the user's session events (the
  query's recent events, latest first) that may come back — a cart left
  behind, the series a viewer is following. Item j scores
  Σ_k weight(type_k) · decay^k over its events k (k = 0 for the latest), a
  type without a weight brings nothing, and an item with an event of a stop
  type (a purchase) never comes back. The source's items are exempt from
  the seen filter; everything else the user saw stays filtered.
- User-to-user (`UserNeighbours`): the users whose ALS vectors have the
  largest cosine with the user's (trained, or folded in from the request),
  found in a FAISS index over the unit user vectors, and each neighbour's
  latest items at training time; an item scores the summed cosine of the
  neighbours holding it. Its cost is one index search of `neighbours` users
  and at most `neighbours × recent_items` entries: bounded per request
  whatever the log's length.
- Session order (`session_sequence`): the session as the sequence a
  sequential model (SASRec) reads, oldest to latest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse

from sieve.retrieval.ann import AnnConfig, AnnIndex
from sieve.sparse import gather_rows


def comeback(
    recent: NDArray[np.int64],
    types: Sequence[str],
    weights: Mapping[str, float],
    decay: float,
    stop: Sequence[str],
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Items of the session that may come back, best first, with their scores
    (see the module doc); `recent` and `types` are latest first."""
    n = min(len(recent), len(types))
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    items = np.asarray(recent[:n], dtype=np.int64)
    kinds = list(types[:n])
    w = np.array([float(weights.get(t, 0.0)) for t in kinds]) * decay ** np.arange(n)
    stopped = {int(i) for i, t in zip(items, kinds, strict=True) if t in stop}
    unique, inverse = np.unique(items, return_inverse=True)
    score = np.bincount(inverse, weights=w, minlength=len(unique))
    keep = (score > 0) & ~np.isin(unique, np.fromiter(stopped, np.int64, len(stopped)))
    unique, score = unique[keep], score[keep]
    order = np.lexsort((unique, -score))
    return unique[order], score[order].astype(np.float32)


def session_sequence(
    recent: NDArray[np.int64],
    types: Sequence[str],
    weights: Mapping[str, float],
    n_items: int,
) -> NDArray[np.int64]:
    """The session's items oldest to latest, each at its latest event, as a
    sequential model was trained on them: events of a type without a
    positive weight (as in the query's history) and items outside the
    model's `n_items` are left out; an event without a type counts. `recent` is latest first."""
    keep = np.array(
        [
            k >= len(types) or not types[k] or weights.get(types[k], 0.0) > 0
            for k in range(len(recent))
        ],
        dtype=bool,
    )
    items = recent[keep & (recent < n_items)] if len(recent) else recent
    _, first = np.unique(items, return_index=True)  # latest occurrence: first in `recent`
    return items[np.sort(first)][::-1].astype(np.int64)


def recent_items(
    user_idx: NDArray[np.int64],
    item_idx: NDArray[np.int64],
    timestamps: NDArray[np.float64],
    n_users: int,
    n_items: int,
    per_user: int,
) -> sparse.csr_matrix:
    """Each user's `per_user` latest distinct items (a users × items CSR of
    ones, rows latest first), from a snapshot's interactions."""
    frame = pd.DataFrame({"u": user_idx, "i": item_idx, "t": timestamps})
    frame = frame.sort_values(["u", "t"], ascending=[True, False], kind="stable")
    frame = frame.drop_duplicates(["u", "i"])
    frame = frame.loc[frame.groupby("u").cumcount() < per_user]
    counts = np.bincount(frame["u"].to_numpy(np.int64), minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    data = np.ones(len(frame), np.float32)
    return sparse.csr_matrix(
        (data, frame["i"].to_numpy(np.int64), indptr), shape=(n_users, n_items)
    )


class UserNeighbours:
    """Similar users' latest items (see the module doc)."""

    def __init__(
        self, user_factors: NDArray[np.floating], recent: sparse.csr_matrix, config: AnnConfig
    ) -> None:
        f = np.asarray(user_factors, dtype=np.float32)
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        self.index = AnnIndex.build(f / np.where(norms > 0, norms, 1.0), config)
        self.recent = recent

    def propose(
        self, vector: NDArray[np.floating], user: int, neighbours: int, fetch: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The `fetch` best items of the `neighbours` users nearest `vector`
        (`user`, the asking user's own row, is skipped; -1: none)."""
        norm = float(np.linalg.norm(vector))
        if norm == 0 or self.index.n_items == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        skip = np.array([user], np.int64) if 0 <= user < self.index.n_items else None
        ids, sims = self.index.search(np.asarray(vector) / norm, neighbours, exclude=skip)
        found = (ids[0] >= 0) & (ids[0] < self.recent.shape[0]) & (sims[0] > 0)
        rows, weight = ids[0][found], sims[0][found].astype(np.float64)
        if len(rows) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        which, items, _ = gather_rows(self.recent, rows)
        if len(items) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        unique, inverse = np.unique(items, return_inverse=True)
        score = np.bincount(inverse, weights=weight[which], minlength=len(unique))
        order = np.lexsort((unique, -score))[:fetch]
        return unique[order].astype(np.int64), score[order].astype(np.float32)


__all__ = ["UserNeighbours", "comeback", "recent_items"]
