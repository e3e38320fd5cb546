"""BiasedMF: unit checks on tiny data, and the ML-100K RMSE target (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.models.biasedmf import BiasedMF, BiasedMFConfig

ML100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"
RMSE_TARGET = 0.915


def _ratings(users: np.ndarray, items: np.ndarray, values: np.ndarray) -> Dataset:
    ev = pd.DataFrame(
        {
            "event_id": [f"e{k}" for k in range(len(users))],
            "user_id": [f"u{u:03d}" for u in users],
            "item_id": [f"i{i:03d}" for i in items],
            "type": "rating",
            "value": values.astype(np.float64),
            "timestamp": 1.7e9 + np.arange(len(users), dtype=np.float64),
        }
    )
    return Dataset.from_frames(ev)


def _planted(seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """Ratings 3 + item bias ± noise, item bias +1 for even items, -1 for odd."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 20
    pairs = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.5]
    u = np.array([p[0] for p in pairs])
    i = np.array([p[1] for p in pairs])
    bias = np.where(np.arange(n_items) % 2 == 0, 1.0, -1.0)
    values = np.clip(np.round(3 + bias[i] + rng.normal(0, 0.5, len(i))), 1, 5)
    return _ratings(u, i, values), bias


TINY = BiasedMFConfig(factors=4, epochs=40)


def test_learns_a_planted_item_bias() -> None:
    ds, bias = _planted()
    model = BiasedMF(TINY).fit(ds)
    learned = model.state.item_bias[[ds.item_index(f"i{i:03d}") for i in range(len(bias))]]
    assert learned[bias > 0].min() > learned[bias < 0].max()
    assert np.mean(learned[bias > 0]) - np.mean(learned[bias < 0]) > 1.5
    # ranking follows the predicted rating: a user's top items are the liked half
    u = ds.user_index("u000")
    assert ds.ratings is not None
    top = model.recommend(u, ds.ratings[u], 3)
    assert all(bias[int(ds.item_ids[i][1:])] > 0 for i in top.items)


def test_predictions_stay_in_the_training_range() -> None:
    ds, _ = _planted()
    model = BiasedMF(TINY).fit(ds)
    users = np.repeat(np.arange(ds.n_users), ds.n_items)
    items = np.tile(np.arange(ds.n_items), ds.n_users)
    pred = model.predict(users, items)
    assert ds.ratings is not None
    assert pred.min() >= ds.ratings.data.min() and pred.max() <= ds.ratings.data.max()
    assert model.predicts_ratings


def test_unknown_user_or_item_falls_back_to_biases() -> None:
    ds, _ = _planted()
    model = BiasedMF(TINY).fit(ds)
    s = model.state
    pred = model.predict(np.array([-1, 0, -1]), np.array([3, -1, -1]))
    expected = [s.global_mean + s.item_bias[3], s.global_mean + s.user_bias[0], s.global_mean]
    np.testing.assert_allclose(pred, np.clip(expected, s.rating_min, s.rating_max))


def test_fold_in_reproduces_a_training_user() -> None:
    ds, _ = _planted()
    model = BiasedMF(TINY).fit(ds)
    assert ds.ratings is not None
    rows = ds.ratings[:10]
    learned = model.score_batch(np.arange(10), rows)
    folded = model.score_batch(np.full(10, -1), rows)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(learned, folded, strict=True)]
    assert min(corr) > 0.95
    np.testing.assert_allclose(folded, learned, atol=0.3)
    # no ratings at all: biases and factors of zero, the item-bias ranking
    empty = model.score_batch(np.array([-1]), sp.csr_matrix((1, ds.n_items)))
    np.testing.assert_allclose(empty[0], model.state.global_mean + model.state.item_bias)


def test_training_is_seeded() -> None:
    ds, _ = _planted()
    a = BiasedMF(TINY).fit(ds).state
    b = BiasedMF(TINY).fit(ds).state
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    c = BiasedMF(TINY, random_state=3).fit(ds).state
    assert not np.array_equal(a.item_factors, c.item_factors)


def test_needs_ratings() -> None:
    ev = pd.DataFrame(
        {
            "event_id": ["e0"],
            "user_id": ["u"],
            "item_id": ["i"],
            "type": ["click"],
            "value": [np.nan],
            "timestamp": [1.0],
        }
    )
    with pytest.raises(ValueError, match="ratings"):
        BiasedMF().fit(Dataset.from_frames(ev))


def _fold(path: Path) -> pd.DataFrame:
    return pd.read_csv(
        path, sep="\t", names=["user_id", "item_id", "value", "timestamp"], dtype=str
    )


@pytest.mark.slow
def test_movielens_100k_official_folds_rmse() -> None:
    if not all(
        (ML100K / f"u{k}.{part}").is_file() for k in range(1, 6) for part in ("base", "test")
    ):
        pytest.skip(f"MovieLens 100K folds u1..u5 not found under {ML100K}")
    # one vocabulary for all folds, so test pairs map onto training indices
    user_ids = np.array(sorted(str(u) for u in range(1, 944)), dtype=object)
    item_ids = np.array(sorted(str(i) for i in range(1, 1683)), dtype=object)
    rmses = []
    for k in range(1, 6):
        base, test = _fold(ML100K / f"u{k}.base"), _fold(ML100K / f"u{k}.test")
        events = base.assign(
            event_id=[f"e{j}" for j in range(len(base))],
            type="rating",
            value=base["value"].astype(np.float64),
            timestamp=base["timestamp"].astype(np.float64),
        )
        ds = Dataset.from_frames(events, user_ids=user_ids.copy(), item_ids=item_ids.copy())
        model = BiasedMF().fit(ds)
        users = pd.Index(user_ids).get_indexer(test["user_id"])
        items = pd.Index(item_ids).get_indexer(test["item_id"])
        assert (users >= 0).all() and (items >= 0).all()
        pred = model.predict(users, items)
        truth = test["value"].astype(np.float64).to_numpy()
        rmses.append(float(np.sqrt(np.mean((pred - truth) ** 2))))
    mean = float(np.mean(rmses))
    print(f"ML-100K u1..u5 RMSE: {[round(r, 4) for r in rmses]} mean {mean:.4f}")
    assert mean <= RMSE_TARGET
