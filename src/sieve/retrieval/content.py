"""The content index: TF-IDF rows of every catalog item, searchable by term
posting lists, with a small delta block for items added after training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.models.content import ContentTFIDF


class ContentIndex:
    """TF-IDF rows of every catalog item, searchable by term posting lists.

    Rows of the training items come from the fitted `ContentTFIDF`; items
    added later (or whose text changed) get rows from its `vectorize` in a
    small delta block, so adding items never rebuilds the big index.
    """

    def __init__(
        self,
        model: ContentTFIDF,
        delta: sp.csr_matrix | None = None,
        delta_items: NDArray[np.int64] | None = None,
    ) -> None:
        self.model = model
        self.base = sp.csr_matrix(model.state.item_matrix, dtype=np.float32)
        self.base_csc = sp.csc_matrix(self.base)
        n_terms = self.base.shape[1]
        self.delta = sp.csr_matrix((0, n_terms), dtype=np.float32) if delta is None else delta
        self.delta_items = np.empty(0, np.int64) if delta_items is None else delta_items
        self._delta_pos = np.full(self.base.shape[0], -1, dtype=np.int64)
        self._delta_pos_dirty = True

    @property
    def n_base(self) -> int:
        return int(self.base.shape[0])

    def delta_position(self, n_items: int) -> NDArray[np.int64]:
        """Per catalog item: its delta row, or -1 (base row)."""
        if self._delta_pos_dirty or len(self._delta_pos) != n_items:
            pos = np.full(n_items, -1, dtype=np.int64)
            pos[self.delta_items] = np.arange(len(self.delta_items))
            self._delta_pos = pos
            self._delta_pos_dirty = False
        return self._delta_pos

    def set_rows(self, items: NDArray[np.int64], documents: list[str], n_items: int) -> None:
        """(Re)index the documents of the given items."""
        if len(items) == 0:
            return
        rows = sp.csr_matrix(self.model.vectorize(documents), dtype=np.float32)
        pos = self.delta_position(n_items)
        old = pos[items] >= 0
        keep = np.ones(len(self.delta_items), dtype=bool)
        keep[pos[items][old]] = False
        self.delta = sp.csr_matrix(sp.vstack([self.delta[keep], rows]), dtype=np.float32)
        self.delta_items = np.concatenate([self.delta_items[keep], items]).astype(np.int64)
        self._delta_pos_dirty = True

    def profile(
        self, items: NDArray[np.int64], weights: NDArray[np.float64], n_items: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
        """The unit-norm weighted mean of the items' rows as (terms, weights),
        or None when the items have no indexed text."""
        if len(items) == 0:
            return None
        pos = self.delta_position(n_items)[items]
        in_delta = pos >= 0
        base_items = items[~in_delta]
        total = (
            sp.csr_matrix(
                (weights[~in_delta], (np.zeros(len(base_items), np.int64), base_items)),
                shape=(1, self.n_base),
            )
            @ self.base
        )
        if in_delta.any():
            total = (
                total
                + sp.csr_matrix(
                    (weights[in_delta], (np.zeros(int(in_delta.sum()), np.int64), pos[in_delta])),
                    shape=(1, self.delta.shape[0]),
                )
                @ self.delta
            )
        total = sp.csr_matrix(total)
        if total.nnz == 0:
            return None
        values = total.data.astype(np.float64)
        norm = float(np.sqrt(values @ values))
        if norm == 0:
            return None
        return total.indices.astype(np.int64), values / norm

    def scores(
        self, terms: NDArray[np.int64], weights: NDArray[np.float64], n_items: int
    ) -> NDArray[np.float64]:
        """Cosine of every catalog item with the profile (dense)."""
        sub = self.base_csc[:, terms]
        out = np.zeros(n_items, dtype=np.float64)
        col = np.repeat(np.arange(len(terms)), np.diff(sub.indptr))
        out[: self.n_base] = np.bincount(
            sub.indices, weights=sub.data * weights[col], minlength=self.n_base
        )
        if len(self.delta_items):
            dense = np.zeros(self.delta.shape[1], dtype=np.float64)
            dense[terms] = weights
            out[self.delta_items] = self.delta @ dense
        return out

    def save(self, path: Path) -> None:
        d = self.delta
        np.savez(
            path,
            data=d.data,
            indices=d.indices,
            indptr=d.indptr,
            shape=np.array(d.shape),
            items=self.delta_items,
        )

    @classmethod
    def load(cls, model: ContentTFIDF, path: Path) -> ContentIndex:
        z = np.load(path, allow_pickle=False)
        delta = sp.csr_matrix(
            (z["data"], z["indices"], z["indptr"]), shape=tuple(int(x) for x in z["shape"])
        )
        return cls(model, delta, z["items"].astype(np.int64))
