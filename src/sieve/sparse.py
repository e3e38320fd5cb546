"""Row gathers on CSR (or CSC) arrays, for the per-request hot paths.

scipy's fancy row indexing (`m[rows]`) builds a new matrix through several
Python layers and costs ~0.1–0.2 ms a call whatever its size; a live answer
made a dozen of them. These work on the arrays directly, in a few numpy
calls, and return flat (row, column, value) triples that callers reduce
with `np.bincount` or `maximum_at` (`np.maximum.at`, compiled).

`positive_sums` is the weighted sum of some rows, its positive entries only,
in a numba loop over a per-thread scratch row: on a wide matrix (the content
index's 100K-item posting lists) the `np.bincount` it replaces allocated and
filled a dense row, then `np.flatnonzero` scanned it, on every request.
`nonzero_sums` keeps the negative sums too (sparse EASE's scores of a request).
"""

from __future__ import annotations

import threading
from typing import Protocol

import numba
import numpy as np
from numpy.typing import NDArray


class Compressed(Protocol):
    """The arrays of a scipy CSR (rows) or CSC (columns) matrix."""

    indptr: NDArray[np.integer]
    indices: NDArray[np.integer]
    data: NDArray[np.floating]


def gather_rows(
    m: Compressed, rows: NDArray[np.integer], limit: int | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.floating]]:
    """The stored entries of `rows` (of a CSR matrix; columns of a CSC one),
    as (position in `rows`, column, value), row by row in the given order;
    with `limit`, only the first `limit` entries of each row."""
    return _gather_rows(
        m.indptr,
        m.indices,
        m.data,
        np.asarray(rows, dtype=np.int64),
        -1 if limit is None else int(limit),
    )


@numba.njit(cache=True, nogil=True)
def _gather_rows(
    indptr: NDArray[np.integer],
    indices: NDArray[np.integer],
    data: NDArray[np.floating],
    rows: NDArray[np.int64],
    limit: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.floating]]:  # pragma: no cover
    # compiled: the numpy version (repeat, cumsum, arange, fancy indexing) was
    # ten array calls, ~30 µs whatever the size, several times per live answer
    total = 0
    for k in range(rows.shape[0]):
        n = indptr[rows[k] + 1] - indptr[rows[k]]
        total += min(n, limit) if limit >= 0 else n
    which = np.empty(total, dtype=np.int64)
    cols = np.empty(total, dtype=np.int64)
    vals = np.empty(total, dtype=data.dtype)
    t = 0
    for k in range(rows.shape[0]):
        start = indptr[rows[k]]
        end = indptr[rows[k] + 1]
        if limit >= 0 and end - start > limit:
            end = start + limit
        for p in range(start, end):
            which[t] = k
            cols[t] = indices[p]
            vals[t] = data[p]
            t += 1
    return which, cols, vals


def row_sums(
    m: Compressed, rows: NDArray[np.integer], weights: NDArray[np.floating], n_cols: int
) -> NDArray[np.float64]:
    """Σ_k weights[k] · m[rows[k]] as a dense vector of `n_cols`."""
    which, cols, vals = gather_rows(m, rows)
    sums = np.bincount(cols, weights=vals * np.asarray(weights)[which], minlength=n_cols)
    return np.asarray(sums, dtype=np.float64)


def positive_sums(
    m: Compressed,
    rows: NDArray[np.integer],
    weights: NDArray[np.floating],
    n_cols: int,
    limit: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The positive entries of Σ_k weights[k] · m[rows[k]]: (columns in
    ascending order, their sums). With `limit`, only the first `limit`
    entries of each row count. Each sum adds its entries in row order from
    0.0, as `row_sums` (`np.bincount`) does, so the values are the same bits."""
    return _sums(m, rows, weights, n_cols, limit, positive=True)


def nonzero_sums(
    m: Compressed, rows: NDArray[np.integer], weights: NDArray[np.floating], n_cols: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The non-zero entries of Σ_k weights[k] · m[rows[k]] (negative ones
    included), as `positive_sums` finds them: its cost follows the rows'
    entries, where scipy's sparse product clears two catalog-wide arrays
    per call."""
    return _sums(m, rows, weights, n_cols, None, positive=False)


def _sums(
    m: Compressed,
    rows: NDArray[np.integer],
    weights: NDArray[np.floating],
    n_cols: int,
    limit: int | None,
    *,
    positive: bool,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    return _kept_sums(
        m.indptr,
        m.indices,
        m.data,
        np.asarray(rows, dtype=np.int64),
        np.asarray(weights, dtype=np.float64),
        -1 if limit is None else int(limit),
        _scratch(n_cols)[:n_cols],
        positive,
    )


_SCRATCH = threading.local()


def _scratch(n: int) -> NDArray[np.float64]:
    """This thread's zeroed row of at least `n` sums (`_kept_sums` leaves
    it zeroed again)."""
    got: NDArray[np.float64] | None = getattr(_SCRATCH, "row", None)
    if got is None or len(got) < n:
        got = _SCRATCH.row = np.zeros(n)
    return got


@numba.njit(cache=True, nogil=True)
def _kept_sums(
    indptr: NDArray[np.integer],
    indices: NDArray[np.integer],
    data: NDArray[np.floating],
    rows: NDArray[np.int64],
    weights: NDArray[np.float64],
    cap: int,
    sums: NDArray[np.float64],
    positive: bool,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:  # pragma: no cover - compiled
    n = sums.shape[0]
    starts = np.empty(rows.shape[0], dtype=np.int64)  # each row's entries, capped
    ends = np.empty(rows.shape[0], dtype=np.int64)
    total = 0
    for k in range(rows.shape[0]):
        starts[k] = indptr[rows[k]]
        ends[k] = indptr[rows[k] + 1]
        if cap >= 0 and ends[k] - starts[k] > cap:
            ends[k] = starts[k] + cap
        total += ends[k] - starts[k]
    for k in range(rows.shape[0]):
        w = weights[k]
        for p in range(starts[k], ends[k]):
            sums[indices[p]] += data[p] * w
    if total * 64 < n:  # few entries: sorting their columns beats a scan of every column
        touched = np.empty(total, dtype=np.int64)
        t = 0
        for k in range(rows.shape[0]):
            for p in range(starts[k], ends[k]):
                touched[t] = indices[p]
                t += 1
        touched = np.unique(touched)
        keep = np.empty(touched.shape[0], dtype=np.bool_)
        for j in range(touched.shape[0]):
            v = sums[touched[j]]
            keep[j] = v > 0 if positive else v != 0
        cols = touched[keep]
    else:  # many: one scan, without a branch to mispredict (kept when positive)
        found = np.empty(min(total, n) + 1, dtype=np.int64)
        j = 0
        for col in range(n):
            found[j] = col
            j += int(sums[col] > 0) if positive else int(sums[col] != 0)
        cols = found[:j].copy()
    out = np.empty(cols.shape[0], dtype=np.float64)
    for j in range(cols.shape[0]):
        out[j] = sums[cols[j]]
    for k in range(rows.shape[0]):  # the row zeroed again for the next call
        for p in range(starts[k], ends[k]):
            sums[indices[p]] = 0.0
    return cols, out


def maximum_at(
    out: NDArray[np.number], index: NDArray[np.integer], values: NDArray[np.number]
) -> None:
    """`np.maximum.at(out, index, values)`, the same result (a NaN wins, an
    equal value keeps the one already there), compiled: `ufunc.at` costs
    ~0.1 ms a call at a live answer's sizes, and a request makes several
    (the reduction of the triples `gather_rows` returns)."""
    _extreme_at(out, np.asarray(index, dtype=np.int64), values, True)


def minimum_at(
    out: NDArray[np.number], index: NDArray[np.integer], values: NDArray[np.number]
) -> None:
    """`np.minimum.at(out, index, values)`, compiled (see `maximum_at`)."""
    _extreme_at(out, np.asarray(index, dtype=np.int64), values, False)


@numba.njit(cache=True, nogil=True)
def _extreme_at(
    out: NDArray[np.number], index: NDArray[np.int64], values: NDArray[np.number], largest: bool
) -> None:  # pragma: no cover - compiled
    for i in range(index.shape[0]):
        j = index[i]
        v = values[i]
        # as np.maximum / np.minimum: a NaN propagates, a tie keeps out[j]
        if (v > out[j] if largest else v < out[j]) or v != v:
            out[j] = v


__all__ = ["Compressed", "gather_rows", "maximum_at", "minimum_at", "positive_sums", "row_sums"]
