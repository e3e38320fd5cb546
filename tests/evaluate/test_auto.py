"""`model:auto`: the shape rule and the bounded search on validation data."""

from __future__ import annotations

import numpy as np

from sieve.data.io import load_data
from sieve.data.split import make_splits
from sieve.evaluate.auto import DataShape, auto_params, shape_params
from sieve.evaluate.protocol import ModelSpec, evaluate


def test_the_rule_follows_the_shape() -> None:
    small_dense = DataShape(
        n_users=900, n_items=1600, interactions=75_000, per_user=80, per_item=45
    )
    big_sparse = DataShape(
        n_users=200_000, n_items=60_000, interactions=1_000_000, per_user=5, per_item=17
    )
    assert shape_params("als", small_dense) == {"factors": 32, "alpha": 2.0}
    assert shape_params("als", big_sparse) == {"factors": 128, "alpha": 10.0}
    assert (
        shape_params("bpr", big_sparse)["learning_rate"]
        > shape_params("bpr", small_dense)["learning_rate"]
    )
    # the ridge penalty grows with the item counts on the Gram diagonal
    dense_l2 = shape_params("ease", small_dense)["l2"]
    assert shape_params("ease", big_sparse)["l2"] < dense_l2
    assert shape_params("popular", small_dense) == {}


def test_auto_searches_within_its_budget_and_says_what_it_chose() -> None:
    ds = load_data("synthetic:users=250,items=120,seed=11").to_dataset()
    (split,) = make_splits(ds, "random:0.8", 2)
    choice = auto_params("ease", split.train, budget_s=30, max_trials=4)
    assert 2 <= choice.trials <= 4 and set(choice.params) == {"l2"}
    assert choice.validation_value is not None and 0 < choice.validation_value <= 1
    res = evaluate(ds, [split], [ModelSpec("ease:auto", "ease", auto=True, auto_budget_s=2)])
    (notice,) = res.models[0].notices
    assert notice.startswith("ease:auto chose l2=") and "validation ndcg@10" in notice
    assert np.isfinite(res.models[0].summary["ndcg@10"].mean)
