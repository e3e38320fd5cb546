"""EASE's factorisation runs with the BLAS threads bounded (the root of the
~16K-item segfault: OpenBLAS's threaded Cholesky), and its in-place solve
gives the closed form."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.linalg.lapack as lapack
import threadpoolctl

from sieve.data.io import load_data
from sieve.models import ease as ease_module
from sieve.models.ease import EASE
from sieve.models.memory import ModelNotice


def test_factorisation_runs_on_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def spy(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
            seen.append(max(i["num_threads"] for i in blas))
            return fn(*args, **kwargs)

        return wrapped

    fake = SimpleNamespace(
        dpotrf=spy(lapack.dpotrf),
        dpotri=spy(lapack.dpotri),
        spotrf=spy(lapack.spotrf),
        spotri=spy(lapack.spotri),
    )
    monkeypatch.setattr(ease_module, "lapack", fake)
    ds = load_data("synthetic:users=80,items=60,seed=2").to_dataset()
    with threadpoolctl.threadpool_limits(2, "blas"):
        EASE(l2=5.0).fit(ds)
        EASE(l2=5.0, precision="float32").fit(ds)
    assert seen == [1, 1, 1, 1]


def test_in_place_solve_matches_the_closed_form() -> None:
    ds = load_data("synthetic:users=120,items=70,seed=4").to_dataset()
    x = (ds.matrix > 0).astype(np.float64).toarray()
    g = x.T @ x + 7.0 * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    for precision in ("float64", "float32"):
        w = EASE(l2=7.0, precision=precision).fit(ds).state.weights
        assert w.flags.c_contiguous and w.dtype == np.float32
        np.testing.assert_allclose(w, b, atol=1e-4 if precision == "float32" else 1e-6)


def test_sparse_ease_with_every_item_as_neighbour_is_ease() -> None:
    """Regressing each item on all others (every pair co-occurs here) is
    EASE's closed form; fewer neighbours give a sparse approximation."""
    from sieve.models.sparse_ease import SparseEASE

    ds = load_data("synthetic:users=150,items=25,seed=5").to_dataset()
    x = (ds.matrix > 0).toarray()
    assert ((x.T.astype(int) @ x.astype(int)) > 0).all()  # every pair co-occurs
    full = EASE(l2=30.0).fit(ds).state.weights
    sparse = SparseEASE(l2=30.0, neighbours=24, num_threads=1).fit(ds).state.weights.toarray()
    np.testing.assert_allclose(sparse, full, atol=1e-5)
    few = SparseEASE(l2=30.0, neighbours=5, num_threads=1).fit(ds).state.weights
    assert (np.diff(few.tocsc().indptr) <= 5).all() and few.diagonal().sum() == 0


def test_a_catalog_past_the_dense_size_is_fitted_and_says_sparse_ease_scales(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EASE named on a large catalog runs, with a notice (the results
    table's notes) naming the model that scales; not below the size."""
    ds = load_data("synthetic:users=100,items=60,seed=2").to_dataset()
    with pytest.warns(ModelNotice, match="sparse-ease"):
        monkeypatch.setattr(ease_module, "DENSE_MAX_ITEMS", 40)
        assert EASE().fit(ds).state.weights.shape == (60, 60)
    monkeypatch.setattr(ease_module, "DENSE_MAX_ITEMS", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelNotice)
        EASE().fit(ds)
