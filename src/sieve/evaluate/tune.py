"""Hyperparameter search on a validation split carved out of the training data.

The test part of the evaluation split is never touched: the training part is
split again (with the same kind of split as the evaluation) into a fit part and
a validation part, and Optuna's TPE sampler maximises a per-user metric there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from sieve.data.split import Split, make_splits
from sieve.evaluate import metrics as M
from sieve.models.base import create_model, model_class

SearchSpace = Callable[[optuna.Trial], dict[str, Any]]

#: Search spaces per model: ranges that cover each model's useful regime.
SEARCH_SPACES: dict[str, SearchSpace] = {
    "ease": lambda t: {"l2": t.suggest_float("l2", 10.0, 5000.0, log=True)},
    "sparse-ease": lambda t: {"l2": t.suggest_float("l2", 10.0, 5000.0, log=True)},
    "itemknn": lambda t: {
        "k": t.suggest_int("k", 10, 500, log=True),
        "shrinkage": t.suggest_float("shrinkage", 0.0, 100.0),
        "similarity": t.suggest_categorical("similarity", ["cosine", "bm25", "tfidf"]),
    },
    "als": lambda t: {
        "factors": t.suggest_int("factors", 16, 256, log=True),
        "regularization": t.suggest_float("regularization", 1e-3, 10.0, log=True),
        "alpha": t.suggest_float("alpha", 0.5, 50.0, log=True),
        "iterations": t.suggest_int("iterations", 5, 30),
    },
    "bpr": lambda t: {
        "factors": t.suggest_int("factors", 16, 256, log=True),
        "learning_rate": t.suggest_float("learning_rate", 1e-3, 0.2, log=True),
        "regularization": t.suggest_float("regularization", 1e-5, 0.1, log=True),
        "iterations": t.suggest_int("iterations", 20, 300, log=True),
        "validation_share": 0.0,  # the search chooses the epochs: trained as given
    },
    "trending": lambda t: {
        "half_life_days": t.suggest_float("half_life_days", 0.5, 365.0, log=True)
    },
    "content": lambda t: {"min_df": t.suggest_int("min_df", 1, 5)},
    "biasedmf": lambda t: {
        "factors": t.suggest_int("factors", 8, 200, log=True),
        "learning_rate": t.suggest_float("learning_rate", 1e-3, 0.03, log=True),
        "regularization": t.suggest_float("regularization", 1e-3, 0.3, log=True),
        "epochs": t.suggest_int("epochs", 10, 150, log=True),
    },
}

#: Metrics the search can maximise (rating models may also minimise rmse).
TUNABLE_METRICS = ("ndcg", "precision", "recall", "map", "mrr", "hitrate", "rmse")


@dataclass(frozen=True)
class TuneResult:
    model: str
    metric: str
    best_value: float
    best_params: dict[str, Any]
    n_trials: int
    validation: str


def validation_split(train_split: Split, spec: str, seed: int) -> Split:
    """Carve a validation split out of a split's training data only."""
    (val,) = make_splits(train_split.train, spec, seed)[:1]
    return val


def tune(
    model: str,
    split: Split,
    *,
    metric: str = "ndcg@10",
    n_trials: int = 30,
    validation: str = "random:0.8",
    seed: int = 42,
    on_trial: Callable[[int, float], None] | None = None,
) -> TuneResult:
    """Search `model`'s hyperparameters to maximise `metric` on validation data."""
    val = validation_split(split, validation, seed)
    return search(
        model, val, metric=metric, n_trials=n_trials, seed=seed, on_trial=on_trial,
        validation=validation,
    )  # fmt: skip


def search(
    model: str,
    val: Split,
    *,
    metric: str = "ndcg@10",
    n_trials: int = 30,
    seed: int = 42,
    on_trial: Callable[[int, float], None] | None = None,
    validation: str = "random:0.8",
    timeout: float | None = None,
    first: list[dict[str, Any]] | None = None,
) -> TuneResult:
    """Optuna search on a validation split `val` (fit on `val.train`, scored on
    `val.test`); `first`: parameter sets tried before the sampler's own
    (e.g. the shipped defaults); `timeout`: seconds after which no new trial
    starts."""
    model_class(model)  # raises with the list of known models
    if model not in SEARCH_SPACES:
        raise ValueError(f"no search space for {model!r}; tunable: {', '.join(SEARCH_SPACES)}")
    name, _, k_text = metric.partition("@")
    if name not in TUNABLE_METRICS:
        raise ValueError(f"cannot tune for {metric!r}; use one of {', '.join(TUNABLE_METRICS)}")
    k = int(k_text) if k_text else 10
    if n_trials < 1:
        raise ValueError(f"trials must be >= 1, got {n_trials}")
    users = val.test_users
    model_users = np.where(val.holdout_users[users], -1, users).astype(np.int64)
    history = val.history[users].tocsr()
    relevant = (val.test.matrix[users] > 0).astype(np.float64).tocsr()
    per_user = {
        "ndcg": M.ndcg_at_k,
        "precision": M.precision_at_k,
        "recall": M.recall_at_k,
        "map": M.average_precision_at_k,
        "mrr": M.reciprocal_rank,
        "hitrate": M.hit_rate_at_k,
    }

    def objective(trial: optuna.Trial) -> float:
        params = SEARCH_SPACES[model](trial)
        m = create_model(model, params).fit(val.train)
        if name == "rmse":
            if val.test.ratings is None:
                raise ValueError("rmse needs ratings in the data")
            coo = val.test.ratings.tocoo()
            err = m.predict(coo.row.astype(np.int64), coo.col.astype(np.int64)) - coo.data
            value = float(np.sqrt(np.mean(err**2)))
        else:
            recs = m.recommend_batch(model_users, history, k).items
            value = float(np.mean(per_user[name](recs, relevant, k)))
        if on_trial is not None:
            on_trial(trial.number, value)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize" if name == "rmse" else "maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    for params in first or []:
        study.enqueue_trial(params, skip_if_exists=True)
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    return TuneResult(
        model=model,
        metric=metric,
        best_value=float(study.best_value),
        best_params=dict(study.best_params),
        n_trials=len(study.trials),
        validation=validation,
    )
