"""The model protocol shared by every recommender, and its persistence.

A model is a typed `Config` (hyperparameters) plus a `State` (learned arrays)
that only `fit` sets. Users are passed as indices *and* their interaction rows
(`user_items`, like the `implicit` library): a model never keeps the training
matrix, so it saves and loads without the training data, and a user unknown
to the model (index -1) is scored from the row alone (fold-in).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config
from sieve.data.dataset import Dataset
from sieve.models.memory import ENV_VAR, MemoryBudgetError, current_budget
from sieve.types import ItemList, TopN

C = TypeVar("C", bound=Config)
S = TypeVar("S")

#: Users scored at once in batch recommendation: bounds the dense score block.
SCORE_BLOCK_CELLS = 32_000_000


class NotFittedError(RuntimeError):
    """A model used before `fit` (or `load`)."""


class ArrayDict(dict[str, NDArray[Any]]):
    """Named arrays as one state field (a network's weights by parameter
    name); saved as one array each, like any other array field."""

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self.values())


class Recommender(ABC, Generic[C, S]):
    """Base class of all recommenders.

    Subclasses set `name`, `config_class`, `state_class`, implement `_fit`
    (returning the state) and `score_batch`; they override the other methods
    where they can do better than the generic version.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[Config]]
    state_class: ClassVar[type]
    #: True for models that predict explicit ratings (`predict`).
    predicts_ratings: ClassVar[bool] = False
    #: True when the model's list for a user with no history is already a
    #: cold-start answer (a chart, or a cold-start path of its own), so an
    #: evaluation's fallback model for cold users leaves it alone.
    serves_cold_start: ClassVar[bool] = False

    def __init__(self, config: C | None = None, **overrides: Any) -> None:
        base = config if config is not None else self.config_class()
        self.config: C = base.replace(**overrides) if overrides else base  # type: ignore[assignment]
        self._state: S | None = None

    # ------------------------------------------------------------- training
    def fit(self, dataset: Dataset) -> Self:
        """Learn from a snapshot; replaces any earlier state. A fit whose
        estimated peak memory is over the budget (`models.memory`) raises
        `MemoryBudgetError` before allocating anything."""
        estimate = self.estimate_fit_bytes(dataset)
        if estimate is not None:
            budget = current_budget()
            if estimate > budget:
                raise MemoryBudgetError(self.name, estimate, budget, self._memory_hint())
        self._state = self._fit(dataset)
        return self

    def estimate_fit_bytes(self, dataset: Dataset) -> int | None:
        """Peak memory of `fit` on this snapshot, for models whose fit can
        outgrow a machine; None: not estimated (it grows with the data)."""
        return None

    def _memory_hint(self) -> str:
        """What to do when the fit is over the memory budget."""
        return f"raise the budget ({ENV_VAR}, --memory-budget) or use a smaller catalogue"

    @abstractmethod
    def _fit(self, dataset: Dataset) -> S:
        """Compute the learned state from a snapshot."""

    @classmethod
    def from_state(cls, config: C, state: S) -> Self:
        """A model holding a state learned elsewhere (e.g. computed on Spark),
        as if `fit` had produced it."""
        model = cls(config)
        model._state = state
        return model

    @property
    def state(self) -> S:
        if self._state is None:
            raise NotFittedError(f"{self.name} model is not fitted; call fit() or load()")
        return self._state

    @property
    def is_fitted(self) -> bool:
        return self._state is not None

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Number of items the model scores (the training item vocabulary)."""

    # -------------------------------------------------------------- scoring
    @abstractmethod
    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        """Dense scores (len(users) × n_items); higher is better.

        `users[r]` is a training user index or -1 for a user the model has not
        seen; `user_items[r]` is that user's interaction row.
        """

    def score(
        self, user: int, user_items: sp.csr_matrix, items: NDArray[np.int64]
    ) -> NDArray[np.float32]:
        """Scores of the given items for one user."""
        items = np.asarray(items, dtype=np.int64)
        self._check_items(items)
        return self.score_batch(np.array([user], dtype=np.int64), _as_rows(user_items, 1))[0, items]

    def recommend(
        self,
        user: int,
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: NDArray[np.int64] | None = None,
    ) -> ItemList:
        """Top-n for one user, optionally only among `candidates`."""
        if candidates is not None:
            candidates = np.asarray(candidates, dtype=np.int64)
            scores = self.score(user, user_items, candidates).astype(np.float32)
            if exclude_seen:
                seen = np.isin(candidates, _as_rows(user_items, 1).indices)
                scores = np.where(seen, -np.inf, scores).astype(np.float32)
            order = np.argsort(-scores, kind="stable")[:n]
            order = order[np.isfinite(scores[order])]
            return ItemList(candidates[order], scores[order])
        top = self.recommend_batch(
            np.array([user], dtype=np.int64), _as_rows(user_items, 1), n, exclude_seen=exclude_seen
        )
        return top.row(0)

    def recommend_batch(
        self,
        users: NDArray[np.int64],
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        exclude_seen: bool = True,
    ) -> TopN:
        """Top-n for many users; row r of `user_items` is `users[r]`'s history."""
        users = np.asarray(users, dtype=np.int64)
        user_items = _as_rows(user_items, len(users))
        out_items = np.full((len(users), n), -1, dtype=np.int64)
        out_scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        block = max(1, SCORE_BLOCK_CELLS // max(1, self.n_items))
        for start in range(0, len(users), block):
            stop = min(start + block, len(users))
            scores = np.asarray(
                self.score_batch(users[start:stop], user_items[start:stop]), dtype=np.float32
            )
            if exclude_seen:
                rows = user_items[start:stop]
                r, c = rows.nonzero()
                scores[r, c] = -np.inf
            idx, val = top_k(scores, n)
            out_items[start:stop, : idx.shape[1]] = idx
            out_scores[start:stop, : idx.shape[1]] = val
        return TopN(out_items, out_scores)

    def similar_items(self, item: int, n: int = 10) -> ItemList:
        """The n items most similar to `item` (itself excluded)."""
        vectors = self.item_vectors()
        self._check_items(np.array([item]))
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        sims = (vectors @ vectors[item]) / (norms * norms[item])
        sims[item] = -np.inf
        idx, val = top_k(sims[None, :].astype(np.float32), n)
        return TopN(idx, val).row(0)

    def item_vectors(self) -> NDArray[np.float32]:
        """Dense item representations used for similarity; models that have
        them override this. A model without them cannot answer `similar_items`,
        which is a usage error (TypeError), as for the popularity models."""
        raise TypeError(f"{self.name} has no item vectors: it cannot find similar items")

    def predict(self, users: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.float64]:
        """Predicted ratings for (user, item) pairs (rating models only)."""
        raise TypeError(f"{self.name} does not predict ratings")

    def _check_items(self, items: NDArray[np.int64]) -> None:
        bad = items[(items < 0) | (items >= self.n_items)]
        if len(bad):
            raise IndexError(f"item index {int(bad[0])} is outside 0..{self.n_items - 1}")

    # ---------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write config and learned state to a directory (no training data)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}
        scalars: dict[str, Any] = {}
        for f in dataclasses.fields(self.state):  # type: ignore[arg-type]
            value = getattr(self.state, f.name)
            if sp.issparse(value):
                csr = sp.csr_matrix(value)
                arrays[f"{f.name}__data"] = csr.data
                arrays[f"{f.name}__indices"] = csr.indices
                arrays[f"{f.name}__indptr"] = csr.indptr
                arrays[f"{f.name}__shape"] = np.array(csr.shape)
            elif isinstance(value, ArrayDict):
                for key, arr in value.items():
                    arrays[f"{f.name}__param__{key}"] = arr
                scalars[f.name] = {"__arrays__": list(value)}
            elif isinstance(value, np.ndarray):
                if value.dtype == object:
                    scalars[f.name] = {"__strings__": [str(v) for v in value]}
                else:
                    arrays[f.name] = value
            else:
                scalars[f.name] = value
        np.savez(path / "state.npz", **arrays)
        meta = {"model": self.name, "format": 1, "scalars": scalars}
        (path / "model.json").write_text(json.dumps(meta, indent=1))
        (path / "config.toml").write_text(self.config.to_toml())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recommender[Any, Any]:
        """Read a model written by `save`; works on the base class too."""
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        klass = model_class(meta["model"])
        if cls is not Recommender and not issubclass(klass, cls):
            raise TypeError(f"{path} holds a {meta['model']} model, not {cls.name}")
        own_load = getattr(klass.load, "__func__", None)
        if own_load is not None and own_load is not Recommender.load.__func__:  # type: ignore[attr-defined]
            return klass.load(path)  # a model with its own format (the funnel)
        config = klass.config_class.from_toml((path / "config.toml").read_text())
        model = klass(config)
        npz = np.load(path / "state.npz", allow_pickle=False)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(klass.state_class):
            if f.name in meta["scalars"]:
                v = meta["scalars"][f.name]
                if isinstance(v, dict) and "__strings__" in v:
                    v = np.array(v["__strings__"], dtype=object)
                elif isinstance(v, dict) and "__arrays__" in v:
                    v = ArrayDict({k: npz[f"{f.name}__param__{k}"] for k in v["__arrays__"]})
                values[f.name] = v
            elif f"{f.name}__indptr" in npz:
                shape = tuple(int(x) for x in npz[f"{f.name}__shape"])
                values[f.name] = sp.csr_matrix(
                    (npz[f"{f.name}__data"], npz[f"{f.name}__indices"], npz[f"{f.name}__indptr"]),
                    shape=shape,
                )
            else:
                values[f.name] = npz[f.name]
        model._state = klass.state_class(**values)
        return model


def top_k(scores: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Row-wise top-k indices and values, best first; -inf entries become -1.

    argpartition + a sort of k columns: O(n) per row instead of a full sort.
    """
    n_rows, n_cols = scores.shape
    k_eff = min(k, n_cols)
    if k_eff == 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), np.float32)
    if k_eff < n_cols:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    else:
        part = np.tile(np.arange(n_cols), (n_rows, 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    idx[~np.isfinite(vals)] = -1
    return idx, vals


def _as_rows(user_items: sp.csr_matrix | NDArray[Any], n_rows: int) -> sp.csr_matrix:
    m = sp.csr_matrix(user_items)
    if m.shape[0] != n_rows:
        raise ValueError(f"user_items has {m.shape[0]} rows for {n_rows} users")
    return m


# ------------------------------------------------------------ model names
#: name -> "module:Class"; imported lazily so `sieve --help` stays fast.
MODELS: dict[str, str] = {
    "popular": "sieve.models.popularity:Popularity",
    "bayes-rating": "sieve.models.popularity:BayesianRating",
    "trending": "sieve.models.popularity:Trending",
    "itemknn": "sieve.models.itemknn:ItemKNN",
    "ease": "sieve.models.ease:EASE",
    "sparse-ease": "sieve.models.sparse_ease:SparseEASE",
    "als": "sieve.models.factorization:ALS",
    "bpr": "sieve.models.factorization:BPR",
    "content": "sieve.models.content:ContentTFIDF",
    "biasedmf": "sieve.models.biasedmf:BiasedMF",
    "funnel": "sieve.pipeline:Funnel",
    # the `neural` extra (PyTorch, imported when one of them trains)
    "two-tower": "sieve.models.neural.two_tower:TwoTower",
    "sasrec": "sieve.models.neural.sasrec:SASRec",
}


def model_class(name: str) -> type[Recommender[Any, Any]]:
    """The class registered under `name`; the error lists the known names."""
    try:
        target = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    module, cls = target.split(":")
    klass: type[Recommender[Any, Any]] = getattr(importlib.import_module(module), cls)
    return klass


def create_model(name: str, params: dict[str, Any] | None = None) -> Recommender[Any, Any]:
    """A fresh model with its defaults, overridden by `params`."""
    klass = model_class(name)
    config = klass.config_class.from_dict(params or {})
    return klass(config)
