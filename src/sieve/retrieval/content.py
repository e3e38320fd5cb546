"""The content index: TF-IDF rows of every catalog item, searchable by term
posting lists, with a small delta block for items added after training.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.models.content import ContentTFIDF
from sieve.retrieval.candidates import joined
from sieve.sparse import gather_rows, positive_sums, row_sums

#: Cells of the dense (profiles × vocabulary) matrix `cosines_many` looks
#: weights up in; past it, a sorted search of (profile, term) keys.
_DENSE_PROFILES = 1 << 22


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
        self.base_csc = _impact_ordered(sp.csc_matrix(self.base))
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
        or None when the items have no indexed text (the block of one of
        `profiles`)."""
        return self.profiles([items], [weights], n_items)[0]

    def profiles(
        self,
        items: Sequence[NDArray[np.int64]],
        weights: Sequence[NDArray[np.float64]],
        n_items: int,
        terms: int | None = None,
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float64]] | None]:
        """`profile` of each (items, weights) of a block: the block's rows
        gathered at once and every (profile, term) weight summed by one
        `np.bincount` (each the sum of its own entries, in their order). A
        profile is by term; with `terms`, one of more terms keeps its `terms`
        strongest, strongest first, ties by term."""
        out: list[tuple[NDArray[np.int64], NDArray[np.float64]] | None] = [None] * len(items)
        lens = np.array([len(i) for i in items], dtype=np.int64)
        if int(lens.sum()) == 0:
            return out
        flat = joined(items).astype(np.int64, copy=False)
        w = joined(weights)
        owner = np.repeat(np.arange(len(items), dtype=np.int64), lens)
        pos = self.delta_position(n_items)[flat]
        in_delta = pos >= 0
        which, cols, vals = gather_rows(self.base, flat[~in_delta])
        vals = vals * w[~in_delta][which]
        owners = owner[~in_delta][which]
        if in_delta.any():
            d_which, d_cols, d_vals = gather_rows(self.delta, pos[in_delta])
            cols = np.concatenate([cols, d_cols])
            vals = np.concatenate([vals, d_vals * w[in_delta][d_which]])
            owners = np.concatenate([owners, owner[in_delta][d_which]])
        width = int(self.base.shape[1])
        keys, inverse = np.unique(
            cols if len(items) == 1 else owners * width + cols, return_inverse=True
        )
        values = np.bincount(inverse, weights=vals, minlength=len(keys))
        nonzero = values != 0
        keys, values = keys[nonzero], values[nonzero]
        bounds = np.searchsorted(keys, np.arange(len(items) + 1) * width)
        for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            if lo == hi:
                continue
            v = values[lo:hi].copy()
            norm = float(np.sqrt(v @ v))
            if norm == 0:
                continue
            t, v = keys[lo:hi] % width, v / norm
            if terms is not None and len(t) > terms:
                top = np.lexsort((t, -v))[:terms]
                t, v = t[top], v[top]
            out[b] = (t.astype(np.int64), v)
        return out

    def scores(
        self, terms: NDArray[np.int64], weights: NDArray[np.float64], n_items: int
    ) -> NDArray[np.float64]:
        """Cosine of every catalog item with the profile (dense)."""
        out = np.zeros(n_items, dtype=np.float64)
        out[: self.n_base] = row_sums(self.base_csc, terms, weights, self.n_base)
        if len(self.delta_items):
            out[self.delta_items] = self._delta_scores(terms, weights)
        return out

    def top(
        self,
        terms: NDArray[np.int64],
        weights: NDArray[np.float64],
        k: int,
        n_items: int,
        budget: int,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The k items of highest cosine with the profile (positive only),
        best first, reading at most about `budget` postings of the base index.

        Exact when the profile's posting lists hold `budget` entries or
        fewer. Beyond that each term contributes its strongest postings (the
        lists are impact-ordered) up to a common cap that keeps the total
        within the budget; the 4k best partial scores are then re-scored
        exactly from their rows. The cost is bounded whatever the catalog's
        size, as an ANN search is, and misses only items that reach the
        profile through weak postings of every term alike. The block of one
        of `top_many`."""
        return self.top_many([(terms, weights)], [k], n_items, budget)[0]

    def top_many(
        self,
        profiles: Sequence[tuple[NDArray[np.int64], NDArray[np.float64]]],
        ks: Sequence[int],
        n_items: int,
        budget: int,
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float64]]]:
        """`top` of each (profile, k) of a block. Each profile's positive
        scores come from `positive_sums`, each the sum of its own postings in
        their order."""
        empty = (np.empty(0, np.int64), np.empty(0, np.float64))
        out = [empty] * len(profiles)
        csc = self.base_csc
        for b, ((terms, weights), k) in enumerate(zip(profiles, ks, strict=True)):
            if k <= 0 or len(terms) == 0:
                continue
            lens = (csc.indptr[terms + 1] - csc.indptr[terms]).astype(np.int64)
            cap = _water_fill(lens, budget)
            if cap >= int(lens.max(initial=0)):  # exact: every posting read
                found, sums = positive_sums(csc, terms, weights, self.n_base)
                out[b] = self._best(found, sums, terms, weights, k, n_items)
                continue
            found, partial = positive_sums(csc, terms, weights, self.n_base, limit=cap)
            if len(found) > 4 * k:
                found = found[np.argpartition(-partial, 4 * k - 1)[: 4 * k]]
            cos = self.cosines(found, terms, weights, n_items)
            out[b] = self._best(found, cos, terms, weights, k, n_items)
        return out

    def _best(
        self,
        found: NDArray[np.int64],
        scores: NDArray[np.float64],
        terms: NDArray[np.int64],
        weights: NDArray[np.float64],
        k: int,
        n_items: int,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The k best of the `found` items by their `scores` (cosines; the
        delta block's scores replace those of its items), best first."""
        if len(self.delta_items):
            dense = np.zeros(n_items, dtype=np.float64)
            dense[found] = scores
            dense[self.delta_items] = self._delta_scores(terms, weights)
            found = np.union1d(found, self.delta_items[dense[self.delta_items] > 0])
            scores = dense[found]
        if len(found) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            found, scores = found[part], scores[part]
        order = np.argsort(-scores, kind="stable")
        return found[order].astype(np.int64), scores[order]

    def cosines(
        self,
        items: NDArray[np.int64],
        terms: NDArray[np.int64],
        weights: NDArray[np.float64],
        n_items: int,
    ) -> NDArray[np.float64]:
        """Exact cosine of each of `items` with the profile (the rows of those
        items only: what the ranker's content features need); the block of
        one of `cosines_many`."""
        return self.cosines_many([items], [(terms, weights)], n_items)[0]

    def cosines_many(
        self,
        items: Sequence[NDArray[np.int64]],
        profiles: Sequence[tuple[NDArray[np.int64], NDArray[np.float64]]],
        n_items: int,
    ) -> list[NDArray[np.float64]]:
        """`cosines` of each (items, profile) of a block: the block's rows
        gathered at once, each entry's profile weight found among its own
        profile's (request, term) keys."""
        lens = [len(i) for i in items]
        flat = np.concatenate([np.empty(0, np.int64), *items])
        group = np.repeat(np.arange(len(items)), lens)
        width = int(self.base.shape[1])
        if len(profiles) * width <= _DENSE_PROFILES:
            dense = np.zeros((len(profiles), width))
            for b, (t, w) in enumerate(profiles):
                dense[b, t] = w
            flat_profiles = dense.ravel()

            def weight(rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.float64]:
                return flat_profiles[cols if len(profiles) == 1 else rows * width + cols]

        else:  # many profiles over a wide vocabulary: a search of (request, term) keys
            keys = np.concatenate(
                [np.empty(0, np.int64), *(b * width + t for b, (t, _) in enumerate(profiles))]
            )
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            values = np.concatenate([np.empty(0), *(w for _, w in profiles)])[order]

            def weight(rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.float64]:
                if len(keys) == 0:
                    return np.zeros(len(cols))
                at = rows * width + cols
                k = np.minimum(np.searchsorted(keys, at), len(keys) - 1)
                return np.where(keys[k] == at, values[k], 0.0)

        pos = self.delta_position(n_items)[flat]
        out = np.zeros(len(flat), dtype=np.float64)
        for part, rows in (
            (self.base, (pos < 0) & (flat < self.n_base)),
            (self.delta, pos >= 0),
        ):
            if not rows.any():
                continue
            which, cols, vals = gather_rows(part, flat[rows] if part is self.base else pos[rows])
            owner = group[rows][which] if len(profiles) > 1 else which
            out[rows] = np.bincount(
                which, weights=vals * weight(owner, cols), minlength=int(rows.sum())
            )
        bounds = np.cumsum([0, *lens])
        return [out[lo:hi] for lo, hi in itertools.pairwise(bounds)]

    def _delta_scores(
        self, terms: NDArray[np.int64], weights: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        dense = np.zeros(self.delta.shape[1], dtype=np.float64)
        dense[terms] = weights
        return np.asarray(self.delta @ dense, dtype=np.float64)

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


def _impact_ordered(csc: sp.csc_matrix) -> sp.csc_matrix:
    """The same matrix with each column's entries sorted by value, largest
    first (a term's strongest postings lead its list)."""
    col = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    order = np.lexsort((-csc.data, col))
    out = sp.csc_matrix((csc.data[order], csc.indices[order], csc.indptr.copy()), shape=csc.shape)
    out.has_sorted_indices = False  # sorted by impact, not by row: keep scipy from re-sorting
    return out


def _water_fill(lens: NDArray[np.int64], budget: int) -> int:
    """The largest common cap c with Σ min(len, c) ≤ budget (at least 1)."""
    if int(lens.sum()) <= budget:
        return int(lens.max(initial=0))
    ordered = np.sort(lens)
    remaining, left = budget, len(ordered)
    for length in ordered:
        share = remaining // left
        if length > share:
            return max(int(share), 1)
        remaining -= int(length)
        left -= 1
    return int(ordered[-1])
