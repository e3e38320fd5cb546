"""Biased matrix factorisation for explicit ratings (Koren, Bell & Volinsky 2009).

r̂_ui = μ + b_u + b_i + p_u·q_i, learned by SGD on the squared error with L2
penalties, one epoch per call of a numba kernel that walks the ratings CSR of
the snapshot in a shuffled order. The learning rates decay geometrically per
epoch, so training settles instead of drifting into overfitting: with the
shipped defaults the mean RMSE over the official ML-100K folds u1..u5 is
about 0.905 (see tests/models/test_biasedmf.py).

Randomness (initial factors, epoch orders) comes from a `numpy` Generator
seeded by `random_state`; no global random state is touched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
from numba import njit
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender


@dataclasses.dataclass(frozen=True)
class BiasedMFConfig(Config):
    """BiasedMF hyperparameters.

    - `factors`: latent dimensions of p_u and q_i.
    - `epochs`: passes over the ratings.
    - `learning_rate`: initial SGD step of the factors.
    - `learning_rate_bias`: initial SGD step of the biases.
    - `lr_decay`: both steps are multiplied by this after every epoch.
    - `regularization`: L2 penalty on p_u and q_i (per rating, as in SGD).
    - `regularization_bias`: L2 penalty on b_u and b_i.
    - `init_std`: standard deviation of the normal initial factors; small
      values let the biases settle before the factors grow.
    - `random_state`: seed of the initialisation and the epoch shuffles.
    """

    factors: int = 100
    epochs: int = 80
    learning_rate: float = 0.01
    learning_rate_bias: float = 0.005
    lr_decay: float = 0.98
    regularization: float = 0.08
    regularization_bias: float = 0.02
    init_std: float = 0.02
    random_state: int = 42

    def validate(self) -> None:
        name = "BiasedMFConfig"
        if self.factors < 1:
            raise ConfigError(f"{name}.factors must be >= 1")
        if self.epochs < 0:
            raise ConfigError(f"{name}.epochs must be >= 0")
        for field in ("learning_rate", "learning_rate_bias"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{name}.{field} must be > 0")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"{name}.lr_decay must be in (0, 1]")
        for field in ("regularization", "regularization_bias", "init_std"):
            if getattr(self, field) < 0:
                raise ConfigError(f"{name}.{field} must be >= 0")


@dataclasses.dataclass(frozen=True)
class BiasedMFState:
    """Learned parameters and the rating range seen in training."""

    global_mean: float
    user_bias: NDArray[np.float64]
    item_bias: NDArray[np.float64]
    user_factors: NDArray[np.float64]
    item_factors: NDArray[np.float64]
    rating_min: float
    rating_max: float


@njit(cache=True, nogil=True)
def _sgd_epoch(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    values: NDArray[np.float64],
    order: NDArray[np.int64],
    mu: float,
    bu: NDArray[np.float64],
    bi: NDArray[np.float64],
    p: NDArray[np.float64],
    q: NDArray[np.float64],
    lr: float,
    lr_bias: float,
    reg: float,
    reg_bias: float,
) -> float:  # pragma: no cover - compiled
    """One SGD pass over the CSR entries in `order`; returns the training SSE."""
    k = p.shape[1]
    sse = 0.0
    for t in range(order.shape[0]):
        j = order[t]
        u = rows[j]
        i = cols[j]
        pred = mu + bu[u] + bi[i]
        for f in range(k):
            pred += p[u, f] * q[i, f]
        err = values[j] - pred
        sse += err * err
        bu[u] += lr_bias * (err - reg_bias * bu[u])
        bi[i] += lr_bias * (err - reg_bias * bi[i])
        for f in range(k):
            puf = p[u, f]
            qif = q[i, f]
            p[u, f] += lr * (err * qif - reg * puf)
            q[i, f] += lr * (err * puf - reg * qif)
    return sse


class BiasedMF(Recommender[BiasedMFConfig, BiasedMFState]):
    """Rating predictor μ + b_u + b_i + p_u·q_i trained by SGD.

    Ranking (`score_batch`) uses the unclipped predicted rating, since clipping
    would tie every item predicted above the top of the scale; `predict`
    clips to the training range.

    Users unknown to the model (index -1) are folded in from their row, which
    must hold the user's *ratings* (pass rows of `Dataset.ratings`, not of the
    implicit `matrix`): b_u and p_u are the ridge solution for those ratings
    with the item parameters fixed and penalties n_u·`regularization_bias`
    and n_u·`regularization` (n_u ratings) - the fixed point of the training
    SGD updates for that user.
    """

    name = "biasedmf"
    config_class = BiasedMFConfig
    state_class = BiasedMFState
    predicts_ratings = True

    def _fit(self, dataset: Dataset) -> BiasedMFState:
        if dataset.ratings is None or dataset.ratings.nnz == 0:
            raise ValueError("BiasedMF needs ratings: the snapshot has no rating events")
        r = sp.csr_matrix(dataset.ratings, dtype=np.float64)
        r.sort_indices()
        cfg = self.config
        n_users, n_items = r.shape
        rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(r.indptr))
        cols = r.indices.astype(np.int64)
        values = np.ascontiguousarray(r.data, dtype=np.float64)
        rng = np.random.default_rng(cfg.random_state)
        mu = float(values.mean())
        bu = np.zeros(n_users)
        bi = np.zeros(n_items)
        p = rng.normal(0.0, cfg.init_std, (n_users, cfg.factors))
        q = rng.normal(0.0, cfg.init_std, (n_items, cfg.factors))
        lr, lr_bias = cfg.learning_rate, cfg.learning_rate_bias
        for _ in range(cfg.epochs):
            order = rng.permutation(len(values)).astype(np.int64)
            _sgd_epoch(
                rows,
                cols,
                values,
                order,
                mu,
                bu,
                bi,
                p,
                q,
                lr,
                lr_bias,
                cfg.regularization,
                cfg.regularization_bias,
            )
            lr *= cfg.lr_decay
            lr_bias *= cfg.lr_decay
        return BiasedMFState(
            global_mean=mu,
            user_bias=bu,
            item_bias=bi,
            user_factors=p,
            item_factors=q,
            rating_min=float(values.min()),
            rating_max=float(values.max()),
        )

    @property
    def n_items(self) -> int:
        return int(self.state.item_bias.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.state.user_bias.shape[0])

    def predict(self, users: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.float64]:
        """Predicted ratings, clipped to the training range. A user or item
        outside the model (e.g. -1) contributes neither bias nor factors."""
        s = self.state
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise ValueError(f"users and items differ in shape: {users.shape} != {items.shape}")
        ku = (users >= 0) & (users < self.n_users)
        ki = (items >= 0) & (items < self.n_items)
        u = np.where(ku, users, 0)
        i = np.where(ki, items, 0)
        pred = np.full(users.shape, s.global_mean, dtype=np.float64)
        pred += np.where(ku, s.user_bias[u], 0.0)
        pred += np.where(ki, s.item_bias[i], 0.0)
        both = ku & ki
        dots = np.einsum("...f,...f->...", s.user_factors[u], s.item_factors[i])
        pred += np.where(both, dots, 0.0)
        return np.clip(pred, s.rating_min, s.rating_max)

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        s = self.state
        users = np.asarray(users, dtype=np.int64)
        bad = users[(users < -1) | (users >= self.n_users)]
        if len(bad):
            raise IndexError(f"user index {int(bad[0])} is outside -1..{self.n_users - 1}")
        bias = np.empty(len(users))
        vecs = np.empty((len(users), s.user_factors.shape[1]))
        known = users >= 0
        bias[known] = s.user_bias[users[known]]
        vecs[known] = s.user_factors[users[known]]
        if not known.all():
            unknown = np.flatnonzero(~known)
            bias[unknown], vecs[unknown] = self.fold_in(sp.csr_matrix(user_items)[unknown])
        scores = vecs @ s.item_factors.T
        scores += (s.global_mean + bias)[:, None] + s.item_bias[None, :]
        return scores.astype(np.float32)

    def fold_in(self, ratings: sp.csr_matrix) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(b_u, p_u) for users given only their rows of ratings (see class doc)."""
        s = self.state
        cfg = self.config
        r = sp.csr_matrix(ratings, dtype=np.float64)
        f = s.item_factors.shape[1]
        biases = np.zeros(r.shape[0])
        vecs = np.zeros((r.shape[0], f))
        penalty = np.concatenate([[cfg.regularization_bias], np.full(f, cfg.regularization)])
        for row in range(r.shape[0]):
            lo, hi = r.indptr[row], r.indptr[row + 1]
            if hi == lo:
                continue
            items = r.indices[lo:hi]
            target = r.data[lo:hi] - s.global_mean - s.item_bias[items]
            design = np.hstack([np.ones((hi - lo, 1)), s.item_factors[items]])
            gram = design.T @ design + np.diag(penalty * (hi - lo))
            w = np.linalg.solve(gram + 1e-9 * np.eye(f + 1), design.T @ target)
            biases[row], vecs[row] = w[0], w[1:]
        return biases, vecs

    def item_vectors(self) -> NDArray[np.float32]:
        return self.state.item_factors.astype(np.float32)
