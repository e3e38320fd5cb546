"""The contract every registered model keeps, checked on a two-group dataset.

Users of group A rate a random 70% of the group-A items highly (and a few
group-B items 1-2 stars, which `min_rating=3` keeps out of the implicit
matrix); group B mirrors it. Item text and categories follow the groups too,
so the right answer is known for every kind of model: a personalised model
recommends a group-A user unseen group-A items.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sieve.config import ConfigError
from sieve.data.dataset import Dataset
from sieve.data.schema import EventWeights
from sieve.models.base import MODELS, NotFittedError, Recommender, create_model

N_PER_GROUP_USERS = 20
N_PER_GROUP_ITEMS = 15
POPULARITY = {"popular", "bayes-rating", "trending"}
#: Defaults are sized for real catalogues; the toy data needs fewer factors.
TOY_PARAMS: dict[str, dict[str, Any]] = {
    "als": {"factors": 4, "num_threads": 1},
    "bpr": {"factors": 8, "learning_rate": 0.05, "iterations": 200, "num_threads": 1},
    "biasedmf": {"factors": 8, "epochs": 60, "learning_rate": 0.02, "learning_rate_bias": 0.01},
    "itemknn": {"k": 20},
    "ease": {"l2": 10.0},
    "sparse-ease": {"l2": 10.0, "neighbours": 12, "num_threads": 1},
    "two-tower": {"dim": 16, "hidden": 16, "epochs": 15, "batch_size": 128, "learning_rate": 0.01},
    "sasrec": {
        "dim": 16,
        "blocks": 1,
        "max_len": 20,
        "epochs": 30,
        "batch_size": 40,
        "learning_rate": 0.01,
    },
}
#: Models of the `neural` extra: skipped without PyTorch.
NEURAL = {"two-tower", "sasrec"}
HAS_TORCH = importlib.util.find_spec("torch") is not None
#: An invalid value per model, and the field the error must name.
INVALID: dict[str, tuple[str, Any]] = {
    "popular": ("weighted", 1),
    "bayes-rating": ("prior_count", -1.0),
    "trending": ("half_life_days", 0.0),
    "itemknn": ("k", 0),
    "ease": ("l2", -1.0),
    "sparse-ease": ("neighbours", 0),
    "als": ("factors", -4),
    "bpr": ("factors", -4),
    "content": ("min_df", 0),
    "biasedmf": ("factors", -4),
    "two-tower": ("temperature", 0.0),
    "sasrec": ("heads", 3),
    # nested config: the value is the whole parameter table
    "funnel": ("num_leaves", {"ranker": {"num_leaves": 0}}),
}


def _toy() -> Dataset:
    rng = np.random.default_rng(7)
    rows: list[tuple[str, str, str, float]] = []
    for g, (own, other) in enumerate((("a", "b"), ("b", "a"))):
        for u in range(N_PER_GROUP_USERS):
            user = f"{own}u{u:02d}"
            liked = rng.choice(N_PER_GROUP_ITEMS, int(0.7 * N_PER_GROUP_ITEMS), replace=False)
            for i in liked:
                rows.append((user, f"{own}i{i:02d}", "rating", float(rng.choice([4.0, 5.0]))))
            for i in rng.choice(N_PER_GROUP_ITEMS, 3, replace=False):
                rows.append((user, f"{other}i{i:02d}", "rating", float(rng.choice([1.0, 2.0]))))
            rows.append((user, f"{own}i{int(liked[0]):02d}", "click", np.nan))
        del g
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "value"])
    events["event_id"] = [f"e{k}" for k in range(len(events))]
    events["timestamp"] = 1.7e9 + np.arange(len(events)) * 60.0
    texts = {
        "a": ("Space saga", "rocket galaxy starship orbit astronaut", ["Sci-Fi"]),
        "b": ("Kitchen stories", "recipe cooking bread oven chef", ["Food"]),
    }
    items = pd.DataFrame(
        [
            {
                "item_id": f"{grp}i{i:02d}",
                "title": f"{texts[grp][0]} {i}",
                "text": texts[grp][1],
                "categories": texts[grp][2],
                "created_at": 1.6e9,
                "attributes": {},
            }
            for grp in ("a", "b")
            for i in range(N_PER_GROUP_ITEMS)
        ]
    )
    return Dataset.from_frames(events, items, weights=EventWeights(min_rating=3.0))


DATA = _toy()
GROUP_A_USER = np.array([DATA.user_ids[u].startswith("a") for u in range(DATA.n_users)])
GROUP_A_ITEM = np.array([DATA.item_ids[i].startswith("a") for i in range(DATA.n_items)])


def _rows(name: str) -> sp.csr_matrix:
    """The history rows a caller passes: ratings for the rating model."""
    if name == "biasedmf":
        assert DATA.ratings is not None
        return DATA.ratings
    return DATA.matrix


def _in_group_fraction(user: int | np.integer, items: np.ndarray) -> float:
    items = items[items >= 0]
    return float(np.mean(GROUP_A_ITEM[items] == GROUP_A_USER[user]))


_FITTED: dict[str, Recommender[Any, Any]] = {}


def _fitted(name: str) -> Recommender[Any, Any]:
    if name not in _FITTED:
        _FITTED[name] = create_model(name, TOY_PARAMS.get(name)).fit(DATA)
    return _FITTED[name]


names = pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n, marks=pytest.mark.skipif(not HAS_TORCH, reason="needs the neural extra (PyTorch)")
        )
        if n in NEURAL
        else n
        for n in sorted(MODELS)
    ],
)


@names
def test_personalised_models_recommend_the_users_group(name: str) -> None:
    if name in POPULARITY:
        pytest.skip("not personalised")
    model = _fitted(name)
    rows = _rows(name)
    users = np.arange(DATA.n_users)
    top = model.recommend_batch(users, rows, 3)
    frac = np.mean([_in_group_fraction(u, top.items[u]) for u in users])
    assert frac >= 0.9, f"{name}: only {frac:.0%} of top-3 in the user's group"


@names
def test_recommend_excludes_seen_items(name: str) -> None:
    model = _fitted(name)
    rows = _rows(name)
    for u in range(0, DATA.n_users, 3):
        recs = model.recommend(u, rows[u], n=10)
        assert len(recs) > 0
        assert not set(recs.items.tolist()) & set(rows[u].indices.tolist())
        assert len(set(recs.items.tolist())) == len(recs)
    kept = model.recommend(0, rows[0], n=DATA.n_items, exclude_seen=False)
    assert set(rows[0].indices.tolist()) <= set(kept.items.tolist()) or name == "itemknn"


@names
def test_batch_rows_equal_single_recommend(name: str) -> None:
    model = _fitted(name)
    rows = _rows(name)
    users = np.array([0, 5, -1, 21, 39, -1], dtype=np.int64)
    hist = rows[[0, 5, 6, 21, 39, 25]]
    top = model.recommend_batch(users, hist, 5)
    for r, u in enumerate(users):
        single = model.recommend(int(u), hist[r], n=5)
        batch = top.row(r)
        np.testing.assert_array_equal(batch.items, single.items)
        np.testing.assert_allclose(batch.scores, single.scores, rtol=1e-5, atol=1e-6)


@names
def test_score_agrees_with_recommend(name: str) -> None:
    model = _fitted(name)
    rows = _rows(name)
    for u in (1, 30):
        recs = model.recommend(u, rows[u], n=8)
        scores = model.score(u, rows[u], recs.items)
        np.testing.assert_allclose(scores, recs.scores, rtol=1e-4, atol=1e-5)
        assert np.all(np.diff(scores) <= 1e-5)
        # candidates: the same ranking restricted to a subset
        cands = recs.items[::-1][:4]
        sub = model.recommend(u, rows[u], n=4, candidates=cands)
        np.testing.assert_array_equal(np.sort(sub.items), np.sort(cands))
        assert np.all(np.diff(sub.scores) <= 1e-5)


@names
def test_similar_items(name: str) -> None:
    model = _fitted(name)
    if name in POPULARITY:
        with pytest.raises(TypeError, match="similarity"):
            model.similar_items(0)
        return
    fracs = []
    for item in range(DATA.n_items):
        sim = model.similar_items(item, n=3)
        assert item not in sim.items.tolist()
        assert np.all(np.diff(sim.scores) <= 1e-6)
        fracs.append(np.mean(GROUP_A_ITEM[sim.items] == GROUP_A_ITEM[item]))
    assert np.mean(fracs) >= 0.9, f"{name}: similar items cross groups"


@names
def test_save_load_round_trip_without_training_data(name: str, tmp_path: Any) -> None:
    model = _fitted(name)
    rows = _rows(name)
    path = model.save(tmp_path / name)
    loaded = Recommender.load(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    users = np.array([0, 7, 20, 33, -1], dtype=np.int64)
    hist = rows[[0, 7, 20, 33, 12]]
    a = model.recommend_batch(users, hist, 5)
    b = loaded.recommend_batch(users, hist, 5)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    # nothing shaped like the interaction matrix (in any sub-model's state either)
    for file in path.rglob("*.npz"):
        npz = np.load(file)
        for key in npz.files:
            assert npz[key].shape != (DATA.n_users, DATA.n_items), (file, key)
            if key.endswith("__shape"):
                assert tuple(npz[key]) != (DATA.n_users, DATA.n_items), (file, key)
    if not (path / "state.npz").exists():
        return  # a composite model: its parts were checked above
    # no bulk beyond the state
    state_bytes = sum(
        getattr(getattr(model.state, f.name), "nbytes", 0)
        + getattr(getattr(getattr(model.state, f.name), "data", None), "nbytes", 0)
        for f in dataclasses.fields(model.state)
    )
    assert (path / "state.npz").stat().st_size <= 2 * state_bytes + 4096


@names
def test_use_before_fit_raises(name: str, tmp_path: Any) -> None:
    model = create_model(name)
    assert not model.is_fitted
    with pytest.raises(NotFittedError):
        model.recommend(0, DATA.matrix[0])
    with pytest.raises(NotFittedError):
        model.recommend_batch(np.array([0, 1]), DATA.matrix[:2])
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "never")


@names
def test_unknown_user_is_folded_in_from_the_row(name: str) -> None:
    model = _fitted(name)
    rows = _rows(name)
    users = np.arange(DATA.n_users)
    top = model.recommend_batch(np.full(DATA.n_users, -1), rows, 3)
    assert np.all(top.items[:, 0] >= 0)
    if name in POPULARITY:
        # same global ranking as for known users
        known = model.recommend_batch(users, rows, 3)
        np.testing.assert_array_equal(top.items, known.items)
        return
    frac = np.mean([_in_group_fraction(u, top.items[u]) for u in users])
    assert frac >= 0.9, f"{name}: fold-in puts only {frac:.0%} in the user's group"
    for u in range(DATA.n_users):
        assert not set(top.items[u].tolist()) & set(rows[u].indices.tolist())


@names
def test_invalid_config_names_the_field(name: str) -> None:
    field, value = INVALID[name]
    params = value if isinstance(value, dict) else {field: value}
    with pytest.raises(ConfigError, match=field):
        create_model(name, params)
