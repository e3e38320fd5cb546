"""EASE: embarrassingly shallow autoencoder (Steck, WWW 2019).

Closed form: with G = XᵀX + λI and P = G⁻¹, the item-item weights are
B = I − P · diag(1/diag(P)), i.e. B_ij = −P_ij / P_jj off the diagonal and 0
on it. Scores are x_u · B, so a user unknown to the model is scored from the
history row alone (fold-in is free).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender


@dataclasses.dataclass(frozen=True)
class EASEConfig(Config):
    """EASE hyperparameters.

    - `l2`: the ridge penalty λ added to the Gram diagonal; larger values
      shrink weights and favour popular items less aggressively.
    - `binary`: use 0/1 interactions instead of summed event weights.
    """

    l2: float = 400.0
    binary: bool = True

    def validate(self) -> None:
        if self.l2 <= 0:
            raise ConfigError("EASEConfig.l2 must be > 0")


@dataclasses.dataclass(frozen=True)
class EASEState:
    weights: NDArray[np.float32]  # items × items, zero diagonal


class EASE(Recommender[EASEConfig, EASEState]):
    """Item-item linear model with a closed-form solution."""

    name = "ease"
    config_class = EASEConfig
    state_class = EASEState

    def _fit(self, dataset: Dataset) -> EASEState:
        x = dataset.matrix
        if self.config.binary:
            x = (x > 0).astype(np.float64)
        gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
        gram[np.diag_indices_from(gram)] += self.config.l2
        # G is symmetric positive definite: a Cholesky-based inverse is faster
        # and more accurate than a general one.
        c, low = scipy.linalg.cho_factor(gram, overwrite_a=True, check_finite=False)
        p = scipy.linalg.cho_solve((c, low), np.eye(gram.shape[0]), check_finite=False)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        return EASEState(weights=b.astype(np.float32))

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
