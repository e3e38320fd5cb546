"""Candidate generation: the ANN index, the merge (quotas, dedup, source
memory) and the request filters."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.models.factorization import ALS
from sieve.pipeline import Funnel, FunnelConfig, featurize
from sieve.retrieval.ann import AnnConfig, AnnIndex
from sieve.retrieval.candidates import SOURCES, Proposal, merge
from sieve.retrieval.content import ContentIndex
from sieve.types import Query

SPEC = "synthetic:users=300,items=200,seed=1"
#: One thread per library: fast and steady on a busy two-core machine.
SINGLE_THREADED = FunnelConfig.from_dict(
    {"als": {"num_threads": 1}, "itemknn": {"num_threads": 1}, "ranker": {"num_threads": 1}}
)


@cache
def data() -> Dataset:
    return load_data(SPEC).to_dataset()


@cache
def fitted() -> Funnel:
    return Funnel(SINGLE_THREADED).fit(data())


def _row(u: int) -> Query:
    m = data().matrix
    lo, hi = m.indptr[u], m.indptr[u + 1]
    return Query(
        user=u, history=m.indices[lo:hi].astype(np.int64), history_weights=m.data[lo:hi], n=20
    )


# ------------------------------------------------------------------------ ANN
def test_ann_exact_mode_returns_the_exact_top_k() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    index = AnnIndex.build(vectors, AnnConfig())
    assert index.exact
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    ids, scores = index.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, truth, 1), rtol=1e-5)


def test_ann_hnsw_above_the_threshold_has_high_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(
        np.float32
    )
    index = AnnIndex.build(vectors, AnnConfig(exact_max_items=1000))
    assert not index.exact
    # user-like queries: mixtures of the tastes the items come from
    queries = (centres[rng.integers(0, 20, 50)] + 0.3 * rng.normal(size=(50, 16))).astype(
        np.float32
    )
    found = index.search(queries, 20)[0]
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :20]
    recall = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95
    loaded = AnnIndex.load(index.save(tmp_path / "ann"))
    np.testing.assert_array_equal(loaded.search(queries, 20)[0], found)


def test_ann_pads_when_asked_for_more_than_it_holds() -> None:
    index = AnnIndex.build(np.eye(3, dtype=np.float32))
    ids, _ = index.search(np.ones(3, np.float32), 10)
    assert sorted(ids[0].tolist()) == [0, 1, 2]


def test_ann_search_many_is_each_rows_own_search_with_its_exclusions() -> None:
    """A block's searches, each row with its own excluded items, against one
    `search` per row skipping them inside the index: the same ids and the
    same scores, ties (duplicate vectors) included, and -1 padding where the
    exclusions leave fewer than k items."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors[150:160] = vectors[10]  # ties
    for config in (AnnConfig(), AnnConfig(exact_max_items=100)):
        index = AnnIndex.build(vectors, config)
        queries = rng.normal(size=(45, 8)).astype(np.float32)
        queries[5] = vectors[10]
        exclude = [np.sort(rng.permutation(300)[: rng.choice([0, 3, 40, 295])]) for _ in queries]
        ids, scores = index.search_many(queries, 12, exclude)
        assert ids.shape == scores.shape == (45, 12)
        for r, row in enumerate(queries):
            one_ids, one_scores = index.search(row, 12, exclude=exclude[r])
            np.testing.assert_array_equal(ids[r], one_ids[0])
            np.testing.assert_array_equal(scores[r], one_scores[0])
            assert not np.isin(ids[r][ids[r] >= 0], exclude[r]).any()
        assert (ids == -1).any()  # the 295 exclusions leave 5 items or fewer


# ---------------------------------------------------------------------- merge
def test_merge_keeps_quotas_dedups_and_remembers_sources() -> None:
    ann = Proposal("ann", np.array([5, 6, 7, 8]), np.array([0.9, 0.8, 0.7, 0.6], np.float32))
    i2i = Proposal("item_to_item", np.array([7, 9, 5]), np.array([3.0, 2.0, 1.0], np.float32))
    pop = Proposal("popular", np.array([1, 5, 2]), np.array([10.0, 9.0, 8.0], np.float32))
    quotas = {s: 0 for s in SOURCES} | {"ann": 3, "item_to_item": 3, "popular": 1}
    cands = merge([ann, i2i, pop], quotas, lambda items: items != 6)  # 6 is filtered
    assert sorted(cands.items.tolist()) == [1, 5, 7, 8, 9]
    row = {int(i): k for k, i in enumerate(cands.items)}
    col = {s: k for k, s in enumerate(SOURCES)}
    # ann's quota of 3 survivors: 5, 7, 8 (6 filtered), ranked 1..3 among survivors
    assert cands.ranks[row[8], col["ann"]] == 3
    assert cands.scores[row[7], col["ann"]] == pytest.approx(0.7)
    # item 7 was proposed by both
    assert cands.ranks[row[7], col["item_to_item"]] == 1
    assert cands.n_sources[row[5]] == 2
    # popular's quota of 1 keeps only its best survivor
    assert cands.proposed("popular").sum() == 1 and cands.proposed("popular")[row[1]]
    assert np.isnan(cands.ranks[row[9], col["ann"]])


def test_sources_respect_their_quotas_on_a_real_request() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    req = engine.request(_row(3))
    cands = engine.candidates(req)
    assert len(np.unique(cands.items)) == len(cands)
    for s in SOURCES:
        assert cands.proposed(s).sum() <= engine.config.quota(s)
    assert cands.proposed("item_to_item").any() and cands.proposed("ann").any()


def _block_queries() -> list[Query]:
    """Requests of every kind: training rows, sessions, fold-ins, exclusions,
    category filters and the cold start."""
    queries = [_row(u) for u in range(0, 60, 2)]
    for u in range(1, 40, 3):
        q = _row(u)
        queries.append(
            Query(
                user=u if u % 2 else -1,
                history=q.history[:-2],
                history_weights=q.history_weights[:-2],
                recent=tuple(int(i) for i in q.history[-3:]),
                recent_types=("click",) * 3,
                exclude=frozenset(int(i) for i in q.history[:2]) | {u},
                categories=("horror",) if u % 5 == 0 else (),
                n=20,
            )
        )
    return [*queries, Query(n=10), Query(recent=(3, 5), recent_types=("click", "view"), n=10)]


def test_a_block_of_requests_gets_each_requests_own_proposals() -> None:
    """Every source's proposals (items, scores), the category shares, the
    merged candidates and their item-to-item anchors of requests normalised
    and proposed as one block (more than a sub-block) are those of each
    request alone."""
    engine = fitted().state.engine
    queries = _block_queries()
    reqs = engine.requests(queries)
    block = engine.propose_many(reqs)
    merged = engine.candidates_many(engine.requests(queries))
    for query, req, props, cands in zip(queries, reqs, block, merged, strict=True):
        alone = engine.request(query)
        np.testing.assert_array_equal(req.affinity, alone.affinity)
        own = engine.propose(alone)
        assert [p.source for p in props] == [p.source for p in own]
        for a, b in zip(props, own, strict=True):
            np.testing.assert_array_equal(a.items, b.items)
            np.testing.assert_array_equal(a.scores, b.scores)
        one = engine.candidates(engine.request(query))
        np.testing.assert_array_equal(cands.items, one.items)
        np.testing.assert_array_equal(cands.scores, one.scores)
        i2i = cands.items[cands.proposed("item_to_item")]
        np.testing.assert_array_equal(
            engine.best_anchors(req, i2i), engine.best_anchors(alone, i2i)
        )
    sources = {p.source for props in block for p in props}
    assert {"ann", "item_to_item", "content", "ease", "popular"} <= sources


def test_content_profiles_sum_each_items_row_with_new_text_from_the_delta() -> None:
    """`ContentIndex.profiles`: each profile the unit-norm weighted sum of its
    items' rows, an item with new text read from the delta block, whatever
    the other profiles of the block."""
    engine = fitted().state.engine
    assert engine.content is not None
    index = ContentIndex(engine.content.model)
    n = engine.catalog.n_items
    index.set_rows(np.array([4]), ["a brand new text about horror and space"], n)
    rng = np.random.default_rng(5)
    items = [np.unique(rng.integers(0, n, size)) for size in (1, 7, 30, 12)] + [np.array([4, 9])]
    weights = [rng.uniform(0.5, 2.0, len(i)) for i in items]
    found = index.profiles(items, weights, n)
    for its, w, profile in zip(items, weights, found, strict=True):
        rows = sp.vstack([index.delta[0] if i == 4 else index.base[i] for i in its])
        dense = np.asarray(rows.T @ w).ravel()
        dense /= np.linalg.norm(dense)
        assert profile is not None
        terms, values = profile
        np.testing.assert_array_equal(terms, np.flatnonzero(dense))
        np.testing.assert_allclose(values, dense[terms], rtol=1e-6)
        assert index.profile(its, w, n) is not None
        np.testing.assert_array_equal(index.profile(its, w, n)[1], values)  # type: ignore[index]


# -------------------------------------------------------------------- filters
def test_seen_items_are_never_recommended() -> None:
    funnel = fitted()
    q = _row(7)
    recs = funnel.recommend_query(q)
    assert len(recs) == q.n
    assert not {r.item for r in recs} & set(q.history.tolist())


def test_excluded_items_are_filtered() -> None:
    funnel = fitted()
    first = [r.item for r in funnel.recommend_query(_row(7))]
    q = _row(7)
    again = funnel.recommend_query(
        Query(
            user=q.user,
            history=q.history,
            history_weights=q.history_weights,
            n=20,
            exclude=frozenset(first[:5]),
        )
    )
    assert not {r.item for r in again} & set(first[:5])


def test_category_restriction_keeps_only_those_categories() -> None:
    funnel = fitted()
    q = _row(11)
    recs = funnel.recommend_query(
        Query(
            user=q.user,
            history=q.history,
            history_weights=q.history_weights,
            n=10,
            categories=("horror",),
        )
    )
    assert len(recs) == 10
    assert all("horror" in funnel.item_categories(r.item) for r in recs)
    cold = funnel.recommend_query(Query(n=5, categories=("horror", "music")))
    assert cold and all({"horror", "music"} & set(funnel.item_categories(r.item)) for r in cold)


def test_unavailable_items_are_filtered(tmp_path: Path) -> None:
    funnel = Funnel.load(fitted().save(tmp_path / "f"))
    first = [r.item for r in funnel.recommend_query(_row(7))]
    gone = [funnel.item_ids[i] for i in first[:3]]
    funnel.add_items(pd.DataFrame({"item_id": gone, "available": [False] * 3}))
    assert not funnel.is_available(first[0])
    after = [r.item for r in funnel.recommend_query(_row(7))]
    assert not set(after) & set(first[:3])
    assert not {r.item for r in funnel.popular(50)} & set(first[:3])


def test_fold_in_is_one_exact_als_step() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    als = engine.als
    assert isinstance(als, ALS)
    q = _row(5)
    req = engine.request(Query(user=-1, history=q.history, history_weights=q.history_weights))
    ours = engine.user_vector(req)
    assert ours is not None
    row = data().matrix[5]
    theirs = als._model().recalculate_user(0, row)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    # the same history as in training: the trained vector
    known = engine.user_vector(engine.request(q))
    np.testing.assert_array_equal(known, als.state.user_factors[5])


def test_newer_history_is_folded_in() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    q = _row(5)
    newer = np.concatenate([q.history, [int(np.setdiff1d(np.arange(200), q.history)[0])]])
    req = engine.request(Query(user=5, history=newer))
    vec = engine.user_vector(req)
    assert vec is not None
    assert not np.allclose(vec, engine.als.state.user_factors[5])  # type: ignore[union-attr]


def test_featurize_runs_the_same_code_for_any_caller() -> None:
    engine = fitted().state.engine
    a = featurize(engine, _row(9), None)
    b = featurize(engine, _row(9), None)
    np.testing.assert_array_equal(a[1].items, b[1].items)
    assert a[2] is not None and b[2] is not None
    np.testing.assert_array_equal(a[2], b[2])


def test_content_search_is_exact_within_its_budget_and_bounded_beyond() -> None:
    """`ContentIndex.top` against the dense cosine of every item: the same
    top-k when the budget covers the profile's posting lists; with a small
    budget it reads only the strongest postings, and every item it returns
    carries its exact cosine and would rank in the dense order it claims."""
    funnel = fitted()
    engine = funnel.state.engine
    index = engine.content
    assert index is not None
    n = engine.catalog.n_items
    m = data().matrix
    checked = 0
    for u in range(0, 60, 3):
        req = engine.request(_row(u))
        profile = engine.content_profile(req)
        if profile is None:
            continue
        terms, weights = profile
        dense = index.scores(terms, weights, n)
        exact_items, exact_scores = index.top(terms, weights, 15, n, budget=10**9)
        positive = np.flatnonzero(dense > 0)
        expected = positive[np.argsort(-dense[positive], kind="stable")][:15]
        assert np.allclose(exact_scores, dense[expected])
        assert set(exact_items) == set(expected) or np.allclose(
            np.sort(dense[exact_items]), np.sort(dense[expected])
        )
        postings = int(np.diff(index.base_csc.indptr)[terms].sum())
        small = max(postings // 5, 1)
        items, scores = index.top(terms, weights, 15, n, budget=small)
        assert np.allclose(scores, dense[items])  # exact cosines, re-scored from the rows
        assert np.all(np.diff(scores) <= 0) and np.all(scores > 0)
        assert np.allclose(index.cosines(items, terms, weights, n), dense[items])
        checked += 1
    assert checked >= 10 and m.shape[1] == n


def test_sparse_row_gathers_match_scipy() -> None:
    """`gather_rows` / `row_sums` are scipy's row indexing, on the arrays."""
    import scipy.sparse as sp

    from sieve.sparse import gather_rows, row_sums

    rng = np.random.default_rng(3)
    m = sp.random(40, 25, density=0.2, format="csr", random_state=4, dtype=np.float64)
    rows = rng.integers(0, 40, size=17)
    which, cols, vals = gather_rows(m, rows)
    dense = np.zeros((len(rows), 25))
    np.add.at(dense, (which, cols), vals)
    assert np.allclose(dense, m[rows].toarray())
    w = rng.random(len(rows))
    assert np.allclose(row_sums(m, rows, w, 25), np.asarray(m[rows].T @ w).ravel())
    which, cols, _ = gather_rows(m, rows, limit=1)
    assert np.all(np.bincount(which, minlength=len(rows)) <= 1)


def test_positive_sums_are_the_bincounts_positive_entries_bit_for_bit() -> None:
    """`positive_sums` (and `nonzero_sums`, every non-zero entry) against
    `np.bincount` over `gather_rows`: the same
    columns in ascending order and the same float bits, with and without a
    per-row limit, with negative weights (sums that cancel or fall below 0),
    over few columns touched (sorted) and many (scanned); the thread's
    scratch row is left zeroed, so a call never sees the last one's sums."""
    import scipy.sparse as sp

    from sieve.sparse import _scratch, gather_rows, nonzero_sums, positive_sums

    rng = np.random.default_rng(11)
    for n_rows, n_cols, density in ((30, 5000, 0.001), (40, 300, 0.3), (8, 20000, 0.0002)):
        m = sp.random(
            n_rows, n_cols, density=density, format="csr", random_state=5, dtype=np.float32
        )
        m.data = np.round(m.data, 1)  # equal products: sums that cancel exactly
        for limit in (None, 1, 3):
            rows = rng.integers(0, n_rows, size=12)
            weights = rng.choice([-1.0, -0.5, 0.25, 1.0, 3.0], size=12)
            which, cols, vals = gather_rows(m, rows, limit=limit)
            dense = np.bincount(cols, weights=vals * weights[which], minlength=n_cols)
            expected = np.flatnonzero(dense > 0)
            got_cols, got = positive_sums(m, rows, weights, n_cols, limit=limit)
            assert got_cols.tolist() == expected.tolist()
            assert got.tobytes() == dense[expected].tobytes()
            assert not _scratch(n_cols)[:n_cols].any()
            if limit is None:  # `nonzero_sums`: every non-zero sum, negative ones too
                nonzero = np.flatnonzero(dense != 0)
                assert (dense[nonzero] < 0).any()
                got_cols, got = nonzero_sums(m, rows, weights, n_cols)
                assert got_cols.tolist() == nonzero.tolist()
                assert got.tobytes() == dense[nonzero].tobytes()
                assert not _scratch(n_cols)[:n_cols].any()
    empty_cols, empty = positive_sums(m, np.empty(0, np.int64), np.empty(0), 20000)
    assert len(empty_cols) == 0 and len(empty) == 0


def test_fresh_chart_leaves_out_items_not_released_yet() -> None:
    cat = fitted().state.engine.catalog.copy()
    ranked = cat.ranked("fresh", np.empty(0, np.int64))
    times = cat.created_at[ranked]
    now = float(np.median(times))
    fresh = cat.fresh(np.empty(0, np.int64), now)
    assert fresh.tolist() == ranked[times <= now].tolist() and 0 < len(fresh) < len(ranked)
    assert len(cat.fresh(np.empty(0, np.int64), float(times.max()))) == len(ranked)


def test_positions_same_by_lookup_table_and_by_search() -> None:
    """`positions` answers the same whether it takes the lookup table (small
    index range) or the sort-and-search path (large range, negative values)."""
    from sieve.retrieval.candidates import positions

    rng = np.random.default_rng(3)
    items = rng.choice(500, 40, replace=False).astype(np.int64)
    values = rng.integers(0, 600, 300).astype(np.int64)
    expected = np.array([int(np.flatnonzero(items == v)[0]) if v in items else -1 for v in values])
    assert (positions(values, items) == expected).all()  # table
    far = values * 10_000_000  # a range the table does not take
    assert (positions(far, items * 10_000_000) == expected).all()
    assert (positions(np.append(values, -1), items)[-1]) == -1  # negative: searched
    assert len(positions(np.empty(0, np.int64), items)) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_compiled_maximum_and_minimum_at_equal_numpys_ufunc_at(dtype: type) -> None:
    """Repeated indices, ties, -0.0 against 0.0 and NaN, as `ufunc.at` has them."""
    from sieve.sparse import maximum_at, minimum_at

    rng = np.random.default_rng(5)
    index = rng.integers(0, 20, 400)
    values = rng.integers(-5, 6, 400).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        values[::37] = -0.0
        values[5] = np.nan
    for ours, numpys in ((maximum_at, np.maximum.at), (minimum_at, np.minimum.at)):
        got = np.zeros(21, dtype=dtype)
        want = np.zeros(21, dtype=dtype)
        ours(got, index, values)
        numpys(want, index, values)
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(np.signbit(got), np.signbit(want))
