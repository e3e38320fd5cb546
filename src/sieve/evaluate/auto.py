"""Defaults that adapt to the data: a shape rule, then a bounded search.

`model:auto` (in `sieve evaluate --models`) picks a model's hyperparameters
from the training data only:

1. the *shape rule* (`shape_params`) proposes values from the data's shape —
   users, items, interactions per user and per item — where a model's best
   setting is known to move with it (more factors for bigger catalogues and
   user bases, a larger ALS confidence α on sparser data, a ridge penalty that
   grows with the Gram matrix's diagonal);
2. a search (`tune.search`, Optuna TPE) on a validation split carved from the
   training data (per-user random 80/20) tries the shipped defaults and the
   rule's values first, then the model's search space, until `budget_s`
   seconds or `max_trials` trials; the best on validation wins.

The test part of an evaluation is never read. The rule alone is
`shape_params`; the search can only choose between settings on validation,
so on data unlike any seen here it falls back to what validates best.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from sieve.data.dataset import Dataset
from sieve.data.split import make_splits
from sieve.evaluate.tune import SEARCH_SPACES, search
from sieve.models.base import model_class
from sieve.models.factorization import ALSConfig, confidence_alpha, interactions_per_user

#: Seconds and trials of one model's search unless told otherwise.
DEFAULT_BUDGET_S = 60.0
DEFAULT_MAX_TRIALS = 20


@dataclass(frozen=True)
class DataShape:
    """What the rule looks at."""

    n_users: int
    n_items: int
    interactions: int
    per_user: float  # mean interactions per active user
    per_item: float  # mean interactions per item with any

    @property
    def density(self) -> float:
        return self.interactions / max(self.n_users * self.n_items, 1)

    @classmethod
    def of(cls, dataset: Dataset) -> DataShape:
        x = dataset.matrix
        per_row = x.getnnz(axis=1)
        users = int((per_row > 0).sum())
        items = int((x.getnnz(axis=0) > 0).sum())
        return cls(
            n_users=users,
            n_items=items,
            interactions=int(x.nnz),
            per_user=interactions_per_user(per_row),
            per_item=x.nnz / max(items, 1),
        )


def _factors(shape: DataShape) -> int:
    """Latent dimensions: more when both sides are large enough to fill them."""
    side = min(shape.n_users, shape.n_items)
    return 32 if side < 5_000 else 64 if side < 50_000 else 128


def shape_params(model: str, shape: DataShape) -> dict[str, Any]:
    """The rule's hyperparameters for `model` on data of this shape ({}: the
    shipped defaults)."""
    if model == "als":
        # sparse users: each observed interaction is stronger evidence
        return {"factors": _factors(shape), "alpha": confidence_alpha(shape.per_user)}
    if model == "bpr":
        # one epoch samples one triple per interaction: on sparse data the
        # shipped step size leaves the factors under-trained
        learning_rate = 0.005 if shape.per_user >= 50 else 0.01
        return {"factors": _factors(shape), "learning_rate": learning_rate}
    if model in ("ease", "sparse-ease"):
        # λ on the Gram diagonal (item counts): grows with it, sub-linearly
        l2 = float(np.clip(50.0 * np.sqrt(max(shape.per_item, 1.0)), 20.0, 2000.0))
        return {"l2": round(l2, 1)}
    return {}


@dataclass(frozen=True)
class AutoChoice:
    """The parameters `auto` chose and how."""

    params: dict[str, Any]
    rule: dict[str, Any]
    trials: int
    validation_value: float | None

    def describe(self, model: str) -> str:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.params.items()))
        how = (
            f"best of {self.trials} trials on validation ndcg@10={self.validation_value:.4f}"
            if self.validation_value is not None
            else "the shape rule (no search space)"
        )
        return f"{model}:auto chose {shown or 'the defaults'} ({how})"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _shipped(model: str, shape: DataShape) -> dict[str, Any]:
    """The shipped defaults as the model would fit them on data of this shape
    (ALS's α 0 is chosen from the data)."""
    config = model_class(model).config_class()
    if isinstance(config, ALSConfig):
        config = config.for_data(shape.per_user)
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if isinstance(getattr(config, f.name), int | float | str | bool)
    }


def auto_params(
    model: str,
    train: Dataset,
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    max_trials: int = DEFAULT_MAX_TRIALS,
    seed: int = 42,
) -> AutoChoice:
    """Hyperparameters for `model` from `train` alone (see the module docstring)."""
    shape = DataShape.of(train)
    rule = shape_params(model, shape)
    if model not in SEARCH_SPACES:
        return AutoChoice(params=rule, rule=rule, trials=0, validation_value=None)
    val = make_splits(train, "random:0.8", seed)[0]
    shipped = _shipped(model, shape)
    result = search(
        model,
        val,
        n_trials=max(max_trials, 2),
        seed=seed,
        timeout=budget_s,
        first=[shipped, {**shipped, **rule}],
    )
    return AutoChoice(
        params=result.best_params,
        rule=rule,
        trials=result.n_trials,
        validation_value=result.best_value,
    )
