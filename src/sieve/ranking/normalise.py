"""A block's model scores as z-scores and rank percentiles, per request.

The ranker reads each source model's score of a candidate as a z-score and
a rank percentile (0 = best) among the request's candidates: comparable
across users and refits, where raw scores drift. Computed request by
request with NumPy (`v.mean()`, `v.std()`, a stable `argsort`), a block of
256 offline requests made ~2,000 small calls per model; here the whole
block is one compiled pass for the moments and one for the ranks.

The numbers are NumPy's, bit for bit, so a list never depends on its
block: the sums are NumPy's pairwise summation of a contiguous float64
array (`pairwise_sum`, as `np.add.reduce` computes it: from 0.0, blocks of
eight partial sums under 128 values, halves above), the mean is the sum
over n, the variance the pairwise sum of the squared deviations over n
(`np.var`), and each request's rows are ranked by a stable sort of −score
mapped to integers in NumPy's float order (−0.0 = 0.0, NaN last), as its
own stable `argsort(-v)` ranks them. `tests/ranking/test_normalise.py`
checks all three against NumPy.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

#: NumPy's pairwise summation block (`PW_BLOCKSIZE`)
_BLOCK = 128


@numba.njit(cache=True, nogil=True)
def _pairwise(a: NDArray[np.float64], lo: int, n: int) -> float:  # pragma: no cover - compiled
    """Σ a[lo:lo + n] in NumPy's pairwise order (its `DOUBLE_pairwise_sum`)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    if n <= _BLOCK:
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        i = 8
        end = n - n % 8
        while i < end:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(a, lo, half) + _pairwise(a, lo + half, n - half)


@numba.njit(cache=True, nogil=True)
def _zscores(
    v: NDArray[np.float64], bounds: NDArray[np.int64], out: NDArray[np.float64]
) -> None:  # pragma: no cover - compiled
    """out[lo:hi] = (v − mean) / std of each group v[lo:hi] (0 where std is 0)."""
    squares = np.empty(len(v))
    for g in range(len(bounds) - 1):
        lo, hi = bounds[g], bounds[g + 1]
        n = hi - lo
        if n == 0:
            continue
        mean = (0.0 + _pairwise(v, lo, n)) / n
        for i in range(lo, hi):
            d = v[i] - mean
            squares[i] = d * d
        sd = np.sqrt((0.0 + _pairwise(squares, lo, n)) / n)
        for i in range(lo, hi):
            out[i] = (v[i] - mean) / sd if sd > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def _ranks(
    keys: NDArray[np.int64], bounds: NDArray[np.int64], out: NDArray[np.float64]
) -> None:  # pragma: no cover - compiled
    """out[lo:hi] = each key's place in its group's stable ascending order."""
    for g in range(len(bounds) - 1):
        lo, hi = bounds[g], bounds[g + 1]
        order = np.argsort(keys[lo:hi], kind="mergesort")  # stable
        for r in range(hi - lo):
            out[lo + order[r]] = r


def pairwise_sum(v: NDArray[np.float64]) -> float:
    """Σ v as `np.add.reduce` sums a contiguous float64 array (for the tests)."""
    a = np.ascontiguousarray(v, dtype=np.float64)
    return float(0.0 + _pairwise(a, 0, len(a)))


def normalised(
    values: NDArray[np.floating], lens: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The z-scores and rank percentiles of `values`, whose consecutive runs of
    `lens` are the requests' candidates: each run as alone (the module doc)."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    bounds = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=bounds[1:])
    z = np.empty(len(v))
    _zscores(v, bounds, z)
    # −v as int64 keys in the same order as NumPy sorts floats: −0.0 and 0.0
    # equal, negatives' bits flipped below the positives', NaN last
    neg = -v + 0.0
    bits = neg.view(np.int64)
    keys = np.where(bits >= 0, bits, bits ^ np.int64(0x7FFF_FFFF_FFFF_FFFF))
    keys[np.isnan(neg)] = np.iinfo(np.int64).max
    rank = np.empty(len(v))
    _ranks(keys, bounds, rank)
    return z, rank / np.repeat(lens, lens)


__all__ = ["normalised", "pairwise_sum"]
