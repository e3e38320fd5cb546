"""The funnel end to end: explanations, cold start, new items, persistence,
configuration, and the shared offline/online feature path."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sieve.config import ConfigError
from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.schema import UnknownIdError
from sieve.models.base import NotFittedError, create_model
from sieve.pipeline import Funnel, FunnelConfig, featurize, load_funnel_config
from sieve.pipeline.training import training_rows
from sieve.ranking.features import FEATURE_NAMES, base_score
from sieve.ranking.query import UserLog
from sieve.types import Context, Query, Recommended

SPEC = "synthetic:users=300,items=200,seed=1"
SINGLE_THREADED = {
    "als": {"num_threads": 1},
    "itemknn": {"num_threads": 1},
    "ranker": {"num_threads": 1},
}


@cache
def data() -> Dataset:
    return load_data(SPEC).to_dataset()


@cache
def fitted() -> Funnel:
    return Funnel(FunnelConfig.from_dict(SINGLE_THREADED)).fit(data())


def fresh_copy(tmp_path: Path) -> Funnel:
    """A private funnel (for tests that change its catalog)."""
    return Funnel.load(fitted().save(tmp_path / "funnel"))


def history_query(u: int, n: int = 10, **kw: object) -> Query:
    m = data().matrix
    lo, hi = m.indptr[u], m.indptr[u + 1]
    return Query(
        user=u,
        history=m.indices[lo:hi].astype(np.int64),
        history_weights=m.data[lo:hi],
        n=n,
        **kw,  # type: ignore[arg-type]
    )


def only_in(category: str) -> list[int]:
    funnel = fitted()
    return [i for i in range(funnel.n_items) if funnel.item_categories(i) == [category]]


def share_in(recs: list[Recommended], category: str) -> float:
    return float(np.mean([category in fitted().item_categories(r.item) for r in recs]))


# ---------------------------------------------------------------- explanations
def test_every_item_is_explained_and_item_to_item_names_the_anchor() -> None:
    funnel = fitted()
    anchor = only_in("drama")[0]
    recs = funnel.recommend_query(Query(recent=(anchor,), recent_types=("click",), n=10))
    assert len(recs) == 10
    assert all(r.explanation for r in recs)
    title = funnel.item_title(anchor)
    assert any(r.explanation == f"similar to {title} you clicked" for r in recs)
    for r in recs:
        assert r.sources, r
    # from the history (no session), the anchor is something "you liked"
    liked = funnel.recommend_query(history_query(5))
    assert all(r.explanation for r in liked)
    assert any(
        r.explanation.startswith("similar to ") and r.explanation.endswith("you liked")
        for r in liked
    )


def test_scores_do_not_increase_down_the_list() -> None:
    recs = fitted().recommend_query(history_query(9, n=30))
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------ cold start
def test_an_unknown_user_without_history_gets_trending_items() -> None:
    funnel = fitted()
    recs = funnel.recommend_query(Query(n=10))
    trending = [r.item for r in funnel.popular(10)]
    assert len(recs) == 10
    assert len({r.item for r in recs} & set(trending)) >= 7
    assert all(r.explanation.startswith(("trending in", "popular", "new in")) for r in recs)
    drama = funnel.recommend_query(Query(n=5, categories=("drama",)))
    assert all("drama" in funnel.item_categories(r.item) for r in drama)


def test_three_clicks_in_one_category_shift_a_new_users_list() -> None:
    funnel = fitted()
    for category in ("drama", "sports"):
        cold = funnel.recommend_query(Query(n=10))
        clicks = tuple(only_in(category)[:3])
        warm = funnel.recommend_query(Query(recent=clicks, recent_types=("click",) * 3, n=10))
        assert share_in(warm, category) >= 0.5
        assert share_in(warm, category) > share_in(cold, category) + 0.2
        assert not {r.item for r in warm} & set(clicks)


def test_popular_explains_trending_by_category() -> None:
    recs = fitted().popular(5, categories=("music",))
    assert len(recs) == 5
    assert all(r.explanation == "trending in music" for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


# -------------------------------------------------------------------- new items
def test_a_new_item_reaches_a_matching_user_through_content(tmp_path: Path) -> None:
    funnel = fresh_copy(tmp_path)
    clicks = only_in("cooking")[:3]
    items = data().items
    text = " ".join(items["text"].iloc[clicks])
    new = pd.DataFrame(
        {
            "item_id": ["brand-new"],
            "title": ["Brand New Dish"],
            "text": [text],
            "categories": [["cooking"]],
            "created_at": [funnel.state.engine.snapshot_time],
        }
    )
    funnel.add_items(new)
    idx = funnel.item_index("brand-new")
    assert idx == data().n_items and funnel.n_items == data().n_items + 1
    assert funnel.item_title(idx) == "Brand New Dish" and funnel.item_categories(idx) == ["cooking"]
    recs = funnel.recommend_query(Query(recent=tuple(clicks), recent_types=("click",) * 3, n=10))
    mine = [r for r in recs if r.item == idx]
    assert mine, "the new item was not recommended"
    assert "content" in mine[0].sources
    assert mine[0].explanation == "matches your interest in cooking"
    # nobody interacted with it: no collaborative source proposed it
    assert not {"ann", "item_to_item", "ease"} & set(mine[0].sources)
    # similar items of a brand-new item come from its text
    assert len(funnel.similar_items(idx, 5)) == 5


def test_add_items_updates_known_items(tmp_path: Path) -> None:
    funnel = fresh_copy(tmp_path)
    item_id = str(funnel.item_ids[3])
    funnel.add_items(
        pd.DataFrame({"item_id": [item_id], "title": ["Renamed"], "categories": [["music"]]})
    )
    assert funnel.item_title(3) == "Renamed"
    assert funnel.item_categories(3) == ["music"]
    assert funnel.n_items == data().n_items


# ----------------------------------------------------------------- persistence
def test_save_load_gives_identical_recommendations(tmp_path: Path) -> None:
    funnel = fresh_copy(tmp_path)
    funnel.add_items(
        pd.DataFrame(
            {"item_id": ["x1"], "title": ["X"], "text": ["kavuba tida"], "categories": [["drama"]]}
        )
    )
    loaded = Funnel.load(funnel.save(tmp_path / "again"))
    assert loaded.version == funnel.version
    assert loaded.config == funnel.config
    queries = [
        history_query(4),
        history_query(17, recent=(1, 2), recent_types=("click", "view")),
        Query(
            recent=(3, 4, 200),
            recent_types=("purchase",) * 3,
            context=Context(hour=9, device="mobile"),
        ),
        Query(n=7, categories=("comedy",)),
    ]
    for q in queries:
        assert funnel.recommend_query(q) == loaded.recommend_query(q)
    assert [r.item for r in funnel.popular(10)] == [r.item for r in loaded.popular(10)]
    np.testing.assert_array_equal(funnel.similar_items(5).items, loaded.similar_items(5).items)
    files = {p.name for p in (tmp_path / "again").iterdir()}
    assert {"model.json", "config.toml", "ranker.txt", "catalog.npz", "ann"} <= files
    assert not list((tmp_path / "again").rglob("*.pkl"))


def test_version_identifies_the_trained_funnel() -> None:
    funnel = fitted()
    assert len(funnel.version) == 16
    other = Funnel(funnel.config).fit(data())
    assert other.version != funnel.version  # another fit time


def test_use_before_fit_raises() -> None:
    with pytest.raises(NotFittedError):
        Funnel().recommend_query(Query())


# ---------------------------------------------------------------------- config
def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = FunnelConfig.from_dict(
        {
            "sources": {"ann": 50, "fresh": 0},
            "als": {"factors": 16},
            "ranker": {"holdout": "temporal", "n_estimators": 20},
            "rerank": {
                "pool": 40,
                "mmr": {"trade_off": 0.8},
                "rules": {"blocked_categories": ["horror"]},
            },
        }
    )
    text = config.to_toml()
    assert FunnelConfig.from_toml(text) == config
    path = tmp_path / "funnel.toml"
    path.write_text(text)
    assert load_funnel_config(path) == config
    assert FunnelConfig.from_toml("") == FunnelConfig()
    assert config.rerank.rules.blocked_categories == ("horror",)
    # a partial section keeps the funnel's defaults for the keys it leaves out
    partial = FunnelConfig.from_toml("[als]\niterations = 5\n[rerank.mmr]\nramp = false\n")
    assert partial.als.factors == FunnelConfig().als.factors == 64
    assert partial.als.iterations == 5
    assert partial.rerank.mmr.trade_off == FunnelConfig().rerank.mmr.trade_off


def test_unknown_config_keys_are_named_with_their_section() -> None:
    with pytest.raises(
        ConfigError, match=r"FunnelConfig\.rerank\.mmr: unknown key\(s\) \['lamda'\]"
    ):
        FunnelConfig.from_toml("[rerank.mmr]\nlamda = 0.5\n")
    with pytest.raises(ConfigError, match=r"FunnelConfig: unknown key\(s\) \['sorces'\]"):
        FunnelConfig.from_toml("[sorces]\nann = 5\n")
    with pytest.raises(ConfigError, match=r"FunnelConfig\.ranker: .*num_leaves"):
        FunnelConfig.from_toml("[ranker]\nnum_leaves = 'many'\n")
    with pytest.raises(ConfigError, match="trade_off"):
        FunnelConfig.from_toml("[rerank.mmr]\ntrade_off = 2.0\n")


def test_registry_builds_the_funnel_from_parameters() -> None:
    model = create_model("funnel", {"sources": {"ease": 0}, "ranker": {"enabled": False}})
    assert isinstance(model, Funnel)
    assert model.config.sources.ease == 0


# --------------------------------------------------------------------- features
def test_ranker_features_are_identical_offline_and_online() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    ds = data()
    users = np.array([3, 17, 42])
    offline = training_rows(funnel.config, engine, users, ds)  # the training-set builder
    log = UserLog(ds.events)
    for u, (items, x, base) in zip(users, offline, strict=True):
        user_id = str(ds.user_ids[u])
        live = funnel.query(log.events(user_id), user_id)  # as the service builds it
        assert live.recent, "the session is part of the query on both sides"
        _, cands, online = featurize(engine, live, None)
        assert online is not None
        np.testing.assert_array_equal(cands.items, items)
        np.testing.assert_array_equal(online, x)
        np.testing.assert_array_equal(funnel.config.ranker.base_weight * base_score(online), base)
    assert x.shape[1] == len(FEATURE_NAMES)


def test_training_queries_are_featurized_in_blocks_of_one_cut() -> None:
    """Training queries share a block only with queries of the same cut (the
    counters' replay stands at one time per block), at most `size` each."""
    from sieve.pipeline.training import _same_cut_blocks

    cuts = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 3.0])
    blocks = _same_cut_blocks(cuts, 2)
    assert [(b.start, b.stop) for b in blocks] == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert all(len(set(cuts[b].tolist())) == 1 for b in blocks)
    assert _same_cut_blocks(np.empty(0), 4) == []


def test_request_context_reaches_the_features() -> None:
    engine = fitted().state.engine
    q = history_query(3)
    ctx = Query(
        user=q.user, history=q.history, context=Context(hour=21, weekday=4, device="mobile")
    )
    _, _, x = featurize(engine, ctx, None)
    assert x is not None
    col = {n: k for k, n in enumerate(FEATURE_NAMES)}
    assert (x[:, col["hour"]] == 21).all() and (x[:, col["weekday"]] == 4).all()
    assert (x[:, col["device"]] == 1).all()


# ------------------------------------------------------------ as a Recommender
def test_recommend_batch_and_vocabulary() -> None:
    funnel = fitted()
    ds = data()
    users = np.array([1, 2, -1])
    top = funnel.recommend_batch(users, ds.matrix[[1, 2, 3]], 10)
    assert top.items.shape == (3, 10) and (top.items >= 0).all()
    for r in range(3):
        assert not set(top.items[r]) & set(ds.matrix[[1, 2, 3][r]].indices)
    everything = funnel.recommend_batch(
        np.array([1]), ds.matrix[[1]], ds.n_items, exclude_seen=False
    )
    assert set(ds.matrix[1].indices) <= set(everything.items[0].tolist())
    assert funnel.user_index(str(ds.user_ids[7])) == 7
    assert funnel.user_index("nobody") == -1
    assert funnel.item_index(str(ds.item_ids[9])) == 9
    with pytest.raises(UnknownIdError, match="no-such-item"):
        funnel.item_index("no-such-item")
    with pytest.raises(IndexError):
        funnel.recommend_query(Query(history=np.array([10_000])))


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_batched_top_n_equals_one_query_per_user(
    exclude_seen: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of users (one ranker call per block) give each user exactly
    the list of their own request: same items, same scores, backfill
    included, across block boundaries, for service-built queries, a
    fold-in row, an unknown user and a user with an empty row."""
    import scipy.sparse as sparse

    from sieve.pipeline import funnel as funnel_module

    funnel = fitted()
    m = data().matrix
    users = np.array([0, 1, 2, 3, 4, 5, -1, 7], dtype=np.int64)
    rows = sparse.vstack(
        [m[[0, 1, 2, 3]], m[[9]], m[[5]], m[[6]], sparse.csr_matrix((1, m.shape[1]))]
    )
    rows = sparse.csr_matrix(rows)
    n = 120  # long enough that some lists are backfilled from the charts
    monkeypatch.setattr(funnel_module, "BATCH_BLOCK", 3)
    top = funnel.recommend_batch(users, rows, n, exclude_seen=exclude_seen)
    backfilled = 0
    for r, u in enumerate(users):
        query = funnel._batch_query(int(u), rows, r, n)
        recs = funnel._recommend(query, exclude_seen=exclude_seen)
        assert top.items[r, : len(recs)].tolist() == [rec.item for rec in recs]
        expected = np.array([rec.score for rec in recs], dtype=np.float32)
        assert np.array_equal(top.scores[r, : len(recs)], expected)
        assert (top.items[r, len(recs) :] == -1).all()
        backfilled += sum(rec.sources == {} for rec in recs)
    assert backfilled > 0  # the backfill path was compared too
    if exclude_seen:  # the batch of full answers (precomputed lists) is the live one too
        queries = [funnel._batch_query(int(u), rows, r, n) for r, u in enumerate(users)]
        many = funnel.recommend_queries([*queries, Query(n=0)])
        assert many[:-1] == [funnel.recommend_query(q) for q in queries] and many[-1] == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")
def test_forked_workers_give_the_lists_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline lists shared among forked processes (`sieve.forked.jobs`)
    are those of one process: same items, same scores."""
    from sieve import forked
    from sieve.pipeline import funnel as funnel_module

    funnel = fitted()
    m = data().matrix
    users = np.arange(m.shape[0], dtype=np.int64)
    monkeypatch.setattr(funnel_module, "BATCH_BLOCK", 4)  # several blocks per process
    alone = funnel.recommend_batch(users, m, 15)
    with forked.jobs(3):
        assert forked.planned_jobs(-(-len(users) // 4)) == 3
        shared = funnel.recommend_batch(users, m, 15)
    assert np.array_equal(shared.items, alone.items)
    assert np.array_equal(shared.scores, alone.scores)
    assert (alone.items[:, 0] >= 0).mean() > 0.9  # the rows the workers wrote are lists


def test_a_funnel_reading_its_counters_from_redis_never_forks(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters behind a connection: the lists stay in this process whatever
    `jobs` asks (a child must not share the connection), and are the lists
    read from the same counters in memory."""
    import copy
    import os

    from sieve import forked
    from sieve.pipeline import funnel as funnel_module
    from sieve.realtime.counters import OnlineCounters
    from sieve.storage.cache import open_cache

    funnel = fitted()
    m = data().matrix
    users = np.arange(40, dtype=np.int64)
    assert funnel.online is not None
    shared = copy.copy(funnel)
    shared.online = OnlineCounters(open_cache(redis_url))
    shared.online.restore(
        funnel.online.export(funnel.state.engine.catalog.item_ids, funnel.user_ids)
    )
    monkeypatch.setattr(funnel_module, "BATCH_BLOCK", 4)
    alone = funnel.recommend_batch(users, m[:40], 10)

    def no_fork() -> int:
        raise AssertionError("forked with its counters behind a connection")

    monkeypatch.setattr(os, "fork", no_fork)
    with forked.jobs(3):
        top = shared.recommend_batch(users, m[:40], 10)
    assert np.array_equal(top.items, alone.items)
    assert np.array_equal(top.scores, alone.scores)


def test_similar_items_are_neighbours_not_the_item_itself() -> None:
    funnel = fitted()
    shares = []
    for item in only_in("travel")[:5]:
        sim = funnel.similar_items(item, 8)
        assert len(sim) == 8 and item not in sim.items.tolist()
        assert np.all(np.diff(sim.scores) <= 1e-6)
        shares.append(np.mean(["travel" in funnel.item_categories(int(i)) for i in sim.items]))
    base_rate = np.mean(["travel" in funnel.item_categories(i) for i in range(funnel.n_items)])
    assert np.mean(shares) > 2 * base_rate


@pytest.mark.slow
def test_movielens_funnel_matches_ease_with_more_diversity_and_coverage(ml100k_path: Path) -> None:
    from sieve.data.split import make_splits
    from sieve.evaluate.protocol import ModelSpec, evaluate

    ds = load_data(f"movielens-100k:{ml100k_path}").to_dataset()
    result = evaluate(
        ds,
        make_splits(ds, "random:0.75", 42),
        [ModelSpec("ease", "ease"), ModelSpec("funnel", "funnel")],
    )
    ease, funnel = result.models
    # matches: within half a point of NDCG (the funnel's queries carry the
    # user's latest events as a session, as served; MovieLens ratings have no
    # real sessions, so on this split that is worth slightly less than nothing)
    assert funnel.summary["ndcg@10"].mean >= ease.summary["ndcg@10"].mean - 0.005
    assert funnel.summary["ild@10"].mean > ease.summary["ild@10"].mean
    assert funnel.scalars["coverage@10"] > ease.scalars["coverage@10"]
