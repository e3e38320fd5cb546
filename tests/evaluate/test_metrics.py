"""Offline metrics: hand-computed cases, edge cases and per-user agreement with ranx."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from sieve.evaluate import metrics as M

L3 = math.log2(3)  # DCG discount denominator at rank 2
L5 = math.log2(5)  # ... at rank 4


def csr(rows: list[dict[int, float]], n_items: int) -> sp.csr_matrix:
    """Sparse (users × items) matrix from one {item: value} dict per user."""
    r = [u for u, d in enumerate(rows) for _ in d]
    c = [i for d in rows for i in d]
    v = [x for d in rows for x in d.values()]
    return sp.csr_matrix((v, (r, c)), shape=(len(rows), n_items), dtype=np.float64)


# Four users, 10 items, lists of length 4 (user 1 padded):
#   u0: list [0, 1, 2, 3], relevant {1, 3, 8, 9}  -> hits at ranks 2 and 4
#   u1: list [4, 2, -1, -1], relevant {2}          -> hit at rank 2, padding after
#   u2: list [5, 6, 7, 8], relevant {0}            -> no hit
#   u3: list [0, 1, 2, 3], relevant {}             -> no relevant item at all
RECS = np.array([[0, 1, 2, 3], [4, 2, -1, -1], [5, 6, 7, 8], [0, 1, 2, 3]], dtype=np.int64)
REL = csr([{1: 1, 3: 1, 8: 1, 9: 1}, {2: 1}, {0: 1}, {}], 10)


def test_hits_matrix_marks_ranks_and_pads_beyond_list() -> None:
    hits = M.hits_matrix(RECS, REL, 6)  # k = 6 > K_max = 4: two extra False columns
    assert hits.shape == (4, 6)
    assert hits.dtype == np.bool_
    expected = np.zeros((4, 6), dtype=bool)
    expected[0, [1, 3]] = True
    expected[1, 1] = True
    np.testing.assert_array_equal(hits, expected)


def test_ranking_metrics_by_hand_k3() -> None:
    k = 3
    # u0 top-3 [0,1,2]: one hit at rank 2; u1 [4,2,-1]: hit at rank 2; u2, u3: none.
    # P@3: 1/3, 1/3 (divided by k even though u1 lists only 2 items), 0, 0
    np.testing.assert_allclose(M.precision_at_k(RECS, REL, k), [1 / 3, 1 / 3, 0, 0])
    # R@3: 1/4, 1/1, 0, 0 (u3 has no relevant item -> 0 by convention)
    np.testing.assert_allclose(M.recall_at_k(RECS, REL, k), [0.25, 1.0, 0, 0])
    # nDCG@3 u0: DCG = 1/log2(3); IDCG = 1 + 1/log2(3) + 1/log2(4) (4 relevant, cut at 3)
    # u1: DCG = 1/log2(3), IDCG = 1 (a single relevant item)
    ndcg_u0 = (1 / L3) / (1 + 1 / L3 + 0.5)
    np.testing.assert_allclose(M.ndcg_at_k(RECS, REL, k), [ndcg_u0, 1 / L3, 0, 0])
    # AP@3 u0: P@2 * 1 = 1/2, divided by |rel| = 4 -> 0.125 (min_k: by min(4,3) = 3 -> 1/6)
    # u1: P@2 = 1/2, divided by 1 -> 0.5
    np.testing.assert_allclose(M.average_precision_at_k(RECS, REL, k), [0.125, 0.5, 0, 0])
    np.testing.assert_allclose(
        M.average_precision_at_k(RECS, REL, k, normalization="min_k"), [1 / 6, 0.5, 0, 0]
    )
    # RR@3: first hit at rank 2 for u0 and u1
    np.testing.assert_allclose(M.reciprocal_rank(RECS, REL, k), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(M.hit_rate_at_k(RECS, REL, k), [1, 1, 0, 0])
    np.testing.assert_array_equal(M.has_relevant(REL), [True, True, True, False])


def test_ranking_metrics_k_larger_than_list() -> None:
    k = 6  # lists hold 4 items; ranks 5-6 are misses
    # u0: hits at ranks 2 and 4 -> P@6 = 2/6, R@6 = 2/4
    np.testing.assert_allclose(M.precision_at_k(RECS, REL, k)[0], 2 / 6)
    np.testing.assert_allclose(M.recall_at_k(RECS, REL, k)[0], 0.5)
    # AP@6 u0 = (P@2 + P@4) / 4 = (1/2 + 2/4) / 4 = 0.25; min(4, 6) = 4 gives the same
    np.testing.assert_allclose(M.average_precision_at_k(RECS, REL, k)[0], 0.25)
    np.testing.assert_allclose(
        M.average_precision_at_k(RECS, REL, k, normalization="min_k")[0], 0.25
    )
    # nDCG@6 u0: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/2 + 1/log2(5)
    dcg = 1 / L3 + 1 / L5
    idcg = 1 + 1 / L3 + 0.5 + 1 / L5
    np.testing.assert_allclose(M.ndcg_at_k(RECS, REL, k)[0], dcg / idcg)
    # u1 (a single relevant item): P@6 = 1/6
    np.testing.assert_allclose(M.precision_at_k(RECS, REL, k)[1], 1 / 6)


def test_perfect_single_relevant_item_scores_one() -> None:
    recs = np.array([[7, 1, 2]], dtype=np.int64)
    rel = csr([{7: 1}], 10)
    for fn in (M.recall_at_k, M.ndcg_at_k, M.average_precision_at_k, M.reciprocal_rank):
        assert fn(recs, rel, 3)[0] == pytest.approx(1.0)
    assert M.precision_at_k(recs, rel, 3)[0] == pytest.approx(1 / 3)


def test_graded_ndcg_by_hand() -> None:
    # gains a=0:3, b=1:1, c=2:2; list [1, 9, 0]
    # DCG = 1/log2(2) + 0 + 3/log2(4) = 1 + 1.5 = 2.5
    # IDCG = 3/1 + 2/log2(3) + 1/log2(4) = 3 + 2/log2(3) + 0.5
    recs = np.array([[1, 9, 0]], dtype=np.int64)
    rel = csr([{0: 3, 1: 1, 2: 2}], 10)
    expected = 2.5 / (3 + 2 / L3 + 0.5)
    assert M.ndcg_at_k(recs, rel, 3, gains="graded")[0] == pytest.approx(expected)
    # binary ignores the grades: DCG = 1 + 1/2, IDCG = 1 + 1/log2(3) + 1/2
    assert M.ndcg_at_k(recs, rel, 3)[0] == pytest.approx(1.5 / (1.5 + 1 / L3))
    with pytest.raises(ValueError):
        M.ndcg_at_k(recs, rel, 3, gains="exp")  # type: ignore[arg-type]


def test_non_positive_stored_values_are_not_relevant() -> None:
    recs = np.array([[0, 1, 2]], dtype=np.int64)
    rel = sp.csr_matrix(([0.0, -1.0, 1.0], ([0, 0, 0], [0, 1, 2])), shape=(1, 5))
    np.testing.assert_array_equal(M.hits_matrix(recs, rel, 3), [[False, False, True]])
    assert M.recall_at_k(recs, rel, 3)[0] == pytest.approx(1.0)  # |rel| = 1, not 3


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        M.precision_at_k(np.array([[0, 10]]), REL[:1], 2)  # item 10 >= n_items
    with pytest.raises(ValueError):
        M.precision_at_k(np.array([[0, -2]]), REL[:1], 2)
    with pytest.raises(ValueError):
        M.precision_at_k(RECS, REL, 0)
    with pytest.raises(ValueError):
        M.precision_at_k(RECS[:2], REL, 2)  # user count mismatch


# --------------------------------------------------------------------------------------
# Agreement with ranx
# --------------------------------------------------------------------------------------

N_USERS, N_ITEMS, LIST_LEN = 200, 100, 20
KS = (1, 5, 10, 20, 30)  # 30 > list length


@pytest.fixture(scope="module")
def random_run() -> dict[str, Any]:
    """Seeded random relevance (binary + graded) and ranked lists, some padded short."""
    rng = np.random.default_rng(20240611)
    rel_bin: list[dict[int, float]] = []
    rel_graded: list[dict[int, float]] = []
    recs = np.full((N_USERS, LIST_LEN), -1, dtype=np.int64)
    for u in range(N_USERS):
        n_rel = int(rng.integers(1, 16))
        # popular-skewed relevant items so lists get a fair number of hits
        items = rng.choice(N_ITEMS, size=n_rel, replace=False, p=_zipf(N_ITEMS))
        rel_bin.append({int(i): 1.0 for i in items})
        rel_graded.append({int(i): float(rng.integers(1, 5)) for i in items})
        length = LIST_LEN if rng.random() < 0.8 else int(rng.integers(0, LIST_LEN))
        recs[u, :length] = rng.choice(N_ITEMS, size=length, replace=False, p=_zipf(N_ITEMS))
    return {
        "recs": recs,
        "rel_bin": csr(rel_bin, N_ITEMS),
        "rel_graded": csr(rel_graded, N_ITEMS),
        "qrels_bin": rel_bin,
        "qrels_graded": rel_graded,
    }


def _zipf(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1)
    return w / w.sum()


def _ranx_scores(
    qrels: list[dict[int, float]], recs: np.ndarray, metrics: list[str]
) -> dict[str, np.ndarray]:
    ranx = pytest.importorskip("ranx")
    from numba.core.errors import NumbaTypeSafetyWarning

    # zero-padded query ids: ranx sorts queries by id, this keeps user order
    qd = {f"q{u:04d}": {f"d{i}": int(g) for i, g in d.items()} for u, d in enumerate(qrels)}
    rd = {
        f"q{u:04d}": {f"d{i}": float(LIST_LEN - r) for r, i in enumerate(row) if i >= 0}
        for u, row in enumerate(recs)
    }
    # ranx needs at least one doc per query: an empty list gets one doc that is never
    # relevant, which scores 0 everywhere exactly like our all-padding row.
    for docs in rd.values():
        if not docs:
            docs["d_none"] = 1.0
    with warnings.catch_warnings():
        # numba's compile-time note about a cast inside ranx; not about our code
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        out = ranx.evaluate(ranx.Qrels(qd), ranx.Run(rd), metrics, return_mean=False, threads=1)
    return {m: np.asarray(out[m], dtype=np.float64) for m in metrics}


@pytest.fixture(scope="module")
def ranx_results(random_run: dict[str, Any]) -> dict[str, np.ndarray]:
    names = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
    metrics = [f"{m}@{k}" for m in names for k in KS]
    res = _ranx_scores(random_run["qrels_bin"], random_run["recs"], metrics)
    graded = _ranx_scores(random_run["qrels_graded"], random_run["recs"], [f"ndcg@{k}" for k in KS])
    res.update({f"graded_{m}": v for m, v in graded.items()})
    return res


OURS = {
    "precision": M.precision_at_k,
    "recall": M.recall_at_k,
    "ndcg": M.ndcg_at_k,
    "map": M.average_precision_at_k,
    "mrr": M.reciprocal_rank,
    "hit_rate": M.hit_rate_at_k,
}


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("name", sorted(OURS))
def test_agrees_with_ranx_per_user(
    name: str, k: int, random_run: dict[str, Any], ranx_results: dict[str, np.ndarray]
) -> None:
    ours = OURS[name](random_run["recs"], random_run["rel_bin"], k)
    theirs = ranx_results[f"{name}@{k}"]
    assert ours.shape == theirs.shape == (N_USERS,)
    assert np.allclose(ours, theirs, atol=1e-9, rtol=0)


@pytest.mark.parametrize("k", KS)
def test_graded_ndcg_agrees_with_ranx(
    k: int, random_run: dict[str, Any], ranx_results: dict[str, np.ndarray]
) -> None:
    ours = M.ndcg_at_k(random_run["recs"], random_run["rel_graded"], k, gains="graded")
    theirs = ranx_results[f"graded_ndcg@{k}"]
    assert np.allclose(ours, theirs, atol=1e-9, rtol=0)
    # graded and binary really differ on this data, so the check above has teeth
    binary = M.ndcg_at_k(random_run["recs"], random_run["rel_graded"], k)
    assert not np.allclose(ours, binary, atol=1e-6)


def test_random_run_is_not_degenerate(random_run: dict[str, Any]) -> None:
    hits = M.hits_matrix(random_run["recs"], random_run["rel_bin"], 20)
    assert 0.05 < hits.any(axis=1).mean() < 0.95
    assert (random_run["recs"][:, -1] == -1).sum() > 10  # padded short lists exist


# --------------------------------------------------------------------------------------
# Rating metrics
# --------------------------------------------------------------------------------------


def test_rating_errors() -> None:
    pred, truth = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 5.0, 3.0]
    # errors 0, 0, -2, 1 -> squared 0, 0, 4, 1; absolute 0, 0, 2, 1
    np.testing.assert_allclose(M.squared_errors(pred, truth), [0, 0, 4, 1])
    np.testing.assert_allclose(M.absolute_errors(pred, truth), [0, 0, 2, 1])
    assert M.rmse(pred, truth) == pytest.approx(math.sqrt(5 / 4))
    assert M.mae(pred, truth) == pytest.approx(3 / 4)
    # users 0, 0, 2, 2 (user 1 has no rating): MSE_0 = 0, MSE_2 = (4 + 1) / 2
    per_user = M.per_user_error(pred, truth, [0, 0, 2, 2])
    np.testing.assert_allclose(per_user, [0.0, np.nan, 2.5])
    per_user_abs = M.per_user_error(pred, truth, [0, 0, 2, 2], kind="absolute", n_users=4)
    np.testing.assert_allclose(per_user_abs, [0.0, np.nan, 1.5, np.nan])
    with pytest.raises(ValueError):
        M.rmse([1.0], [1.0, 2.0])


# --------------------------------------------------------------------------------------
# Beyond accuracy
# --------------------------------------------------------------------------------------


def test_catalog_coverage() -> None:
    recs = np.array([[0, 1, 9], [1, 2, 3], [-1, -1, -1]])
    # top-2 lists: {0, 1} ∪ {1, 2} = 3 of 10 items (item 9 and 3 are beyond k)
    assert M.catalog_coverage(recs, 10, 2) == pytest.approx(0.3)
    assert M.catalog_coverage(recs, 10, 3) == pytest.approx(0.5)


def test_exposure_gini_hand_cases() -> None:
    # every item shown exactly once -> 0
    assert M.exposure_gini(np.array([[0, 1], [2, 3]]), 4, 2) == pytest.approx(0.0)
    # all exposure on one of n = 5 items -> (n - 1) / n
    assert M.exposure_gini(np.array([[0], [0], [0]]), 5, 1) == pytest.approx(0.8)
    # counts [3, 1]: sorted [1, 3] -> ((2·1−3)·1 + (2·2−3)·3) / (2 · 4) = 2 / 8
    assert M.exposure_gini(np.array([[0, -1], [0, 1], [0, -1]]), 2, 2) == pytest.approx(0.25)
    # position weighted, one list [0, 1]: c = [1, 1/log2(3)] -> (c1 − c0_sorted) / (2 Σc)
    c = np.array([1 / L3, 1.0])
    expected = (c[1] - c[0]) / (2 * c.sum())
    got = M.exposure_gini(np.array([[0, 1]]), 2, 2, position_weighted=True)
    assert got == pytest.approx(expected)
    assert M.exposure_gini(np.full((2, 3), -1), 4, 3) == 0.0


def test_exposure_gini_matches_mean_absolute_difference_form() -> None:
    rng = np.random.default_rng(3)
    n_items = 30
    recs = np.stack([rng.choice(n_items, 5, replace=False, p=_zipf(n_items)) for _ in range(50)])
    counts = np.bincount(recs.ravel(), minlength=n_items).astype(float)
    # G = Σ_i Σ_j |c_i − c_j| / (2 n² mean(c))
    mad = np.abs(counts[:, None] - counts[None, :]).sum() / (2 * n_items**2 * counts.mean())
    assert M.exposure_gini(recs, n_items, 5) == pytest.approx(mad, abs=1e-12)


def test_intra_list_diversity_by_hand() -> None:
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # pairs of [0, 1, 2]: 1 − 0 = 1, 1 − 1/√2, 1 − 1/√2 -> mean (1 + 2(1 − 1/√2)) / 3
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    recs = np.array([[0, 1, 2], [0, -1, -1], [0, 0 + 2, 3]])
    got = M.intra_list_diversity(recs, vecs, 3)
    # u1: one valid item -> 0; u2 [0, 2, 3]: 1 − 1/√2, 1 (zero vector), 1 -> mean
    u2 = ((1 - 1 / math.sqrt(2)) + 1 + 1) / 3
    np.testing.assert_allclose(got, [expected, 0.0, u2])
    np.testing.assert_allclose(M.intra_list_diversity(recs, sp.csr_matrix(vecs), 3), got)
    # one-hot categories: items 0, 1 in A, item 2 in B -> distances 0, 1, 1 -> 2/3
    cats = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1]], dtype=float))
    assert M.intra_list_diversity(np.array([[0, 1, 2]]), cats, 3)[0] == pytest.approx(2 / 3)


def test_intra_list_diversity_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    vecs = rng.normal(size=(40, 6))
    recs = np.stack([rng.choice(40, 8, replace=False) for _ in range(25)])
    recs[3, 5:] = -1
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    expected = []
    for row in recs:
        items = row[row >= 0]
        d = [1 - unit[a] @ unit[b] for i, a in enumerate(items) for b in items[i + 1 :]]
        expected.append(np.mean(d))
    np.testing.assert_allclose(M.intra_list_diversity(recs, vecs, 8), expected, atol=1e-12)
    sparse_vecs = sp.csr_matrix(np.where(np.abs(vecs) > 0.5, vecs, 0.0))
    dense_equiv = sparse_vecs.toarray()
    np.testing.assert_allclose(
        M.intra_list_diversity(recs, sparse_vecs, 8),
        M.intra_list_diversity(recs, dense_equiv, 8),
        atol=1e-12,
    )


def test_novelty_by_hand() -> None:
    pop = np.array([10, 5, 0])  # n_users = 10
    recs = np.array([[0, 1, 2], [2, -1, -1], [-1, -1, -1]])
    # −log2(10/10) = 0, −log2(5/10) = 1, pop 0 -> 1: −log2(1/10) = log2(10)
    expected = [(0 + 1 + math.log2(10)) / 3, math.log2(10), 0.0]
    np.testing.assert_allclose(M.novelty(recs, pop, 10, 3), expected)


def test_serendipity_by_hand() -> None:
    rel = csr([{0: 1, 3: 1}, {1: 1}], 6)
    recs = np.array([[0, 3, 5], [1, 2, 4]])
    popular = np.array([0, 1, 2, 4])
    # u0: relevant {0, 3} listed, 0 is in the popular top-3 [0, 1, 2] -> only 3 -> 1/3
    # u1: relevant 1 is popular -> 0
    np.testing.assert_allclose(M.serendipity(recs, rel, popular, 3), [1 / 3, 0.0])
    # per-user primitive lists (e.g. popularity minus seen items)
    per_user = np.array([[3, 4, 5], [0, 2, 3]])
    # u0: 0 unexpected & relevant, 3 expected -> 1/3; u1: 1 unexpected & relevant -> 1/3
    np.testing.assert_allclose(M.serendipity(recs, rel, per_user, 3), [1 / 3, 1 / 3])
    assert np.all(M.serendipity(recs, rel, popular, 3) <= M.precision_at_k(recs, rel, 3))


def test_long_tail_share_by_hand() -> None:
    pop = np.array([100, 50, 10, 5, 1])
    recs = np.array([[0, 1, 2], [3, 4, -1], [-1, -1, -1]])
    # head_share 0.2 of 5 items -> head = {0}; u0: 2 of 3 in the tail; u1: 2 of 2
    np.testing.assert_allclose(M.long_tail_share(recs, pop, 3), [2 / 3, 1.0, 0.0])
    # head_share 0.4 -> head = {0, 1}
    np.testing.assert_allclose(M.long_tail_share(recs, pop, 3, head_share=0.4), [1 / 3, 1, 0])


def test_group_fairness() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    groups = np.array(["young", "young", "old", "old", "old"], dtype=object)
    rep = M.group_fairness(values, groups)
    # old: (3 + 4 + 6) / 3 = 13/3; young: 1.5
    assert rep.means == {"old": pytest.approx(13 / 3), "young": pytest.approx(1.5)}
    assert rep.counts == {"old": 3, "young": 2}
    assert rep.gap == pytest.approx(13 / 3 - 1.5)
    assert rep.ratio == pytest.approx(1.5 / (13 / 3))
    assert M.group_fairness(np.zeros(2), np.array([1, 2])).ratio == 1.0


def test_calibration_kl() -> None:
    # categories: A = 0, B = 1; items 0: A, 1: A+B, 2: A, 3: B, 4: none
    cats = sp.csr_matrix(np.array([[1, 0], [1, 1], [1, 0], [0, 1], [0, 0]], dtype=float))
    hist = csr([{0: 1, 3: 1}, {0: 1, 1: 1}, {0: 1, 1: 1}], 5)
    recs = np.array([[2, 3], [2, -1], [-1, -1]])
    # u0: p = (1/2, 1/2) from {A, B}; list {A, B} -> q = p -> KL = 0, even with alpha = 0
    assert M.calibration_kl(recs, hist, cats, 2, alpha=0.0)[0] == pytest.approx(0.0, abs=1e-15)
    got = M.calibration_kl(recs, hist, cats, 2, alpha=0.01)
    assert got[0] == pytest.approx(0.0, abs=1e-15)
    # u1: p(A) = (1 + 1/2) / 2 = 3/4, p(B) = 1/4; list [2] -> q = (1, 0)
    # q̃ = (0.99 · 1 + 0.01 · 3/4, 0.01 · 1/4); KL = Σ p ln(p / q̃)
    qa, qb = 0.99 + 0.01 * 0.75, 0.01 * 0.25
    assert got[1] == pytest.approx(0.75 * math.log(0.75 / qa) + 0.25 * math.log(0.25 / qb))
    # u2: empty list -> q̃ = α p -> KL = ln(1 / α)
    assert got[2] == pytest.approx(math.log(100))
    # the miscalibrated list scores worse than the calibrated one
    assert got[1] > got[0]


def test_metric_docs_cover_the_metrics() -> None:
    names = ("precision", "recall", "ndcg", "map", "mrr", "hitrate", "coverage", "gini", "ild")
    for name in (*names, "novelty", "serendipity", "longtail", "calibration_kl", "rmse", "mae"):
        assert M.METRIC_DOCS.get(name)
