"""Item-item k-nearest-neighbours (Sarwar et al. 2001; weighting as in `implicit`).

Each item keeps its `k` most similar other items; a user's score for item j is
Σ_i x_ui · s_ij over the items i in their history row, so a user unknown to
the model is scored from the row alone. Similarities:

- `cosine`: s_ij = x_i·x_j / (‖x_i‖‖x_j‖ + shrinkage), x_i the item's column
  of the (binary or weighted) user×item matrix. Shrinkage damps similarities
  that rest on few co-occurrences (Koren 2008).
- `tfidf`: the same cosine on columns re-weighted by sqrt(x)·idf(user), with
  idf(u) = ln(n_items) − ln(1 + n_u): very active users count less.
- `bm25`: the dot product of BM25-weighted columns (implicit's
  `bm25_weight(X.T, K1, B)`), unnormalised as in `implicit.BM25Recommender`;
  shrinkage does not apply to it.

Without shrinkage the neighbour search is `implicit`'s multithreaded
`all_pairs_knn` (the same code as its Cosine/TFIDF/BM25 recommenders); with
shrinkage it is a blocked sparse product whose denominators need the norms.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender, top_k
from sieve.types import ItemList, TopN

#: Dense cells of one block of the shrunk similarity product.
_BLOCK_CELLS = 16_000_000


@dataclasses.dataclass(frozen=True)
class ItemKNNConfig(Config):
    """ItemKNN hyperparameters.

    - `similarity`: "cosine", "tfidf" or "bm25" (see the module docstring).
    - `k`: neighbours kept per item (the item itself is never one).
    - `shrinkage`: added to the cosine denominator (cosine and tfidf only);
      0 gives plain cosine.
    - `binary`: use 0/1 interactions instead of summed event weights, both to
      learn similarities and to score users.
    - `bm25_k1`, `bm25_b`: BM25 term saturation and length normalisation.
    - `num_threads`: threads of the neighbour search (0 = all cores).
    """

    similarity: Literal["cosine", "bm25", "tfidf"] = "cosine"
    k: int = 100
    shrinkage: float = 0.0
    binary: bool = True
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    num_threads: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError("ItemKNNConfig.k must be >= 1")
        if self.shrinkage < 0:
            raise ConfigError("ItemKNNConfig.shrinkage must be >= 0")
        if self.shrinkage > 0 and self.similarity == "bm25":
            raise ConfigError("ItemKNNConfig.shrinkage only applies to cosine and tfidf")
        if self.bm25_k1 < 0:
            raise ConfigError("ItemKNNConfig.bm25_k1 must be >= 0")
        if not 0 <= self.bm25_b <= 1:
            raise ConfigError("ItemKNNConfig.bm25_b must be in [0, 1]")
        if self.num_threads < 0:
            raise ConfigError("ItemKNNConfig.num_threads must be >= 0")


@dataclasses.dataclass(frozen=True)
class ItemKNNState:
    """Row i holds item i's neighbours j with s_ij (zero diagonal)."""

    similarity: sp.csr_matrix


class ItemKNN(Recommender[ItemKNNConfig, ItemKNNState]):
    """Item-item nearest neighbours over co-occurrence similarities."""

    name = "itemknn"
    config_class = ItemKNNConfig
    state_class = ItemKNNState

    def _fit(self, dataset: Dataset) -> ItemKNNState:
        cfg = self.config
        weighted = item_weighting(
            self._rows(dataset.matrix), cfg.similarity, cfg.bm25_k1, cfg.bm25_b
        )
        if cfg.shrinkage > 0:
            sim = _shrunk_cosine_knn(weighted, cfg.k, cfg.shrinkage)
        else:
            from implicit.nearest_neighbours import all_pairs_knn

            if cfg.similarity != "bm25":
                weighted = _unit_columns(weighted)
            # k + 1: implicit counts the item itself among its neighbours
            sim = sp.csr_matrix(
                all_pairs_knn(weighted, cfg.k + 1, show_progress=False, num_threads=cfg.num_threads)
            )
            sim.setdiag(0.0)
            sim.eliminate_zeros()
            sim = _keep_top_k(sim, cfg.k)
        return ItemKNNState(similarity=sp.csr_matrix(sim, dtype=np.float32))

    @property
    def n_items(self) -> int:
        return int(self.state.similarity.shape[0])

    def _rows(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        if self.config.binary:
            rows = sp.csr_matrix((rows > 0), dtype=np.float32)
        return rows

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        scores = self._rows(user_items) @ self.state.similarity
        return np.asarray(scores.toarray(), dtype=np.float32)

    def recommend_batch(
        self,
        users: NDArray[np.int64],
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        exclude_seen: bool = True,
    ) -> TopN:
        """Top-n as in the base class, but only items with a positive score:
        an item that is no stored neighbour of the history has no evidence, so
        rows can be shorter than n (as in implicit's ItemItemRecommender)."""
        top = super().recommend_batch(users, user_items, n, exclude_seen=exclude_seen)
        # items with no path from the history score exactly 0: not recommended
        dead = top.scores <= 0
        return TopN(np.where(dead, -1, top.items), np.where(dead, -np.inf, top.scores))

    def similar_items(self, item: int, n: int = 10) -> ItemList:
        """The item's stored neighbours, most similar first."""
        self._check_items(np.array([item]))
        row = self.state.similarity[item]
        order = np.argsort(-row.data, kind="stable")[:n]
        return ItemList(row.indices[order].astype(np.int64), row.data[order].astype(np.float32))


def item_weighting(
    x: sp.csr_matrix, similarity: str, k1: float = 1.2, b: float = 0.75
) -> sp.csr_matrix:
    """The user×item matrix re-weighted per `similarity`, columns not yet
    normalised: x itself (cosine), sqrt(x)·idf(user) (tfidf) or BM25 (bm25)."""
    x = sp.csr_matrix(x, dtype=np.float64)
    x.eliminate_zeros()
    if similarity == "cosine":
        return x
    if similarity == "tfidf":
        n_items = x.shape[1]
        idf = np.log(n_items) - np.log1p(np.diff(x.indptr))  # per user (row)
        w = x.copy()
        w.data = np.sqrt(w.data) * np.repeat(idf, np.diff(x.indptr))
        return w
    if similarity == "bm25":
        # implicit.nearest_neighbours.bm25_weight(X.T, k1, b).T: items are the
        # documents, users the terms
        xt = sp.csr_matrix(x.T)
        n_docs = xt.shape[0]
        idf = np.log(n_docs) - np.log1p(np.bincount(xt.indices, minlength=xt.shape[1]))
        lengths = np.asarray(xt.sum(axis=1)).ravel()
        avg = lengths.mean() if len(lengths) else 1.0
        length_norm = (1.0 - b) + b * lengths / (avg if avg > 0 else 1.0)
        doc = np.repeat(np.arange(n_docs), np.diff(xt.indptr))
        xt.data = xt.data * (k1 + 1.0) / (k1 * length_norm[doc] + xt.data) * idf[xt.indices]
        return sp.csr_matrix(xt.T)
    raise ValueError(f"unknown similarity {similarity!r}")


def _unit_columns(x: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    out = x.copy()
    out.data = out.data / norms[out.indices]
    return out


def _shrunk_cosine_knn(x: sp.csr_matrix, k: int, shrinkage: float) -> sp.csr_matrix:
    """The k nearest items of each item under x_i·x_j / (‖x_i‖‖x_j‖ + shrinkage),
    x_i the columns of `x`, computed in dense blocks of rows."""
    cols = sp.csc_matrix(x)
    n_items = cols.shape[1]
    norms = np.sqrt(np.asarray(cols.multiply(cols).sum(axis=0)).ravel())
    items_by_users = sp.csr_matrix(cols.T)
    users_by_items = sp.csr_matrix(cols)
    block = max(1, _BLOCK_CELLS // max(1, n_items))
    kk = min(k, n_items - 1)
    rows: list[NDArray[np.int64]] = []
    colsl: list[NDArray[np.int64]] = []
    vals: list[NDArray[np.float32]] = []
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        dots = np.asarray((items_by_users[start:stop] @ users_by_items).toarray(), np.float32)
        denom = norms[start:stop, None] * norms[None, :] + shrinkage
        denom[denom == 0] = 1.0
        sims = (dots / denom).astype(np.float32)
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if kk <= 0:
            continue
        idx, val = top_k(sims, kk)
        keep = (idx >= 0) & (val > 0)
        r = np.repeat(np.arange(start, stop), kk).reshape(-1, kk)
        rows.append(r[keep])
        colsl.append(idx[keep])
        vals.append(val[keep])
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(colsl))),
        shape=(n_items, n_items),
    )


def _keep_top_k(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Trim rows to their k largest entries (ties by column order)."""
    sim = sp.csr_matrix(sim)
    counts = np.diff(sim.indptr)
    if counts.max(initial=0) <= k:
        return sim
    row = np.repeat(np.arange(sim.shape[0]), counts)
    order = np.lexsort((sim.indices, -sim.data, row))
    rank = np.arange(len(order)) - np.repeat(sim.indptr[:-1], counts)
    keep = order[rank < k]
    return sp.csr_matrix((sim.data[keep], (row[keep], sim.indices[keep])), shape=sim.shape)
