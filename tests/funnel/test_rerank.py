"""Re-ranking stages, each checked on its own (the others switched off)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.evaluate.metrics import intra_list_diversity
from sieve.pipeline import Funnel, FunnelConfig, featurize
from sieve.rerank.calibration import calibration_kl
from sieve.rerank.stages import RerankConfig, rerank
from sieve.retrieval.candidates import Candidates, Request
from sieve.retrieval.sources import CandidateEngine
from sieve.types import Query

SPEC = "synthetic:users=300,items=200,seed=1"
SINGLE_THREADED = {
    "als": {"num_threads": 1},
    "itemknn": {"num_threads": 1},
    "ranker": {"num_threads": 1},
}
ALL_OFF: dict[str, Any] = {
    "mmr": {"enabled": False},
    "category_cap": {"enabled": False},
    "calibration": {"enabled": False},
    "freshness": {"enabled": False},
    "long_tail": {"enabled": False},
}


@cache
def data() -> Dataset:
    return load_data(SPEC).to_dataset()


#: 30 users with room for recommendations (some synthetic users saw everything).
USERS = [int(u) for u in np.flatnonzero(np.diff(data().matrix.indptr) <= 80)[:30]]


@cache
def fitted() -> Funnel:
    return Funnel(FunnelConfig.from_dict(SINGLE_THREADED)).fit(data())


@cache
def ranked(u: int) -> tuple[CandidateEngine, Request, Candidates, NDArray[np.float64]]:
    funnel = fitted()
    m = data().matrix
    q = Query(user=u, history=m.indices[m.indptr[u] : m.indptr[u + 1]].astype(np.int64))
    req, cands, x = featurize(funnel.state.engine, q, None)
    return funnel.state.engine, req, cands, funnel.relevance(req, cands, x)


def lists(stages: dict[str, Any], n: int = 10) -> list[NDArray[np.int64]]:
    config = RerankConfig.from_dict({**ALL_OFF, **stages})
    out = []
    for u in USERS:
        engine, req, cands, rel = ranked(u)
        out.append(cands.items[rerank(engine, req, cands.items, rel, n, config)])
    return out


def categories() -> sp.csr_matrix:
    return fitted().state.engine.catalog.item_categories


def ild(recs: list[NDArray[np.int64]]) -> float:
    return float(intra_list_diversity(np.array(recs), categories(), 10).mean())


def test_without_stages_the_list_is_the_relevance_order() -> None:
    _, _, cands, rel = ranked(USERS[0])
    plain = lists({})[0]
    np.testing.assert_array_equal(plain, cands.items[np.argsort(-rel, kind="stable")[:10]])


def test_mmr_raises_intra_list_diversity() -> None:
    before = ild(lists({}))
    after = ild(lists({"mmr": {"enabled": True, "trade_off": 0.7}}))
    assert after > before + 0.02


def test_max_penalty_mmr_also_diversifies() -> None:
    before = ild(lists({}))
    after = ild(
        lists({"mmr": {"enabled": True, "trade_off": 0.7, "penalty": "max", "ramp": False}})
    )
    assert after > before + 0.02


def test_category_cap_holds_in_every_block() -> None:
    cats = categories()
    for recs in lists({"category_cap": {"enabled": True, "max_per_category": 2}}, n=20):
        for block in (recs[:10], recs[10:]):
            counts = np.asarray(cats[block].sum(axis=0)).ravel()
            assert counts.max() <= 2


def test_calibration_moves_the_mix_toward_the_users() -> None:
    dist = fitted().state.engine.catalog.category_distribution
    kl: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True):
        stages = {"calibration": {"enabled": on, "weight": 1.0}}
        for u, recs in zip(USERS, lists(stages), strict=True):
            _, req, _, _ = ranked(u)
            kl[on].append(calibration_kl(dist[recs].toarray(), req.affinity))
    assert np.mean(kl[True]) < 0.8 * np.mean(kl[False])


def test_freshness_boost_promotes_newer_items() -> None:
    created = fitted().state.engine.catalog.created_at
    plain = np.mean([created[r].mean() for r in lists({})])
    fresh = np.mean(
        [
            created[r].mean()
            for r in lists({"freshness": {"enabled": True, "boost": 1.0, "half_life_days": 30.0}})
        ]
    )
    assert fresh > plain + 5 * 86_400  # lists are days newer on average


def test_long_tail_slots_are_filled() -> None:
    head = fitted().state.engine.catalog.head(0.2)
    plain = [int((~head[r]).sum()) for r in lists({})]
    stages = {"long_tail": {"enabled": True, "min_tail": 3, "tolerance": 1.0}}
    tail = [int((~head[r]).sum()) for r in lists(stages)]
    assert min(tail) >= 3
    assert np.mean(tail) > np.mean(plain)


def test_long_tail_tolerance_refuses_irrelevant_tail_items() -> None:
    head = fitted().state.engine.catalog.head(0.2)
    plain = [int((~head[r]).sum()) for r in lists({})]
    stages = {"long_tail": {"enabled": True, "min_tail": 3, "tolerance": 0.0}}
    strict = [int((~head[r]).sum()) for r in lists(stages)]
    assert strict == plain  # a zero tolerance never displaces a better item


def test_a_short_list_is_the_prefix_of_a_longer_one() -> None:
    defaults = RerankConfig()
    for u in USERS:
        engine, req, cands, rel = ranked(u)
        long = rerank(engine, req, cands.items, rel, 20, defaults)
        short = rerank(engine, req, cands.items, rel, 7, defaults)
        np.testing.assert_array_equal(short, long[:7])


def test_blocked_categories_are_never_served() -> None:
    funnel = fitted()
    config = funnel.config
    try:
        funnel.config = config.replace(
            rerank=config.rerank.replace(
                rules=config.rerank.rules.replace(blocked_categories=("horror",))
            )
        )
        m = data().matrix
        for u in USERS:
            q = Query(
                user=u, history=m.indices[m.indptr[u] : m.indptr[u + 1]].astype(np.int64), n=20
            )
            assert not any(
                "horror" in funnel.item_categories(r.item) for r in funnel.recommend_query(q)
            )
        assert not any("horror" in funnel.item_categories(r.item) for r in funnel.popular(30))
    finally:
        funnel.config = config


def test_a_block_of_requests_gets_each_requests_own_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The greedy slot loop over a block (every stage on, lists of
    different lengths) gives each request the list it gets alone, with the
    dense category columns and with each request's own columns."""
    from sieve.rerank import stages

    config = RerankConfig.from_dict(
        {
            "calibration": {"enabled": True, "weight": 0.5},
            "freshness": {"enabled": True, "boost": 0.2},
            "category_cap": {"enabled": True, "max_per_category": 3},
            "long_tail": {"enabled": True, "min_tail": 2, "tolerance": 0.3},
        }
    )
    rows = [ranked(u) for u in USERS]
    engine = rows[0][0]
    ns = [5 + 3 * (k % 7) for k in range(len(rows))]
    alone = [
        rerank(engine, req, cands.items, rel, n, config)
        for (_, req, cands, rel), n in zip(rows, ns, strict=True)
    ]
    for dense in (256, 0):  # 0: every catalog counts as wide, columns per request
        monkeypatch.setattr(stages, "_DENSE_CATEGORIES", dense)
        block = stages.rerank_many(
            engine,
            [req for _, req, _, _ in rows],
            [cands.items for _, _, cands, _ in rows],
            [rel for _, _, _, rel in rows],
            ns,
            config,
        )
        assert len(block) == len(alone)
        for got, want in zip(block, alone, strict=True):
            np.testing.assert_array_equal(got, want)


def test_the_compiled_greedy_loop_on_lists_worked_by_hand() -> None:
    """`greedy_lists` on four items (two of category A, then two of B,
    relevance 1.0, 0.9, 0.8, 0.1), each stage alone, against lists worked
    out by hand; a second row in the block changes nothing of the first."""
    from sieve.rerank.greedy import greedy_lists

    rel = np.array([[1.0, 0.9, 0.8, 0.1]])
    member = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    sim = np.einsum("bic,bjc->bij", member, member)  # 1 within a category, else 0
    tail = np.array([[False, False, False, True]])

    def run(rows: int = 1, trade_off: float = -1.0, **stages: Any) -> list[int]:
        scalars: dict[str, Any] = {
            "window": 2,
            "trade_off": trade_off,
            "ramp": False,
            "max_penalty": False,
            "cap": 0,
            "min_tail": 0,
            "tolerance": 1.0,
            "calibration_weight": 0.0,
            "smoothing": 0.01,
            **stages,
        }

        def block(a: NDArray[Any]) -> NDArray[Any]:
            return np.repeat(a, rows, axis=0)

        out = greedy_lists(
            block(rel),
            np.ones((rows, 4), dtype=bool),
            block(tail),
            block(member),
            block(member),  # one category per item: its distribution
            np.zeros((rows, 2)),
            np.zeros(rows, dtype=bool),
            block(sim) if trade_off >= 0 else np.zeros((rows, 0, 0)),
            np.full(rows, 4, dtype=np.int64),
            *scalars.values(),
        )
        return [int(j) for j in out[0]]

    assert run() == [0, 1, 2, 3]  # relevance order
    assert run(cap=1) == [0, 2, 1, 3]  # one of a category per window of two
    assert run(min_tail=1) == [0, 3, 1, 2]  # a tail item in the first window
    assert run(min_tail=1, tolerance=0.05) == [0, 1, 2, 3]  # 0.1 is too far below 0.9
    assert run(trade_off=0.5) == [0, 2, 1, 3]  # MMR: the mean similarity to the list
    assert run(trade_off=0.5, cap=1, rows=2) == run(trade_off=0.5, cap=1)
