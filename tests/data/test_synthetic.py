"""The synthetic world: determinism, planted tastes, popularity, content, click model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer

from sieve.config import ConfigError
from sieve.data.raw import RawData
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from sieve.data.synthetic import SyntheticConfig, SyntheticWorld, generate


@pytest.fixture(scope="module")
def world() -> tuple[RawData, SyntheticWorld]:
    return generate(SyntheticConfig(seed=7))


def test_same_seed_gives_identical_frames() -> None:
    cfg = SyntheticConfig(n_users=60, n_items=40, seed=5)
    (a, _), (b, _) = generate(cfg), generate(cfg)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, b.users)
    other, _ = generate(cfg.replace(seed=6))
    assert not other.events.equals(a.events)
    assert other.items["text"].tolist() != a.items["text"].tolist()


def test_frames_follow_the_schema(world: tuple[RawData, SyntheticWorld]) -> None:
    raw, w = world
    assert list(raw.events.columns) == EVENT_COLUMNS
    assert list(raw.items.columns) == ITEM_COLUMNS
    assert list(raw.users.columns) == USER_COLUMNS
    assert raw.events["event_id"].is_unique
    assert set(raw.events["type"]) == {"view", "click", "cart", "purchase"}
    assert raw.events["value"].isna().all()
    assert raw.events["timestamp"].is_monotonic_increasing
    # one event per engaged item, at least min_events_per_user per user
    assert not raw.events.duplicated(["user_id", "item_id"]).any()
    assert raw.events.groupby("user_id").size().min() >= w.config.min_events_per_user
    ds = raw.to_dataset()
    # zero-padded ids: dataset indices are world indices
    assert list(ds.user_ids) == list(w.user_ids)
    assert list(ds.item_ids) == list(w.item_ids)
    # no event before its item's release, none outside the span
    created = w.item_created_at[ds.events["item_idx"].to_numpy()]
    ts = ds.events["timestamp"].to_numpy()
    assert (ts >= created).all()
    assert ts.min() >= w.config.start_time
    assert ts.max() <= w.config.start_time + w.config.span_days * 86400


def test_planted_tastes_are_recoverable(world: tuple[RawData, SyntheticWorld]) -> None:
    raw, w = world
    ds = raw.to_dataset()
    u = ds.events["user_idx"].to_numpy()
    cat = w.item_category[ds.events["item_idx"].to_numpy()]
    counts = np.zeros((ds.n_users, w.config.n_categories))
    np.add.at(counts, (u, cat), 1)
    top = counts.argmax(axis=1)
    hit = w.favourite_mask[np.arange(ds.n_users), top].mean()
    assert hit >= 0.8
    # the users frame exposes the same planted favourites
    attrs = raw.users["attributes"]
    assert attrs[3]["favourite_categories"] == [
        w.category_names[c] for c in w.user_favourite_categories[3]
    ]
    assert {a["group"] for a in attrs} == {"a", "b"}


def test_popularity_is_skewed(world: tuple[RawData, SyntheticWorld]) -> None:
    raw, w = world
    per_item = raw.events["item_id"].value_counts().reindex(w.item_ids, fill_value=0)
    top = np.sort(per_item.to_numpy())[::-1][: w.config.n_items // 10]
    assert top.sum() / per_item.sum() > 0.3


def test_item_text_recovers_categories(world: tuple[RawData, SyntheticWorld]) -> None:
    raw, w = world
    tfidf = TfidfVectorizer().fit_transform(raw.items["text"])
    sim = (tfidf @ tfidf.T).toarray()
    np.fill_diagonal(sim, -1.0)
    nearest = sim.argmax(axis=1)
    same = w.item_category[nearest] == w.item_category
    assert same.mean() > 0.8
    assert [w.category_names[w.item_category[0]]] == raw.items["categories"][0][:1]


def test_click_model(world: tuple[RawData, SyntheticWorld]) -> None:
    _, w = world
    p = w.preference_matrix()
    assert p.shape == (w.config.n_users, w.config.n_items)
    assert ((p > 0) & (p < 1)).all()
    assert 0.01 < np.median(p) < 0.5
    users = np.array([0, 5, 9])
    items = np.array([3, 1, 7])
    np.testing.assert_allclose(w.click_probability(users, items), p[users, items])
    # favourite-category items are clicked more
    in_fav = w.favourite_mask[:, w.item_category]
    assert p[in_fav].mean() > 3 * p[~in_fav].mean()
    # simulated clicks follow the probabilities
    rng = np.random.default_rng(0)
    clicks = w.sample_clicks(np.zeros(20_000, dtype=int), np.full(20_000, 3), rng)
    assert clicks.mean() == pytest.approx(p[0, 3], abs=0.02)


def test_deeper_funnel_stages_have_higher_utility(world: tuple[RawData, SyntheticWorld]) -> None:
    raw, w = world
    ds = raw.to_dataset()
    util = w.true_utility(ds.events["user_idx"].to_numpy(), ds.events["item_idx"].to_numpy())
    mean = pd.Series(util).groupby(ds.events["type"].to_numpy()).mean()
    assert mean["view"] < mean["click"] < mean["cart"] < mean["purchase"]


def test_ratings_correlate_with_utility() -> None:
    raw, w = generate(SyntheticConfig(n_users=200, n_items=100, with_ratings=True, seed=1))
    ds = raw.to_dataset()
    assert set(ds.events["type"]) == {"rating"}
    values = ds.events["value"].to_numpy()
    assert set(np.unique(values)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    util = w.true_utility(ds.events["user_idx"].to_numpy(), ds.events["item_idx"].to_numpy())
    assert spearmanr(values, util).statistic > 0.5


def test_config_validation_and_toml() -> None:
    with pytest.raises(ConfigError, match="n_users"):
        SyntheticConfig(n_users=0)
    with pytest.raises(ConfigError, match="max_favourites"):
        SyntheticConfig(n_categories=2, max_favourites=3)
    with pytest.raises(ConfigError, match="click_given_view"):
        SyntheticConfig(click_given_view=1.5)
    cfg = SyntheticConfig(n_users=10, with_ratings=True)
    assert SyntheticConfig.from_toml(cfg.to_toml()) == cfg


def test_pooled_sampling_of_large_catalogs_keeps_tastes_and_skew() -> None:
    """Above EXACT_SAMPLING_ITEMS the generator samples from a candidate pool:
    planted tastes and popularity skew must survive the approximation."""
    from sieve.data.synthetic import EXACT_SAMPLING_ITEMS

    cfg = SyntheticConfig(n_users=300, n_items=EXACT_SAMPLING_ITEMS + 5000, seed=4)
    raw, w = generate(cfg)
    ds = raw.to_dataset()
    u = ds.events["user_idx"].to_numpy()
    i = ds.events["item_idx"].to_numpy()
    assert len(ds.events) == ds.matrix.nnz  # one event per (user, item): no repeats
    counts = np.zeros((ds.n_users, cfg.n_categories))
    np.add.at(counts, (u, w.item_category[i]), 1)
    hit = w.favourite_mask[np.arange(ds.n_users), counts.argmax(axis=1)].mean()
    assert hit >= 0.8
    pop = np.bincount(i, minlength=cfg.n_items)
    top = np.sort(pop)[::-1][: cfg.n_items // 10].sum()
    assert top / pop.sum() > 0.3
