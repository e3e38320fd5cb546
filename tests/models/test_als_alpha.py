"""ALS's confidence scaling chosen from the data when not given (`alpha = 0`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sieve.config import ConfigError
from sieve.data.io import load_data
from sieve.evaluate.auto import DataShape, shape_params
from sieve.models.base import Recommender
from sieve.models.factorization import (
    ALS,
    ALSConfig,
    confidence_alpha,
    interactions_per_user,
)

SPARSE = "synthetic:users=300,items=400,events_per_user=6,seed=3"
DENSE = "synthetic:users=200,items=100,events_per_user=60,seed=3"


def test_the_rule_gives_more_weight_to_each_interaction_of_sparser_users() -> None:
    assert confidence_alpha(80) == 2.0
    assert confidence_alpha(50) == 2.0
    assert confidence_alpha(20) == 5.0
    assert confidence_alpha(6) == 10.0


@pytest.mark.parametrize(("spec", "expected"), [(SPARSE, 10.0), (DENSE, 2.0)])
def test_a_default_als_takes_its_alpha_from_the_data(spec: str, expected: float) -> None:
    ds = load_data(spec).to_dataset()
    assert confidence_alpha(interactions_per_user(np.diff(ds.matrix.indptr))) == expected
    model = ALS(num_threads=1).fit(ds)
    assert model.config.alpha == expected
    # the same factors as that alpha given explicitly
    explicit = ALS(num_threads=1, alpha=expected).fit(ds)
    assert np.array_equal(model.state.item_factors, explicit.state.item_factors)
    # and the same value the `auto` shape rule starts from
    assert shape_params("als", DataShape.of(ds))["alpha"] == expected


def test_a_refit_chooses_again_from_its_own_data() -> None:
    model = ALS(num_threads=1)
    assert model.fit(load_data(SPARSE).to_dataset()).config.alpha == 10.0
    assert model.fit(load_data(DENSE).to_dataset()).config.alpha == 2.0


def test_a_given_alpha_is_kept_and_a_fitted_model_saves_the_one_it_used(tmp_path: Path) -> None:
    ds = load_data(SPARSE).to_dataset()
    assert ALS(num_threads=1, alpha=3.0).fit(ds).config.alpha == 3.0
    model = ALS(num_threads=1).fit(ds)
    loaded = Recommender.load(model.save(tmp_path / "als"))
    assert loaded.config.alpha == 10.0
    rows = ds.matrix[:5]
    users = np.array([-1] * 5, dtype=np.int64)  # folded in with the alpha it was fitted with
    assert np.array_equal(
        model.recommend_batch(users, rows, 5).items, loaded.recommend_batch(users, rows, 5).items
    )


def test_a_negative_alpha_is_refused() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        ALSConfig(alpha=-1.0)
