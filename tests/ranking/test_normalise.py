"""A block's z-scores and rank percentiles are NumPy's, request by request."""

from __future__ import annotations

import numpy as np
import pytest

from sieve.ranking.normalise import normalised, pairwise_sum


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_the_pairwise_sum_is_numpys(scale: float) -> None:
    """Every length class of NumPy's pairwise summation (under 8, up to its
    block of 128, halved above, remainders of each size), bit for bit."""
    rng = np.random.default_rng(3)
    for n in [*range(0, 300), 511, 512, 1000, 1031, 4099]:
        v = rng.normal(size=n) * scale
        assert pairwise_sum(v) == np.add.reduce(v), n


def test_each_run_is_normalised_as_numpy_does_it_alone() -> None:
    rng = np.random.default_rng(4)
    lens = np.array([1, 7, 0, 8, 129, 300, 5, 64], dtype=np.int64)
    runs = [rng.normal(size=n) * 10.0 ** rng.integers(-3, 4) for n in lens]
    runs[3][:] = 2.5  # constant: z 0, ranks in order
    runs[5][::7] = runs[5][3]  # ties keep their order
    runs[6] = np.array([np.nan, 1.0, np.nan, 0.5, 2.0])
    runs[7][:6] = [0.0, -0.0, np.inf, -np.inf, 0.0, -0.0]  # equal zeros keep their order
    z, pct = normalised(np.concatenate(runs), lens)
    lo = 0
    for v in runs:
        hi = lo + len(v)
        if hi == lo:
            continue
        sd = float(v.std())
        want_z = (v - v.mean()) / sd if sd > 0 else np.zeros(len(v))
        rank = np.empty(len(v))
        rank[np.argsort(-v, kind="stable")] = np.arange(len(v))
        np.testing.assert_array_equal(z[lo:hi], want_z)
        np.testing.assert_array_equal(pct[lo:hi], rank / max(len(v), 1))
        lo = hi
    assert lo == len(z)
