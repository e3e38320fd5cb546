"""EASE: embarrassingly shallow autoencoder (Steck, WWW 2019).

Closed form: with G = XᵀX + λI and P = G⁻¹, the item-item weights are
B = I − P · diag(1/diag(P)), i.e. B_ij = −P_ij / P_jj off the diagonal and 0
on it. Scores are x_u · B, so a user unknown to the model is scored from the
history row alone (fold-in is free).

Memory and safety: the Gram matrix is filled block by block into one dense
array, factorised and inverted in place (LAPACK potrf + potri), and the
weights are derived in that same array, so the peak is one n_items² array
(plus a float32 copy when solving in float64). The fit estimates it first:
with `precision = "auto"` it solves in float64 when that fits the memory
budget and in float32 (half the memory; rankings agree to within noise)
otherwise, saying so with a `ModelNotice`; when neither fits it refuses with
the estimate and the budget (`MemoryBudgetError`) before allocating — the
`sparse-ease` model scales past that. The factorisation runs with the BLAS thread
pool bounded to one thread: OpenBLAS's threaded Cholesky (potrf's parallel
path) has crashed the process with a segmentation fault on ~16K-item Gram
matrices, and on a loaded machine one thread is not slower.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp
import threadpoolctl
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender
from sieve.models.memory import MemoryBudgetError, ModelNotice, current_budget, format_bytes

#: Dense Gram cells filled per block (bounds the temporary of the sparse product).
_GRAM_BLOCK_CELLS = 8_000_000
#: Threads the factorisation may use (see the module docstring).
FACTOR_THREADS = 1
#: The catalog size up to which dense EASE is a sound default: its fit is
#: O(n³) on one thread (10,000 items: about a minute; 30,000: nine). Past it
#: `sieve evaluate`'s default models take sparse EASE, and the funnel's EASE
#: source (`ease_max_items`) is dropped or served by sparse EASE (`ease_large`).
DENSE_MAX_ITEMS = 10_000


@dataclasses.dataclass(frozen=True)
class EASEConfig(Config):
    """EASE hyperparameters.

    - `l2`: the ridge penalty λ added to the Gram diagonal; larger values
      shrink weights and favour popular items less aggressively.
    - `binary`: use 0/1 interactions instead of summed event weights.
    - `precision`: "float64", "float32", or "auto" (float64 when it fits the
      memory budget, else float32).
    """

    l2: float = 400.0
    binary: bool = True
    precision: Literal["auto", "float64", "float32"] = "auto"

    def validate(self) -> None:
        if self.l2 <= 0:
            raise ConfigError("EASEConfig.l2 must be > 0")
        if self.precision not in ("auto", "float64", "float32"):
            raise ConfigError("EASEConfig.precision must be auto, float64 or float32")


@dataclasses.dataclass(frozen=True)
class EASEState:
    weights: NDArray[np.float32]  # items × items, zero diagonal


class EASE(Recommender[EASEConfig, EASEState]):
    """Item-item linear model with a closed-form solution."""

    name = "ease"
    config_class = EASEConfig
    state_class = EASEState

    @staticmethod
    def peak_bytes(n_items: int, precision: str) -> int:
        """The fit's peak: the n² solve array (+ the float32 weights when
        solving in float64) + one Gram block's temporaries."""
        n2 = n_items * n_items
        block = 3 * min(_GRAM_BLOCK_CELLS, n2) * 8
        return n2 * 12 + block if precision == "float64" else n2 * 4 + block

    def _precision(self, n_items: int) -> str:
        """The precision that fits (see the module docstring); raises if none does."""
        wanted = self.config.precision
        budget = current_budget()
        if wanted != "auto":
            need = self.peak_bytes(n_items, wanted)
            if need > budget:
                raise MemoryBudgetError(self.name, need, budget, self._memory_hint())
            return wanted
        if self.peak_bytes(n_items, "float64") <= budget:
            return "float64"
        need = self.peak_bytes(n_items, "float32")
        if need > budget:
            raise MemoryBudgetError(self.name, need, budget, self._memory_hint())
        warnings.warn(
            f"ease: the float64 solve needs {format_bytes(self.peak_bytes(n_items, 'float64'))}, "
            f"over the memory budget of {format_bytes(budget)}; solving in float32 "
            f"({format_bytes(need)})",
            ModelNotice,
            stacklevel=3,
        )
        return "float32"

    def _memory_hint(self) -> str:
        return (
            "the sparse-ease model scales to large catalogues; or raise the budget "
            "(SIEVE_MEMORY_BUDGET, --memory-budget)"
        )

    def _fit(self, dataset: Dataset) -> EASEState:
        x = sp.csr_matrix(dataset.matrix)
        if self.config.binary:
            x = (x > 0).astype(np.float64)
        n = x.shape[1]
        precision = self._precision(n)
        if n > DENSE_MAX_ITEMS:  # asked for by name: it runs, and the table says why it is slow
            warnings.warn(
                f"ease: {n:,} items: the dense fit grows with the cube of the catalog on one "
                "thread (30,000 items took 9 minutes on 2 cores); the sparse-ease model "
                "scales to large catalogues",
                ModelNotice,
                stacklevel=3,
            )
        dtype = np.float64 if precision == "float64" else np.float32
        # Fortran order: LAPACK works on it in place (no copy of n² cells)
        gram = np.empty((n, n), dtype=dtype, order="F")
        xt = x.T.tocsr()
        xc = x.tocsc()
        step = max(1, _GRAM_BLOCK_CELLS // max(n, 1))
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            gram[:, lo:hi] = (xt @ xc[:, lo:hi]).toarray()
        gram[np.diag_indices_from(gram)] += self.config.l2
        # P is symmetric, so its transpose (a C-ordered view) is P too
        p = _spd_inverse(gram).T
        # B = I − P·diag(1/diag(P)), in place
        p /= -np.diag(p).copy()[None, :]
        p[np.diag_indices_from(p)] = 0.0
        return EASEState(weights=p.astype(np.float32, copy=False))

    @property
    def n_items(self) -> int:
        return int(self.state.weights.shape[0])

    def _rows(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        if self.config.binary:
            rows = (rows > 0).astype(np.float32)
        return rows

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        return np.asarray(self._rows(user_items) @ self.state.weights, dtype=np.float32)

    def item_vectors(self) -> NDArray[np.float32]:
        return self.state.weights


def _spd_inverse(a: NDArray[np.floating]) -> NDArray[np.floating]:
    """The inverse of a symmetric positive definite Fortran-ordered matrix,
    computed in `a`'s own memory (Cholesky, then the inverse from the factor)
    with the BLAS threads bounded to `FACTOR_THREADS`."""
    potrf, potri = (
        (lapack.dpotrf, lapack.dpotri) if a.dtype == np.float64 else (lapack.spotrf, lapack.spotri)
    )
    with threadpoolctl.threadpool_limits(FACTOR_THREADS, "blas"):
        c, info = potrf(a, lower=False, overwrite_a=True, clean=False)
        if info != 0:
            raise np.linalg.LinAlgError(f"the Gram matrix is not positive definite (potrf {info})")
        inv, info = potri(c, lower=False, overwrite_c=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"the Gram matrix is singular (potri {info})")
    # potri writes the upper triangle only: mirror it, a block of rows at a time
    n = inv.shape[0]
    step = max(1, _GRAM_BLOCK_CELLS // max(n, 1))
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        inv[lo:hi, :lo] = inv[:lo, lo:hi].T
        block = inv[lo:hi, lo:hi]
        block[...] = np.triu(block) + np.triu(block, 1).T
    return inv
