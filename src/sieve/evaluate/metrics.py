"""Offline recommendation metrics, vectorised with numpy (float64 throughout).

Conventions shared by every ranking function
--------------------------------------------
* ``recs`` is an int64 array of shape ``(U, K_max)``: row ``u`` holds item indices
  ranked best-first, padded with ``-1`` where fewer items were recommended. A ``-1``
  is a miss wherever it sits. Lists are assumed duplicate-free (a top-N never repeats
  an item); duplicates are not detected and would be counted twice.
* ``k`` is the cut-off. If ``K_max < k`` the lists are treated as padded with ``-1``
  up to ``k`` so that, e.g., precision still divides by ``k``.
* ``relevant`` is a sparse ``(U, n_items)`` matrix (CSR or anything ``scipy.sparse``
  converts to CSR): row ``u`` holds the user's test items. Stored values are gains;
  only entries ``> 0`` count as relevant (explicit zeros / negatives are ignored).
  Binary metrics use relevance = 1 for every such entry.
* Per-user functions return ``NDArray[np.float64]`` of shape ``(U,)`` so the caller
  can build confidence intervals and paired tests (see :mod:`sieve.evaluate.stats`).
* Users with no relevant item get **0.0** from every ranking metric (the convention of
  ranx and trec_eval). Such users carry no information about ranking quality, so the
  caller should drop them first; :func:`has_relevant` returns the mask to do so.

Agreement with ranx (``precision``, ``recall``, ``ndcg``, ``map``, ``mrr``,
``hit_rate`` at k) is checked per user to 1e-9 in the test suite.

Size: one module holds every metric, each with its formula, so a formula is
defined once and docs/metrics.md maps onto it line by line; each function is
short and independent of the others.

Longer than most modules: a catalogue of independent metrics, each with its
formula; it grows with the catalogue, not with coupling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

__all__ = [
    "METRIC_DOCS",
    "GroupReport",
    "absolute_errors",
    "average_precision_at_k",
    "calibration_kl",
    "catalog_coverage",
    "exposure_gini",
    "group_fairness",
    "has_relevant",
    "hit_rate_at_k",
    "hits_matrix",
    "intra_list_diversity",
    "long_tail_share",
    "mae",
    "ndcg_at_k",
    "novelty",
    "per_user_error",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank",
    "rmse",
    "serendipity",
    "squared_errors",
]


#: Short formula per metric, keyed by the name prefix used in result tables ("ndcg@10").
METRIC_DOCS: dict[str, str] = {
    "precision": "P@k = |top-k ∩ rel_u| / k  (divides by k even if the list is shorter)",
    "recall": "R@k = |top-k ∩ rel_u| / |rel_u|",
    "ndcg": (
        "nDCG@k = DCG@k / IDCG@k, DCG@k = Σ_{i≤k} g_i / log2(i+1); g_i = 1 if relevant "
        "(binary) or the stored gain (graded); IDCG@k = DCG of the user's gains sorted "
        "descending, truncated to k"
    ),
    "map": "AP@k = Σ_{i≤k} P@i · rel_i / |rel_u|  (ranx/trec_eval normalisation)",
    "mrr": "RR@k = 1 / rank of the first relevant item within the top k, else 0",
    "hitrate": "HR@k = 1 if any of the top k is relevant, else 0",
    "rmse": "RMSE = sqrt(mean((r̂ − r)²)) over test ratings",
    "mae": "MAE = mean(|r̂ − r|) over test ratings",
    "coverage": "Coverage@k = |∪_u top-k_u| / n_items",
    "ild": "ILD@k = mean over pairs i<j in top-k_u of (1 − cos(v_i, v_j))",
    "novelty": "Novelty@k = mean_{i∈top-k_u} −log2(max(pop_i, 1) / n_users)",
    "serendipity": (
        "Serendipity@k = |{i ∈ top-k_u : i ∈ rel_u and i ∉ top-k of the primitive "
        "(e.g. popularity) recommender}| / k"
    ),
    "gini": (
        "Gini = Σ_j (2j − n − 1) c_(j) / (n Σ_j c_j), exposure counts c sorted ascending "
        "over all n catalog items (0 = equal exposure, (n−1)/n = one item gets all)"
    ),
    "longtail": (
        "LongTail@k = share of top-k_u outside the head (head = the ⌈0.2·n_items⌉ most "
        "popular items)"
    ),
    "calibration_kl": (
        "C_KL = Σ_c p(c|u) log(p(c|u) / q̃(c|u)), q̃ = (1−α) q + α p, p from the user's "
        "history, q from the top-k list (Steck 2018)"
    ),
}


# --------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------


def _topk(recs: ArrayLike, k: int, n_items: int | None = None) -> IntArray:
    """Validate ``recs`` and return its first ``k`` columns, padded with -1 to width k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    arr = np.asarray(recs)
    if arr.ndim != 2:
        raise ValueError(f"recs must be 2-D (users × ranks), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"recs must hold integer item indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size:
        if arr.min() < -1:
            raise ValueError("recs may only contain item indices >= 0 or the -1 padding")
        if n_items is not None and arr.max() >= n_items:
            raise ValueError(f"recs contains item index {arr.max()} >= n_items={n_items}")
    top = arr[:, :k]
    if top.shape[1] < k:
        pad = np.full((arr.shape[0], k - top.shape[1]), -1, dtype=np.int64)
        top = np.hstack([top, pad])
    return np.ascontiguousarray(top)


def _canonical(matrix: object) -> sp.csr_matrix:
    """CSR float64 copy with sorted indices, summed duplicates and only positive entries."""
    m = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    m.sum_duplicates()
    m.data[m.data < 0] = 0.0
    m.eliminate_zeros()
    return m


def _row_ids(m: sp.csr_matrix) -> IntArray:
    """Row index of every stored entry of a CSR matrix."""
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def _lookup(m: sp.csr_matrix, rows: IntArray, cols: IntArray) -> FloatArray:
    """Values ``m[rows, cols]`` (0 where absent or ``cols == -1``) of a canonical CSR.

    Each stored entry gets the key ``row * n_cols + col``; canonical CSR keys are
    sorted, so all queries are answered by one ``searchsorted``.
    """
    out = np.zeros(rows.shape, dtype=np.float64)
    if m.nnz == 0 or rows.size == 0:
        return out
    n_cols = np.int64(m.shape[1])
    keys = _row_ids(m) * n_cols + m.indices.astype(np.int64)
    query = rows * n_cols + cols
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    found = (keys[pos] == query) & (cols >= 0)
    out[found] = m.data[pos[found]]
    return out


def _gains(top: IntArray, rel: sp.csr_matrix) -> FloatArray:
    """(U, k) gain of each ranked item (0 for misses and padding)."""
    if top.shape[0] != rel.shape[0]:
        raise ValueError(f"recs has {top.shape[0]} users but relevant has {rel.shape[0]} rows")
    rows = np.broadcast_to(np.arange(top.shape[0], dtype=np.int64)[:, None], top.shape)
    return _lookup(rel, rows, top)


def _n_relevant(rel: sp.csr_matrix) -> FloatArray:
    return np.diff(rel.indptr).astype(np.float64)


def _list_matrix(top: IntArray, n_items: int, weights: FloatArray | None = None) -> sp.csr_matrix:
    """(U, n_items) CSR with ``weights[rank]`` (default 1) at each listed item."""
    rows = np.broadcast_to(np.arange(top.shape[0], dtype=np.int64)[:, None], top.shape)
    valid = top >= 0
    w = np.ones(top.shape[1]) if weights is None else weights
    data = np.broadcast_to(w[None, :], top.shape)[valid]
    return sp.csr_matrix(
        (data, (rows[valid], top[valid])), shape=(top.shape[0], n_items), dtype=np.float64
    )


def _discounts(k: int) -> FloatArray:
    """1 / log2(i + 1) for ranks i = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _safe_div(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den, 0 where den == 0."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------------------
# Ranking accuracy
# --------------------------------------------------------------------------------------


def has_relevant(relevant: sp.csr_matrix) -> BoolArray:
    """Mask of users with at least one relevant (gain > 0) item: filter with it first."""
    return _n_relevant(_canonical(relevant)) > 0


def hits_matrix(recs: IntArray, relevant: sp.csr_matrix, k: int) -> BoolArray:
    """(U, k) boolean: ``hits[u, i]`` is True iff the item at rank i+1 is relevant to u.

    Padding (-1) and ranks beyond a short list are False. Every ranking metric is built
    on this single lookup (``_gains``).
    """
    rel = _canonical(relevant)
    return _gains(_topk(recs, k, rel.shape[1]), rel) > 0


def precision_at_k(recs: IntArray, relevant: sp.csr_matrix, k: int) -> FloatArray:
    """P@k = |top-k ∩ rel_u| / k.

    Divides by k, not by the list length, as ranx and trec_eval do: a short list is
    penalised for its empty slots.
    """
    return hits_matrix(recs, relevant, k).sum(axis=1) / np.float64(k)


def recall_at_k(recs: IntArray, relevant: sp.csr_matrix, k: int) -> FloatArray:
    """R@k = |top-k ∩ rel_u| / |rel_u| (0 for users with no relevant item)."""
    rel = _canonical(relevant)
    hits = _gains(_topk(recs, k, rel.shape[1]), rel) > 0
    return _safe_div(hits.sum(axis=1).astype(np.float64), _n_relevant(rel))


def ndcg_at_k(
    recs: IntArray,
    relevant: sp.csr_matrix,
    k: int,
    gains: Literal["binary", "graded"] = "binary",
) -> FloatArray:
    """nDCG@k = DCG@k / IDCG@k with linear gains (Järvelin & Kekäläinen; ranx "ndcg").

    DCG@k = Σ_{i≤k} g_i / log2(i + 1), where g_i = 1 for a relevant item (``"binary"``)
    or the stored value of ``relevant`` (``"graded"``), and 0 for a miss.
    IDCG@k = the DCG of the user's own gains sorted descending, truncated to k, so a
    perfect list scores 1 even when |rel_u| > k. Users with no relevant item score 0.
    (The exponential gain 2^g − 1 of Burges et al., ranx "ndcg_burges", is not used;
    for binary gains both coincide.)
    """
    if gains not in ("binary", "graded"):
        raise ValueError(f"gains must be 'binary' or 'graded', got {gains!r}")
    rel = _canonical(relevant)
    top = _topk(recs, k, rel.shape[1])
    g = _gains(top, rel)
    disc = _discounts(k)
    if gains == "binary":
        g = (g > 0).astype(np.float64)
        ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
        idcg = ideal_cum[np.minimum(np.diff(rel.indptr), k)]
    else:
        # Rank every user's gains descending, keep the best k and lay them out U×k.
        rows = _row_ids(rel)
        order = np.lexsort((-rel.data, rows))
        rank_in_row = np.arange(rel.nnz) - rel.indptr[rows[order]]
        keep = rank_in_row < k
        ideal = np.zeros((rel.shape[0], k), dtype=np.float64)
        ideal[rows[order][keep], rank_in_row[keep]] = rel.data[order][keep]
        idcg = ideal @ disc
    return _safe_div(g @ disc, idcg)


def average_precision_at_k(
    recs: IntArray,
    relevant: sp.csr_matrix,
    k: int,
    normalization: Literal["relevant", "min_k"] = "relevant",
) -> FloatArray:
    """AP@k = Σ_{i≤k} P@i · rel_i / Z; MAP@k is its mean over users.

    ``normalization="relevant"`` (default): Z = |rel_u|, as ranx ``map@k`` and trec_eval
    do; a user with more than k relevant items cannot reach 1.
    ``normalization="min_k"``: Z = min(|rel_u|, k), the variant common in recommender
    libraries, where a perfect top-k always scores 1.
    """
    if normalization not in ("relevant", "min_k"):
        raise ValueError(f"normalization must be 'relevant' or 'min_k', got {normalization!r}")
    rel = _canonical(relevant)
    hits = (_gains(_topk(recs, k, rel.shape[1]), rel) > 0).astype(np.float64)
    prec_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    n_rel = _n_relevant(rel)
    z = n_rel if normalization == "relevant" else np.minimum(n_rel, float(k))
    return _safe_div((prec_at_i * hits).sum(axis=1), z)


def reciprocal_rank(recs: IntArray, relevant: sp.csr_matrix, k: int) -> FloatArray:
    """RR@k = 1 / (rank of the first relevant item) if it is within the top k, else 0."""
    hits = hits_matrix(recs, relevant, k)
    first = np.argmax(hits, axis=1)
    rr: FloatArray = np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return rr


def hit_rate_at_k(recs: IntArray, relevant: sp.csr_matrix, k: int) -> FloatArray:
    """HR@k = 1 if any of the top k items is relevant, else 0."""
    return np.asarray(hits_matrix(recs, relevant, k).any(axis=1), dtype=np.float64)


# --------------------------------------------------------------------------------------
# Rating prediction
# --------------------------------------------------------------------------------------


def _paired(pred: ArrayLike, truth: ArrayLike) -> tuple[FloatArray, FloatArray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and truth differ in length ({p.size} != {t.size})")
    if p.size == 0:
        raise ValueError("pred and truth are empty")
    return p, t


def squared_errors(pred: ArrayLike, truth: ArrayLike) -> FloatArray:
    """Per-rating (r̂ − r)²; their mean is the MSE, its square root the RMSE."""
    p, t = _paired(pred, truth)
    return (p - t) ** 2


def absolute_errors(pred: ArrayLike, truth: ArrayLike) -> FloatArray:
    """Per-rating |r̂ − r|; their mean is the MAE."""
    p, t = _paired(pred, truth)
    return np.abs(p - t)


def rmse(pred: ArrayLike, truth: ArrayLike) -> float:
    """RMSE = sqrt(mean((r̂ − r)²)) over all test ratings."""
    return float(np.sqrt(squared_errors(pred, truth).mean()))


def mae(pred: ArrayLike, truth: ArrayLike) -> float:
    """MAE = mean(|r̂ − r|) over all test ratings."""
    return float(absolute_errors(pred, truth).mean())


def per_user_error(
    pred: ArrayLike,
    truth: ArrayLike,
    user_ids: ArrayLike,
    kind: Literal["squared", "absolute"] = "squared",
    n_users: int | None = None,
) -> FloatArray:
    """Per-user mean squared (MSE_u) or absolute (MAE_u) error, shape (n_users,).

    MSE_u = mean_{r ∈ test_u} (r̂ − r)²; per-user RMSE is its square root. Users with
    no test rating get NaN (there is nothing to average), so filter with ``~np.isnan``
    before building intervals. ``n_users`` defaults to ``max(user_ids) + 1``.
    """
    if kind == "squared":
        err = squared_errors(pred, truth)
    elif kind == "absolute":
        err = absolute_errors(pred, truth)
    else:
        raise ValueError(f"kind must be 'squared' or 'absolute', got {kind!r}")
    users = np.asarray(user_ids, dtype=np.int64).ravel()
    if users.shape != err.shape:
        raise ValueError("user_ids must have one entry per rating")
    if users.min() < 0:
        raise ValueError("user_ids must be non-negative indices")
    n = int(users.max()) + 1 if n_users is None else n_users
    sums = np.bincount(users, weights=err, minlength=n)
    counts = np.bincount(users, minlength=n).astype(np.float64)
    out = np.full(n, np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


# --------------------------------------------------------------------------------------
# Beyond accuracy
# --------------------------------------------------------------------------------------


def catalog_coverage(recs: IntArray, n_items: int, k: int) -> float:
    """Coverage@k = |∪_u top-k_u| / n_items: share of the catalog shown to anyone."""
    top = _topk(recs, k, n_items)
    return float(np.unique(top[top >= 0]).size / n_items)


def intra_list_diversity(recs: IntArray, item_features: object, k: int) -> FloatArray:
    """ILD@k = (2 / (n(n−1))) Σ_{i<j ∈ top-k_u} (1 − cos(v_i, v_j)), per user.

    ``item_features`` is either dense item vectors ``(n_items, d)`` or a sparse
    item×feature matrix (e.g. one-hot categories). With unit vectors u_i and
    s = Σ_i u_i, the pairwise similarity sum is (‖s‖² − Σ_i ‖u_i‖²) / 2, so the whole
    batch costs one sparse product. An all-zero feature vector has cosine 0 with every
    item (distance 1). n counts the valid (non-padding) items; lists with fewer than
    two items score 0.
    """
    if sp.issparse(item_features):
        feats = sp.csr_matrix(item_features, dtype=np.float64)
        norms = np.sqrt(np.asarray(feats.multiply(feats).sum(axis=1)).ravel())
        unit = sp.diags(_safe_div(np.ones_like(norms), norms)) @ feats
    else:
        dense = np.asarray(item_features, dtype=np.float64)
        if dense.ndim != 2:
            raise ValueError("dense item_features must be 2-D (n_items × d)")
        norms = np.linalg.norm(dense, axis=1)
        unit = dense * _safe_div(np.ones_like(norms), norms)[:, None]
    n_items = norms.shape[0]
    top = _topk(recs, k, n_items)
    lists = _list_matrix(top, n_items)
    s = lists @ unit
    if sp.issparse(s):
        s_sq = np.asarray(s.multiply(s).sum(axis=1)).ravel()
    else:
        s_sq = np.einsum("ij,ij->i", s, s)
    self_sq = lists @ (norms > 0).astype(np.float64)
    n = (top >= 0).sum(axis=1).astype(np.float64)
    pair_sim = (s_sq - self_sq) / 2.0
    n_pairs = n * (n - 1) / 2.0
    return np.where(n_pairs > 0, 1.0 - _safe_div(pair_sim, n_pairs), 0.0)


def novelty(recs: IntArray, item_popularity: ArrayLike, n_users: int, k: int) -> FloatArray:
    """Novelty@k = mean_{i ∈ top-k_u} −log2(pop_i / n_users), per user (bits).

    ``pop_i`` is the number of (training) users who interacted with item i, so
    pop_i / n_users is the probability that a random user knows it. pop_i = 0 is
    replaced by 1 to keep the value finite (the item is treated as the rarest
    observable one). Averaged over valid listed items; an empty list scores 0.
    """
    pop = np.asarray(item_popularity, dtype=np.float64).ravel()
    top = _topk(recs, k, pop.size)
    info = -np.log2(np.maximum(pop, 1.0) / float(n_users))
    valid = top >= 0
    bits = np.where(valid, info[np.where(valid, top, 0)], 0.0)
    return _safe_div(bits.sum(axis=1), valid.sum(axis=1).astype(np.float64))


def serendipity(
    recs: IntArray,
    relevant: sp.csr_matrix,
    expected_recs: IntArray,
    k: int,
) -> FloatArray:
    """Serendipity@k = |{i ∈ top-k_u : i ∈ rel_u and i ∉ PM_u}| / k, per user.

    The unexpectedness/usefulness definition of Ge et al. (2010), as surveyed by
    Kaminskas & Bridge (2016): PM_u is the top-k list of a primitive recommender
    (typically most-popular), so only relevant items an obvious baseline would not
    have shown count. ``expected_recs`` is (U, K') per-user lists or a single (K',)
    list shared by all users; only its first k entries are used. Divided by k like
    P@k, so serendipity@k <= precision@k.
    """
    rel = _canonical(relevant)
    n_items = rel.shape[1]
    top = _topk(recs, k, n_items)
    expected = np.asarray(expected_recs)
    if expected.ndim == 1:
        expected = np.broadcast_to(expected[None, :], (top.shape[0], expected.shape[0]))
    pm = _topk(expected, k, n_items)
    if pm.shape[0] != top.shape[0]:
        raise ValueError("expected_recs must have one row per user (or be 1-D)")
    useful = _gains(top, rel) > 0
    obvious = _gains(top, _canonical(_list_matrix(pm, n_items))) > 0
    return (useful & ~obvious).sum(axis=1) / np.float64(k)


def exposure_gini(recs: IntArray, n_items: int, k: int, position_weighted: bool = False) -> float:
    """Gini coefficient of item exposure over the whole catalog.

    Exposure c_j = number of top-k lists containing item j, or, with
    ``position_weighted``, Σ over lists of 1 / log2(rank + 1) (the DCG discount, a
    model of user attention). With c sorted ascending over all n catalog items
    (unexposed items included as zeros):
    G = Σ_{j=1}^{n} (2j − n − 1) c_(j) / (n Σ_j c_j).
    0 = every item equally exposed; (n − 1)/n = a single item gets all exposure.
    No exposure at all gives 0.
    """
    top = _topk(recs, k, n_items)
    weights = _discounts(k) if position_weighted else np.ones(k)
    valid = top >= 0
    counts = np.bincount(
        top[valid], weights=np.broadcast_to(weights, top.shape)[valid], minlength=n_items
    )
    total = counts.sum()
    if total == 0:
        return 0.0
    c = np.sort(counts)
    j = np.arange(1, n_items + 1, dtype=np.float64)
    return float(((2.0 * j - n_items - 1.0) * c).sum() / (n_items * total))


def long_tail_share(
    recs: IntArray, item_popularity: ArrayLike, k: int, head_share: float = 0.2
) -> FloatArray:
    """LongTail@k = |{i ∈ top-k_u : i ∉ head}| / |top-k_u|, per user.

    Head ("short head") = the ⌈head_share · n_items⌉ most popular items, i.e. the top
    20% of items by interaction count by default (Abdollahpouri et al. 2017/2018);
    everything else is long tail. Popularity ties at the cut are broken by lower item
    index. Divided by the number of valid listed items; an empty list scores 0.
    """
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")
    pop = np.asarray(item_popularity, dtype=np.float64).ravel()
    n_items = pop.size
    top = _topk(recs, k, n_items)
    n_head = int(np.ceil(head_share * n_items))
    is_head = np.zeros(n_items, dtype=bool)
    is_head[np.argsort(-pop, kind="stable")[:n_head]] = True
    valid = top >= 0
    tail = valid & ~is_head[np.where(valid, top, 0)]
    return _safe_div(tail.sum(axis=1).astype(np.float64), valid.sum(axis=1).astype(np.float64))


@dataclass(frozen=True)
class GroupReport:
    """A metric's mean per user group and how unequal the groups are.

    ``gap`` = max − min of the group means; ``ratio`` = min / max (1 = parity; meant for
    non-negative metrics; 1.0 when every mean is 0, NaN if max is 0 but min is not).
    """

    means: dict[Hashable, float]
    counts: dict[Hashable, int]
    gap: float
    ratio: float


def group_fairness(per_user_values: ArrayLike, groups: ArrayLike) -> GroupReport:
    """Mean of a per-user metric per group, with max − min gap and min / max ratio.

    ``groups`` holds one hashable label per user (any dtype, e.g. object). Groups are
    reported in sorted label order when labels are sortable, else first-seen order.
    """
    values = np.asarray(per_user_values, dtype=np.float64).ravel()
    labels = np.asarray(groups, dtype=object).ravel()
    if values.shape != labels.shape:
        raise ValueError("per_user_values and groups must have the same length")
    if values.size == 0:
        raise ValueError("no users to group")
    uniq = list(dict.fromkeys(labels.tolist()))
    with contextlib.suppress(TypeError):
        uniq = sorted(uniq)
    index = {g: i for i, g in enumerate(uniq)}
    codes = np.fromiter((index[g] for g in labels.tolist()), dtype=np.int64, count=labels.size)
    counts = np.bincount(codes, minlength=len(uniq))
    means = np.bincount(codes, weights=values, minlength=len(uniq)) / counts
    lo, hi = float(means.min()), float(means.max())
    ratio = lo / hi if hi != 0 else (1.0 if lo == 0 else float("nan"))
    return GroupReport(
        means={g: float(means[i]) for i, g in enumerate(uniq)},
        counts={g: int(counts[i]) for i, g in enumerate(uniq)},
        gap=hi - lo,
        ratio=ratio,
    )


def calibration_kl(
    recs: IntArray,
    user_history: sp.csr_matrix,
    item_categories: sp.csr_matrix,
    k: int,
    alpha: float = 0.01,
) -> FloatArray:
    """Miscalibration C_KL(p ‖ q̃) of Steck (2018), "Calibrated Recommendations", per user.

    p(c|u) = Σ_{i ∈ H_u} p(c|i) / Σ_{i ∈ H_u} Σ_c p(c|i): the category distribution of
    the user's history H_u (every stored entry > 0 of ``user_history`` counts once,
    i.e. uniform item weights); p(c|i) = 1 / n_categories(i) for each category of item
    i, so a multi-genre item spreads one unit of weight. q(c|u) is the same over the
    top-k list (uniform weight per rank). q̃ = (1 − α) q + α p keeps the KL finite for
    α > 0. C_KL = Σ_{c: p(c|u)>0} p(c|u) · ln(p(c|u) / q̃(c|u)) (natural log, 0 = perfectly
    calibrated). Items without categories are ignored; users whose history has no
    categorised item score 0. An empty list gives q̃ = α p, i.e. C_KL = ln(1/α).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cats = _canonical(item_categories)
    cats.data[:] = 1.0
    per_item = sp.diags(_safe_div(np.ones(cats.shape[0]), _n_relevant(cats))) @ cats
    hist = _canonical(user_history)
    hist.data[:] = 1.0
    if hist.shape[1] != cats.shape[0]:
        raise ValueError("user_history columns must match item_categories rows")
    top = _topk(recs, k, cats.shape[0])
    if top.shape[0] != hist.shape[0]:
        raise ValueError("recs and user_history must have the same number of users")

    def _normalise(m: sp.csr_matrix) -> sp.csr_matrix:
        m = _canonical(m)
        sums = np.asarray(m.sum(axis=1)).ravel()
        return _canonical(sp.diags(_safe_div(np.ones_like(sums), sums)) @ m)

    p = _normalise(hist @ per_item)
    q = _normalise(_list_matrix(top, cats.shape[0]) @ per_item)
    rows = _row_ids(p)
    q_at_p = _lookup(q, rows, p.indices.astype(np.int64))
    q_tilde = (1.0 - alpha) * q_at_p + alpha * p.data
    with np.errstate(divide="ignore"):
        terms = p.data * np.log(p.data / q_tilde)
    return np.bincount(rows, weights=terms, minlength=p.shape[0]).astype(np.float64)
