"""Model-specific behaviour on small hand-made data with known answers."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.models.base import Recommender, top_k
from sieve.models.content import ContentConfig, ContentTFIDF, category_token, item_document
from sieve.models.factorization import ALS, BPR
from sieve.models.itemknn import ItemKNN
from sieve.models.popularity import BayesianRating, Popularity, Trending

DAY = 86_400.0
T0 = 1.7e9


def _events(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    """Events from (user, item, type, value, timestamp) tuples."""
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "value", "timestamp"])
    ev["event_id"] = [f"e{k}" for k in range(len(ev))]
    return ev


def _row(ds: Dataset, items: list[str]) -> sp.csr_matrix:
    idx = [ds.item_index(i) for i in items]
    return sp.csr_matrix((np.ones(len(idx)), ([0] * len(idx), idx)), shape=(1, ds.n_items))


# ------------------------------------------------------------------ popularity
def test_trending_ranks_recent_above_formerly_popular() -> None:
    rows = [(f"u{k}", "old", "click", np.nan, T0 - 60 * DAY) for k in range(10)]
    rows += [(f"u{k}", "new", "click", np.nan, T0 - 0.5 * DAY) for k in range(3)]
    rows += [("u0", "other", "click", np.nan, T0)]
    ds = Dataset.from_frames(_events(rows))
    empty = sp.csr_matrix((1, ds.n_items))
    trending = Trending(half_life_days=7.0).fit(ds)
    assert trending.recommend(-1, empty, 1).items[0] == ds.item_index("new")
    popular = Popularity().fit(ds)
    assert popular.recommend(-1, empty, 1).items[0] == ds.item_index("old")
    # the documented formula, with now = the latest event
    score = trending.state.item_scores[ds.item_index("new")]
    assert score == pytest.approx(3 * math.exp(-math.log(2) * 0.5 / 7.0))


def test_trending_ignores_events_after_a_configured_now() -> None:
    rows = [("u0", "a", "click", np.nan, T0), ("u1", "b", "click", np.nan, T0 + DAY)]
    ds = Dataset.from_frames(_events(rows))
    scores = Trending(now=T0, half_life_days=1.0).fit(ds).state.item_scores
    assert scores[ds.item_index("a")] == pytest.approx(1.0)
    assert scores[ds.item_index("b")] == 0.0


def test_bayesian_rating_shrinks_a_lone_five_star() -> None:
    rows = [("u0", "lone", "rating", 5.0, T0)]
    rows += [(f"u{k}", "solid", "rating", 4.5, T0) for k in range(20)]
    rows += [(f"u{k}", "meh", "rating", 3.0, T0) for k in range(10)]
    ds = Dataset.from_frames(_events(rows))
    model = BayesianRating(prior_count=5.0).fit(ds)
    scores = model.state.item_scores
    lone, solid = scores[ds.item_index("lone")], scores[ds.item_index("solid")]
    assert solid > lone
    m = (5.0 + 20 * 4.5 + 10 * 3.0) / 31
    assert lone == pytest.approx((5 * m + 5.0) / 6)
    assert solid == pytest.approx((5 * m + 90.0) / 25)
    assert model.recommend(-1, sp.csr_matrix((1, ds.n_items)), 1).items[0] == ds.item_index("solid")


def test_bayesian_rating_falls_back_to_counts_without_ratings() -> None:
    rows = [("u0", "a", "click", np.nan, T0), ("u1", "a", "view", np.nan, T0)]
    rows += [("u0", "b", "purchase", np.nan, T0)]
    ds = Dataset.from_frames(_events(rows))
    scores = BayesianRating().fit(ds).state.item_scores
    np.testing.assert_array_equal(scores, ds.item_popularity())


def test_popularity_weighted_counts_event_weights() -> None:
    rows = [(f"u{k}", "viewed", "view", np.nan, T0) for k in range(3)]
    rows += [("u9", "bought", "purchase", np.nan, T0)]
    ds = Dataset.from_frames(_events(rows))
    empty = sp.csr_matrix((1, ds.n_items))
    top = Popularity().fit(ds).recommend(-1, empty, 1)
    assert top.items[0] == ds.item_index("viewed")
    top = Popularity(weighted=True).fit(ds).recommend(-1, empty, 1)
    assert top.items[0] == ds.item_index("bought")


# --------------------------------------------------------------------- content
def _content_data() -> Dataset:
    items = pd.DataFrame(
        {
            "item_id": ["s1", "s2", "c1", "c2", "s_new", "c_new"],
            "title": ["Orbit", "Launch day", "Bread", "Soup", "Rocket galaxy", "Oven"],
            "text": [
                "a rocket reaches orbit around the galaxy",
                "the rocket launch to a distant galaxy",
                "bake bread in the oven",
                "a soup recipe from the kitchen",
                "space rocket flight across the galaxy",
                "bread and cakes from a hot oven",
            ],
            "categories": [["Sci-Fi"], ["Sci-Fi"], ["Food"], ["Food"], ["Sci-Fi"], ["Food"]],
        }
    )
    rows = [("u0", "s1", "click", np.nan, T0), ("u0", "s2", "click", np.nan, T0)]
    rows += [("u1", "c1", "click", np.nan, T0), ("u1", "c2", "click", np.nan, T0)]
    return Dataset.from_frames(_events(rows), items)


def test_content_recommends_a_never_interacted_item_with_matching_text() -> None:
    ds = _content_data()
    model = ContentTFIDF().fit(ds)
    assert ds.matrix[:, ds.item_index("s_new")].nnz == 0
    for user, expected in (("u0", "s_new"), ("u1", "c_new")):
        u = ds.user_index(user)
        assert model.recommend(u, ds.matrix[u], 1).items[0] == ds.item_index(expected)
    # an unknown user is scored from the row alone
    top = model.recommend(-1, _row(ds, ["c1"]), 1)
    assert top.items[0] == ds.item_index("c_new")


@pytest.mark.parametrize("config", [ContentConfig(), ContentConfig(stop_words="none", ngram_max=2)])
def test_content_vectorizes_new_text_after_load(config: ContentConfig, tmp_path: Any) -> None:
    ds = _content_data()
    model = ContentTFIDF(config).fit(ds)
    loaded = Recommender.load(model.save(tmp_path / "content"))
    assert isinstance(loaded, ContentTFIDF)
    assert loaded.config == config
    k = ds.item_index("s_new")
    doc = item_document(ds.items["title"][k], ds.items["text"][k], ds.items["categories"][k])
    np.testing.assert_allclose(
        loaded.vectorize([doc]).toarray(), model.state.item_matrix[k].toarray(), rtol=1e-6
    )
    new = loaded.vectorize([item_document("Mars", "rocket to mars", ["Sci-Fi"]), "zzz qqq"])
    assert new.shape == (2, len(model.state.terms))
    assert new[0].nnz > 0 and new[1].nnz == 0
    assert np.linalg.norm(new[0].toarray()) == pytest.approx(1.0, rel=1e-6)
    # category tokens are whole tokens, distinct from words
    assert category_token(" Sci-Fi ") == "cat_sci_fi"
    assert "cat_sci_fi" in set(model.state.terms.tolist())


# --------------------------------------------------------------------- itemknn
def _shrinkage_data() -> Dataset:
    """Item T: users 0-5. A: users 0-1 (cos 2/√12 ≈ 0.577 with T, support 2).
    B: users 0-3 and 6-13 (cos 4/√72 ≈ 0.471 with T, support 4)."""
    members = {"T": range(6), "A": range(2), "B": [*range(4), *range(6, 14)]}
    rows = [(f"u{u:02d}", item, "view", np.nan, T0) for item, us in members.items() for u in us]
    return Dataset.from_frames(_events(rows))


def test_itemknn_shrinkage_prefers_well_supported_neighbours() -> None:
    ds = _shrinkage_data()
    t, a, b = (ds.item_index(i) for i in "TAB")
    plain = ItemKNN(k=5).fit(ds).similar_items(t, 2)
    assert plain.items.tolist() == [a, b]
    np.testing.assert_allclose(plain.scores, [2 / math.sqrt(12), 4 / math.sqrt(72)], rtol=1e-5)
    shrunk = ItemKNN(k=5, shrinkage=10.0).fit(ds).similar_items(t, 2)
    assert shrunk.items.tolist() == [b, a]
    expected = [4 / (math.sqrt(72) + 10), 2 / (math.sqrt(12) + 10)]
    np.testing.assert_allclose(shrunk.scores, expected, rtol=1e-5)


def _counts() -> sp.csr_matrix:
    rng = np.random.default_rng(3)
    x = sp.random(60, 12, density=0.3, random_state=rng, format="csr")
    x.data = np.ceil(x.data * 5)
    return sp.csr_matrix(x, dtype=np.float64)


def _count_dataset(x: sp.csr_matrix) -> Dataset:
    coo = x.tocoo()
    rows = [
        (f"u{u:03d}", f"i{i:03d}", "view", np.nan, T0)
        for u, i, c in zip(coo.row, coo.col, coo.data, strict=True)
        for _ in range(int(c))
    ]
    return Dataset.from_frames(_events(rows))


@pytest.mark.parametrize("similarity", ["cosine", "tfidf", "bm25"])
def test_itemknn_similarities_match_implicit(similarity: str) -> None:
    from implicit.nearest_neighbours import (
        BM25Recommender,
        CosineRecommender,
        TFIDFRecommender,
    )

    ds = _count_dataset(_counts())
    x = sp.csr_matrix(ds.matrix, dtype=np.float64)
    assert x.data.max() > 1  # real counts: the weighting matters
    ours = ItemKNN(similarity=similarity, k=11, binary=False, num_threads=1).fit(ds)
    ref_class = {"cosine": CosineRecommender, "tfidf": TFIDFRecommender}.get(similarity)
    ref = BM25Recommender(K=12, K1=1.2, B=0.75) if ref_class is None else ref_class(K=12)
    ref.num_threads = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit warns about its own COO intermediate
        ref.fit(sp.csr_matrix(x), show_progress=False)
    expected = ref.similarity.toarray()
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ours.state.similarity.toarray(), expected, rtol=1e-5, atol=1e-6)


def test_itemknn_keeps_k_neighbours_and_scores_rows() -> None:
    x = _counts()
    ds = _count_dataset(x)
    model = ItemKNN(k=3).fit(ds)
    sim = model.state.similarity
    assert np.all(np.diff(sim.indptr) <= 3)
    assert np.all(sim.diagonal() == 0)
    rows = sp.csr_matrix(ds.matrix[:5] > 0, dtype=np.float32)
    np.testing.assert_allclose(
        model.score_batch(np.arange(5), ds.matrix[:5]), (rows @ sim).toarray(), rtol=1e-6
    )


def test_itemknn_rejects_shrinkage_with_bm25() -> None:
    from sieve.config import ConfigError

    with pytest.raises(ConfigError, match="shrinkage"):
        ItemKNN(similarity="bm25", shrinkage=5.0)


# --------------------------------------------------------------- factorization
def _blocks() -> Dataset:
    rng = np.random.default_rng(11)
    rows = []
    for g in range(2):
        for u in range(25):
            for i in rng.choice(20, 12, replace=False):
                rows.append((f"g{g}u{u:02d}", f"g{g}i{i:02d}", "click", np.nan, T0))
    return Dataset.from_frames(_events(rows))


@pytest.mark.parametrize("klass", [ALS, BPR])
def test_factorization_is_seeded(klass: type[ALS] | type[BPR]) -> None:
    ds = _blocks()
    a = klass(factors=4, num_threads=1, iterations=20).fit(ds).state
    b = klass(factors=4, num_threads=1, iterations=20).fit(ds).state
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    c = klass(factors=4, num_threads=1, iterations=20, random_state=1).fit(ds).state
    assert not np.array_equal(a.item_factors, c.item_factors)
    assert a.user_factors.dtype == np.float32


@pytest.mark.parametrize("klass", [ALS, BPR])
def test_factorization_batch_top_n_matches_scores(klass: type[ALS] | type[BPR]) -> None:
    ds = _blocks()
    model = klass(factors=4, num_threads=1).fit(ds)
    users = np.arange(ds.n_users)
    top = model.recommend_batch(users, ds.matrix, 5)
    scores = model.score_batch(users, ds.matrix)
    r, c = ds.matrix.nonzero()
    scores[r, c] = -np.inf
    _, best = top_k(scores, 5)
    np.testing.assert_allclose(top.scores, best, rtol=1e-5, atol=1e-6)
    # n beyond the catalogue pads with -1 / -inf
    wide = model.recommend_batch(users[:2], ds.matrix[:2], ds.n_items + 3)
    assert wide.items.shape == (2, ds.n_items + 3)
    assert np.all(wide.items[:, -3:] == -1) and np.all(np.isneginf(wide.scores[:, -3:]))
    assert np.all(wide.items[0, : ds.n_items - ds.matrix[0].nnz] >= 0)


def test_als_fold_in_matches_the_learned_user() -> None:
    ds = _blocks()
    model = ALS(factors=4, num_threads=1, iterations=30).fit(ds)
    learned = model.score_batch(np.arange(10), ds.matrix[:10])
    folded = model.score_batch(np.full(10, -1), ds.matrix[:10])
    np.testing.assert_allclose(folded, learned, atol=0.05)


def test_bpr_item_vectors_drop_the_bias_column() -> None:
    ds = _blocks()
    model = BPR(factors=4, num_threads=1).fit(ds)
    assert model.state.item_factors.shape == (ds.n_items, 5)
    assert model.item_vectors().shape == (ds.n_items, 4)
    np.testing.assert_array_equal(model.state.user_factors[:, -1], 1.0)


def test_bpr_holdout_keeps_a_part_of_every_user() -> None:
    from sieve.models.factorization import _holdout

    x = sp.csr_matrix(_blocks().matrix)
    fit, held = _holdout(x, 0.2, 0)
    assert (fit + held - x).nnz == 0 and fit.multiply(held).nnz == 0  # a partition
    counts = np.diff(x.indptr)
    np.testing.assert_array_equal(held.getnnz(axis=1), np.rint(counts * 0.2))
    assert (fit.getnnz(axis=1) >= 1).all()
    one = sp.csr_matrix(np.array([[1.0, 0, 0], [1.0, 1.0, 0]]))
    assert _holdout(one, 0.9, 0)[1].getnnz(axis=1).tolist() == [0, 1]  # one kept to fit on


def test_bpr_holdout_parts_are_disjoint_and_leave_one_to_fit_on() -> None:
    from sieve.models.factorization import _holdout

    x = sp.csr_matrix(_blocks().matrix)
    a_fit, a = _holdout(x, 0.1, 0, part=0, parts=2)
    b_fit, b = _holdout(x, 0.1, 0, part=1, parts=2)
    assert a.nnz > 0 and a.multiply(b).nnz == 0  # disjoint parts
    np.testing.assert_array_equal(a.getnnz(axis=1), b.getnnz(axis=1))
    assert (a_fit + a - x).nnz == 0 and (b_fit + b - x).nnz == 0
    np.testing.assert_array_equal(a.getnnz(axis=1), np.rint(np.diff(x.indptr) * 0.1))
    # 3 interactions, 2 parts of 40%: each part holds 1, so at least 1 is left to fit on
    three = sp.csr_matrix(np.array([[1.0, 1.0, 1.0]]))
    held = [_holdout(three, 0.4, 0, part=p, parts=2)[1] for p in (0, 1)]
    assert [h.nnz for h in held] == [1, 1] and held[0].multiply(held[1]).nnz == 0
    four = sp.csr_matrix(np.array([[1.0, 1.0, 0.0, 0.0]]))
    assert _holdout(four, 0.5, 0, part=1, parts=2)[1].nnz == 0  # (2 − 1) // 2 = 0


def test_bpr_validation_parts_must_leave_data_to_fit_on() -> None:
    from sieve.config import ConfigError

    with pytest.raises(ConfigError, match="validation_parts"):
        BPR(validation_share=0.5, validation_parts=2)


def test_bpr_validation_ndcg_is_the_evaluation_ndcg() -> None:
    from sieve.evaluate.metrics import ndcg_at_k
    from sieve.models.factorization import _ndcg10

    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(30, 5)).astype(np.float32), rng.normal(size=(40, 5))
    seen = sp.random(30, 40, density=0.2, random_state=1, format="csr")
    held = sp.random(30, 40, density=0.1, random_state=2, format="csr")
    held = sp.csr_matrix((held - held.multiply(seen > 0)) > 0, dtype=np.float64)
    keep = held.getnnz(axis=1) > 0
    users, seen, held = users[keep], seen[keep], held[keep]
    scores = users @ items.T.astype(np.float32)
    scores[seen.nonzero()] = -np.inf
    top, _ = top_k(scores, 10)
    expected = float(np.mean(ndcg_at_k(top, held, 10)))
    assert _ndcg10(users, items.astype(np.float32), seen, held) == pytest.approx(expected)


def test_bpr_chooses_its_epochs_on_validation_reproducibly() -> None:
    ds = _blocks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = BPR(factors=4, iterations=60, check_every=10, min_iterations=30).fit(ds)
    assert a.fit_iterations is not None and a.fit_iterations % 10 == 0
    assert 10 <= a.fit_iterations <= 60
    assert any(
        f"{a.fit_iterations} epochs, chosen on a validation" in str(w.message) for w in caught
    )
    b = BPR(factors=4, iterations=60, check_every=10, min_iterations=30).fit(ds)
    np.testing.assert_array_equal(a.state.item_factors, b.state.item_factors)
    fixed = BPR(factors=4, iterations=60, validation_share=0).fit(ds)
    assert fixed.fit_iterations == 60
