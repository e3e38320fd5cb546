"""Implicit-feedback matrix factorisation through the `implicit` library (CPU).

- `ALS`: weighted ALS of Hu, Koren & Volinsky (2008) with conjugate-gradient
  steps (Takács et al. 2011), `implicit.cpu.als.AlternatingLeastSquares`.
- `BPR`: Bayesian personalised ranking (Rendle et al. 2009) by Hogwild SGD,
  `implicit.cpu.bpr.BayesianPersonalizedRanking`.

The wrappers stay thin so they cost no more than the library used directly:
the training matrix is converted to CSR float32 once, and batch top-n for
known users is implicit's own multithreaded `recommend`. Only the factors are
state; the implicit model object is rebuilt from them on first use after
`load`.

A user with no training interactions gets the vector an empty row folds in to
(ALS: zero; BPR: the item-bias column only), never an untrained one. A zero
user vector scores every item 0, so any order would be arbitrary: such users
get no items (ids -1, scores -inf), and a caller answers them from a
cold-start model instead (`sieve evaluate --fallback trending`, the funnel's
charts).
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import abstractmethod
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
import threadpoolctl
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender, top_k
from sieve.models.memory import ModelNotice
from sieve.types import TopN

#: implicit pads filtered-out and missing slots with this score (-FLT_MAX).
_FLOAT32_MIN = float(np.finfo(np.float32).min)


@dataclasses.dataclass(frozen=True)
class MFState:
    """Learned factors as implicit stores them (float32).

    For BPR the last column of `item_factors` is the item bias and the last
    column of `user_factors` is 1.
    """

    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]


def _check_common(cfg: Any) -> None:
    name = type(cfg).__name__
    if cfg.factors < 1:
        raise ConfigError(f"{name}.factors must be >= 1")
    if cfg.regularization < 0:
        raise ConfigError(f"{name}.regularization must be >= 0")
    if cfg.iterations < 1:
        raise ConfigError(f"{name}.iterations must be >= 1")
    if cfg.num_threads < 0:
        raise ConfigError(f"{name}.num_threads must be >= 0 (0 = all cores)")


@dataclasses.dataclass(frozen=True)
class ALSConfig(Config):
    """ALS hyperparameters.

    - `factors`: latent dimensions.
    - `regularization`: L2 penalty λ on user and item factors.
    - `alpha`: confidence scaling; implicit fits on confidences c = alpha·x
      (x the summed event weights), so a stronger or repeated signal counts
      more and unobserved cells keep confidence 1 with preference 0. 0 (the
      `als` model's default; the funnel's ALS sets 2): chosen from the
      training data at fit (`confidence_alpha`: 2 with 50 or more
      interactions per user, 5 with 15 or more, 10 below), and the fitted
      model's config holds the value used.
    - `iterations`: ALS sweeps (users then items).
    - `random_state`: seed of the factor initialisation.
    - `num_threads`: threads for fitting and batch recommendation (0 = all).
    """

    factors: int = 32
    regularization: float = 0.05
    alpha: float = 0.0
    iterations: int = 15
    random_state: int = 42
    num_threads: int = 0

    def validate(self) -> None:
        _check_common(self)
        if self.alpha < 0:
            raise ConfigError("ALSConfig.alpha must be >= 0 (0: chosen from the data)")

    def for_data(self, per_user: float) -> ALSConfig:
        """This config with `alpha` chosen from the data when it is 0."""
        return self if self.alpha > 0 else self.replace(alpha=confidence_alpha(per_user))


def confidence_alpha(per_user: float) -> float:
    """ALS's confidence scaling for data with `per_user` interactions per
    active user: the fewer each user has, the more each one counts. On the
    15,000-item synthetic world (8 per user) α 10 doubled ALS's NDCG@10
    against α 2 (0.099 → 0.204); on MovieLens 100K (80 per user) it stays 2."""
    return 2.0 if per_user >= 50 else 5.0 if per_user >= 15 else 10.0


def interactions_per_user(counts: NDArray[np.integer]) -> float:
    """The mean of the users' interaction counts, over users with at least
    one (`confidence_alpha`'s input; a CSR matrix's counts are `np.diff(indptr)`)."""
    active = counts[counts > 0]
    return float(active.mean()) if len(active) else 0.0


@dataclasses.dataclass(frozen=True)
class BPRConfig(Config):
    """BPR hyperparameters.

    - `factors`: latent dimensions (implicit adds one item-bias column).
    - `learning_rate`: SGD step size.
    - `regularization`: L2 penalty on the factors touched by each step.
    - `iterations`: epochs of sampled (user, positive, negative) triples:
      with validation, the most epochs tried; without, the epochs trained.
    - `validation_share`: BPR's accuracy rises, peaks and falls again with
      the epochs, and where the peak lies moves with the data (at this step
      size near 100 epochs on MovieLens 100K, near 180 on a copy with a
      quarter of its interactions, whose first ten epochs score about as
      well as epoch 100). So the epochs are chosen on a validation part,
      this share of each user's interactions (seeded): trained there in
      blocks of `check_every` epochs, NDCG@10 of up to `validation_users`
      users read after each block (averaged with the neighbouring blocks'
      against noise); the scan stops once it has run `min_iterations`
      epochs and twice the best block's (at most `iterations`), and the
      model is refitted on all the data for the best epoch count. The share
      is small because the peak moves with the amount of data the model
      sees: on sparse data the factors leave their small random start the
      later the fewer interactions each user and item has, so epochs read
      with 20% held out overshoot once refitted on all of it (210 against a
      best near 170 on the quarter-of-MovieLens copy; 160–180 with 10%).
      0: no validation, `iterations` epochs.
    - `validation_parts`: disjoint held-out parts of `validation_share`
      each, one model trained on the rest of each and their curves
      averaged: one small part alone gives a noisy curve, the parts
      together read as many held-out interactions as one part of their
      total share while each model still misses only `validation_share` of
      the data. Costs one scan per part.
    - `random_state`: seed of the initialisation, the samplers and the
      validation part. With more than one thread the Hogwild updates
      interleave nondeterministically; one thread (the default) gives
      bit-identical refits and, on small data, is as fast.
    - `num_threads`: threads for fitting and batch recommendation (0 = all).
    - `fold_in_l2`: ridge penalty of the fold-in of users unknown to the
      model, relative to the mean eigenvalue of QᵀQ (so independent of the
      catalogue size); large values weight the top factor directions less.
    """

    factors: int = 32
    learning_rate: float = 0.005
    regularization: float = 0.01
    iterations: int = 400
    random_state: int = 42
    num_threads: int = 1
    fold_in_l2: float = 5.0
    validation_share: float = 0.1
    check_every: int = 10
    min_iterations: int = 200
    validation_users: int = 2000
    validation_parts: int = 2

    def validate(self) -> None:
        _check_common(self)
        if self.learning_rate <= 0:
            raise ConfigError("BPRConfig.learning_rate must be > 0")
        if self.fold_in_l2 <= 0:
            raise ConfigError("BPRConfig.fold_in_l2 must be > 0")
        if not 0 <= self.validation_share * self.validation_parts < 1:
            raise ConfigError("BPRConfig.validation_share × validation_parts must be in [0, 1)")
        for name in ("check_every", "validation_users", "validation_parts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"BPRConfig.{name} must be >= 1")
        if self.min_iterations < 0:
            raise ConfigError("BPRConfig.min_iterations must be >= 0")


CfgT = TypeVar("CfgT", bound=Config)


class _ImplicitMF(Recommender[CfgT, MFState]):
    """Shared plumbing: lazy implicit model, batched top-n, item vectors."""

    state_class = MFState

    def __init__(self, config: CfgT | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._cache: tuple[MFState, Any] | None = None

    @abstractmethod
    def _new_model(self) -> Any:
        """A fresh, unfitted implicit model with this config."""

    def estimate_fit_bytes(self, dataset: Dataset) -> int | None:
        """Factors (users + items, float32, with implicit's working copies) and
        the CSR matrix in both orientations."""
        n_users, n_items = dataset.matrix.shape
        width = int(getattr(self.config, "factors", 0)) + 1
        return 3 * (n_users + n_items) * width * 4 + 2 * dataset.matrix.nnz * 12

    def _fit(self, dataset: Dataset) -> MFState:
        x = sp.csr_matrix(dataset.matrix, dtype=np.float32)
        # implicit's native code has its own threads; a multithreaded BLAS on
        # top of it oversubscribes the cores (implicit warns about it)
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = self._trained(x)
        users = np.array(model.user_factors, dtype=np.float32)
        items = np.asarray(model.item_factors, dtype=np.float32)
        empty = np.flatnonzero(np.diff(x.indptr) == 0)
        state = MFState(user_factors=users, item_factors=items)
        model.user_factors = users
        self._cache = (state, model)
        # untouched by training (BPR keeps its random start): what an empty row folds in to
        users[empty] = self._empty_vector(users.shape[1])
        return state

    def _trained(self, x: sp.csr_matrix) -> Any:
        """An implicit model fitted on the training matrix."""
        model = self._new_model()
        model.fit(x, show_progress=False)
        return model

    def _empty_vector(self, width: int) -> NDArray[np.float32]:
        """The vector an empty row folds in to (ALS: zero, its solve has b = 0)."""
        return np.zeros(width, dtype=np.float32)

    def _model(self) -> Any:
        """The implicit model holding the current state's factors."""
        state = self.state
        if self._cache is None or self._cache[0] is not state:
            with threadpoolctl.threadpool_limits(1, "blas"):
                model = self._new_model()
            model.user_factors = state.user_factors
            model.item_factors = state.item_factors
            self._cache = (state, model)
        return self._cache[1]

    @property
    def n_items(self) -> int:
        return int(self.state.item_factors.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.state.user_factors.shape[0])

    def _check_users(self, users: NDArray[np.int64]) -> None:
        bad = users[(users < -1) | (users >= self.n_users)]
        if len(bad):
            raise IndexError(f"user index {int(bad[0])} is outside -1..{self.n_users - 1}")

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        users = np.asarray(users, dtype=np.int64)
        self._check_users(users)
        vecs = np.empty((len(users), self.state.user_factors.shape[1]), dtype=np.float32)
        known = users >= 0
        vecs[known] = self.state.user_factors[users[known]]
        if not known.all():
            rows = sp.csr_matrix(user_items, dtype=np.float32)[np.flatnonzero(~known)]
            vecs[~known] = self._fold_in(rows)
        scores = np.asarray(vecs @ self.state.item_factors.T, dtype=np.float32)
        scores[~vecs.any(axis=1)] = -np.inf  # a zero vector: no evidence, no order
        return scores

    @abstractmethod
    def _fold_in(self, rows: sp.csr_matrix) -> NDArray[np.float32]:
        """User vectors for users unknown to the model, from their rows."""

    def recommend_batch(
        self,
        users: NDArray[np.int64],
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        exclude_seen: bool = True,
    ) -> TopN:
        """Known users go through implicit's batched, multithreaded
        `recommend`; users unknown to the model (-1) through `score_batch`."""
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        if rows.shape[0] != len(users):
            raise ValueError(f"user_items has {rows.shape[0]} rows for {len(users)} users")
        self._check_users(users)
        model = self._model()
        n_eff = min(n, self.n_items)
        out_items = np.full((len(users), n), -1, dtype=np.int64)
        out_scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        known = users >= 0
        if known.all():
            kidx = None
        else:
            kidx = np.flatnonzero(known)
            uidx = np.flatnonzero(~known)
            unknown = super().recommend_batch(users[uidx], rows[uidx], n, exclude_seen=exclude_seen)
            out_items[uidx], out_scores[uidx] = unknown.items, unknown.scores
        if n_eff > 0 and known.any():
            ids, scores = model.recommend(
                users if kidx is None else users[kidx],
                rows if kidx is None else rows[kidx],
                N=n_eff,
                filter_already_liked_items=exclude_seen,
            )
            ids = np.asarray(ids, dtype=np.int64).reshape(-1, n_eff)
            scores = np.asarray(scores, dtype=np.float32).reshape(-1, n_eff)
            vecs = self.state.user_factors[users if kidx is None else users[kidx]]
            zero = ~np.any(vecs != 0, axis=1)  # no evidence: every item scores 0
            invalid = (scores <= _FLOAT32_MIN) | (ids < 0) | zero[:, None]
            ids[invalid] = -1
            scores[invalid] = -np.inf
            if kidx is None:
                out_items[:, :n_eff], out_scores[:, :n_eff] = ids, scores
            else:
                out_items[kidx, :n_eff], out_scores[kidx, :n_eff] = ids, scores
        return TopN(out_items, out_scores)


class ALS(_ImplicitMF[ALSConfig]):
    """Implicit-feedback ALS; users unknown to the model are folded in exactly
    by one ALS user step (implicit's `recalculate_user`)."""

    name = "als"
    config_class = ALSConfig

    def __init__(self, config: ALSConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        #: the config as given: each fit resolves its alpha 0 from its own data
        self._asked = self.config

    def _fit(self, dataset: Dataset) -> MFState:
        # the config holds the alpha used: the fold-in and a saved model read it
        counts = np.diff(sp.csr_matrix(dataset.matrix).indptr)
        self.config = self._asked.for_data(interactions_per_user(counts))
        return super()._fit(dataset)

    def _new_model(self) -> Any:

        c = self.config
        return AlternatingLeastSquares(
            factors=c.factors,
            regularization=c.regularization,
            alpha=c.alpha,
            iterations=c.iterations,
            random_state=c.random_state,
            num_threads=c.num_threads,
        )

    def _fold_in(self, rows: sp.csr_matrix) -> NDArray[np.float32]:
        model = self._model()
        return np.asarray(
            model.recalculate_user(np.arange(rows.shape[0]), rows), dtype=np.float32
        ).reshape(rows.shape[0], -1)

    def item_vectors(self) -> NDArray[np.float32]:
        return self.state.item_factors


class BPR(_ImplicitMF[BPRConfig]):
    """Bayesian personalised ranking.

    implicit has no fold-in for BPR. A user unknown to the model gets the
    ridge regression of their 0/1 row x (over all items) on the item factors
    Q (bias column excluded): p = (QᵀQ + λI)⁻¹ Qᵀ x with λ = `fold_in_l2` ·
    tr(QᵀQ)/f, rescaled to the mean norm of the training users' vectors, since
    BPR scores are on an arbitrary scale that the item biases share. On a
    75/25 split of ML-100K the folded-in users' recall@10 (0.38) matches that
    of the learned user vectors (0.34).
    """

    name = "bpr"
    config_class = BPRConfig

    def __init__(self, config: BPRConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        #: epochs of the last fit (chosen on validation unless `validation_share` = 0)
        self.fit_iterations: int | None = None

    def _new_model(self, iterations: int | None = None) -> Any:
        c = self.config
        return BayesianPersonalizedRanking(
            factors=c.factors,
            learning_rate=c.learning_rate,
            regularization=c.regularization,
            iterations=c.iterations if iterations is None else iterations,
            random_state=c.random_state,
            num_threads=c.num_threads,
        )

    def _trained(self, x: sp.csr_matrix) -> Any:
        c = self.config
        epochs = c.iterations
        if c.validation_share > 0:
            epochs = self._best_epochs(x)
            warnings.warn(
                f"bpr: {epochs} epochs, chosen on a validation part of the training data",
                ModelNotice,
                stacklevel=2,
            )
        self.fit_iterations = epochs
        model = self._new_model(epochs)
        model.fit(x, show_progress=False)
        return model

    def _best_epochs(self, x: sp.csr_matrix) -> int:
        """The epoch count (a multiple of `check_every`) with the best
        validation NDCG@10 (see `BPRConfig.validation_share`)."""
        c = self.config
        rng = np.random.default_rng(c.random_state)
        runs = []  # (model, fit part, held part, validation users) per part
        for part in range(c.validation_parts):
            fit, held = _holdout(x, c.validation_share, c.random_state, part, c.validation_parts)
            users = np.flatnonzero((held.getnnz(axis=1) > 0) & (fit.getnnz(axis=1) > 0))
            if len(users) > c.validation_users:
                users = np.sort(rng.choice(users, c.validation_users, replace=False))
            if len(users):
                runs.append((self._new_model(c.check_every), fit, held, users))
        if not runs:
            return c.iterations
        curve: list[float] = []
        done, best_epochs = 0, c.check_every
        while done < c.iterations:
            block = min(c.check_every, c.iterations - done)
            scores = []
            for part, (model, fit, held, users) in enumerate(runs):
                model.iterations = block
                # fresh samples per block and per part
                model.random_state = c.random_state + done + 1 + 7919 * part
                model.fit(fit, show_progress=False)  # continues from the current factors
                scores.append(
                    _ndcg10(model.user_factors[users], model.item_factors, fit[users], held[users])
                )
            done += block
            curve.append(float(np.mean(scores)))
            # each check averaged with its neighbours: one lucky block is noise
            smooth = np.convolve(curve, np.ones(3), "same") / np.convolve(
                np.ones(len(curve)), np.ones(3), "same"
            )
            best_epochs = min(c.check_every * (int(np.argmax(smooth)) + 1), done)
            if done >= max(c.min_iterations, 2 * best_epochs):
                break
        return best_epochs

    def _fold_in(self, rows: sp.csr_matrix) -> NDArray[np.float32]:
        q = self.state.item_factors[:, :-1].astype(np.float64)
        p_train = self.state.user_factors[:, :-1].astype(np.float64)
        gram = q.T @ q
        l2 = self.config.fold_in_l2 * max(float(np.trace(gram)) / q.shape[1], 1e-12)
        gram[np.diag_indices_from(gram)] += l2
        x = sp.csr_matrix(rows > 0, dtype=np.float64)
        p = np.linalg.solve(gram, np.asarray((x @ q).T)).T
        target = float(np.linalg.norm(p_train, axis=1).mean()) if len(p_train) else 1.0
        norms = np.linalg.norm(p, axis=1, keepdims=True)
        p = np.where(norms > 0, p * (target / np.where(norms > 0, norms, 1.0)), 0.0)
        ones = np.ones((rows.shape[0], 1))
        return np.hstack([p, ones]).astype(np.float32)

    def _empty_vector(self, width: int) -> NDArray[np.float32]:
        """No preference, item bias only (the fold-in of an empty row)."""
        vec = np.zeros(width, dtype=np.float32)
        vec[-1] = 1.0
        return vec

    def item_vectors(self) -> NDArray[np.float32]:
        """Item factors without the bias column (the bias is popularity, not
        similarity)."""
        return self.state.item_factors[:, :-1]


def _holdout(
    x: sp.csr_matrix, share: float, seed: int, part: int = 0, parts: int = 1
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fit, held): per user, round(share × n) random interactions held out,
    at most (n − 1) / `parts` (a user keeps at least one to fit on); `part`
    picks one of `parts` disjoint held-out parts of the same random order."""
    rng = np.random.default_rng(seed)
    counts = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0]), counts)
    order = np.lexsort((rng.random(x.nnz), rows))  # random order within each row
    rank = np.empty(x.nnz, np.int64)
    rank[order] = np.arange(x.nnz) - np.repeat(x.indptr[:-1], counts)
    n_held = np.minimum(
        np.rint(counts * share).astype(np.int64), np.maximum(counts - 1, 0) // parts
    )
    held = (rank >= part * n_held[rows]) & (rank < (part + 1) * n_held[rows])
    coo = x.tocoo()
    out = []
    for mask in (~held, held):
        out.append(sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=x.shape))
    return out[0], out[1]


def _ndcg10(
    users: NDArray[np.float32],
    items: NDArray[np.float32],
    seen: sp.csr_matrix,
    held: sp.csr_matrix,
    k: int = 10,
) -> float:
    """Mean NDCG@k of the users' top k unseen items against their held-out
    ones (binary gains), scored in blocks of rows."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    block = max(1, 2**24 // max(items.shape[0], 1))
    for lo in range(0, users.shape[0], block):
        scores = users[lo : lo + block] @ items.T
        rows = seen[lo : lo + block]
        scores[np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr)), rows.indices] = -np.inf
        top, _ = top_k(scores, k)
        rel = held[lo : lo + block]
        for r in range(rows.shape[0]):
            truth = rel.indices[rel.indptr[r] : rel.indptr[r + 1]]
            gains = np.isin(top[r], truth)
            ideal = discounts[: min(len(truth), k)].sum()
            total += float(gains @ discounts[: len(gains)]) / ideal
    return total / max(users.shape[0], 1)
