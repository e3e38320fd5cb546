"""`sieve spark train` and `sieve spark batch` in local mode: the registered
version (engine, data range, Spark settings), its charts and neighbours
against the single-process models on the same data, the ranker's training
rows (online counters included) against the single process's, and the
batch's lists served by the service as its precomputed answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from servers import REDIS_URL, redis_problem
from sieve.data.dataset import Dataset
from sieve.data.schema import EventWeights
from sieve.models.itemknn import ItemKNN
from sieve.models.popularity import Trending
from sieve.pipeline import Funnel
from sieve.pipeline.training import categories_of, training_rows
from sieve.ranking.features import FEATURE_NAMES, ONLINE_FEATURES
from sieve.realtime.counters import Replay
from sieve.registry import ModelRegistry
from sieve.serve.app import create_app
from sieve.settings import Settings
from sieve.storage import open_store
from sieve.training.snapshot import snapshot
from spark.conftest import FUNNEL_TOML

pytestmark = pytest.mark.slow  # a Spark session and several jobs


@pytest.fixture(scope="module")
def trained(
    spark: Any, lake: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, Funnel]:
    from sieve.spark.train import train_on_spark

    url, root = lake
    folder = tmp_path_factory.mktemp("spark-models")
    (folder / "funnel.toml").write_text(FUNNEL_TOML)
    settings = Settings(
        store_url=url, model_dir=folder / "models", funnel_config=folder / "funnel.toml"
    )
    funnel, _ = train_on_spark(spark, root, settings)
    return settings, funnel


def test_the_version_is_registered_like_any_other(trained: tuple[Settings, Funnel]) -> None:
    settings, funnel = trained
    registry = ModelRegistry(settings.model_dir)
    assert registry.current() == funnel.version
    manifest = registry.manifest(funnel.version)
    data = manifest.data
    with open_store(settings.store_url) as store:
        assert (data["min_seq"], data["max_seq"]) == (1, store.max_seq())
    assert data["engine"] == "spark" and data["spark"]["spark.master"] == "local[2]"
    assert data["spark"]["spark.version"].startswith("4.")
    loaded = registry.load()
    assert isinstance(loaded, Funnel) and loaded.version == funnel.version
    engine = loaded.state.engine
    assert engine.ann is not None and engine.itemknn is not None and engine.als is not None
    assert loaded.state.ranker is not None  # LightGBM on rows featurised on the executors
    assert (loaded.config.sources.ease, loaded.config.sources.content) == (0, 0)
    # it answers like a funnel: a known user gets a full list of unseen items
    user = str(loaded.user_ids[0])
    recs = loaded.recommend_query(loaded.query([], user, n=10))
    assert len(recs) == 10


def test_charts_and_neighbours_equal_the_single_process_models(
    trained: tuple[Settings, Funnel],
) -> None:
    settings, funnel = trained
    with open_store(settings.store_url) as store:
        dataset = snapshot(store, settings.event_weights)
    catalog = funnel.state.engine.catalog
    assert list(catalog.item_ids) == list(dataset.item_ids)
    np.testing.assert_allclose(catalog.popularity, dataset.item_popularity())
    trend = Trending(funnel.config.trending).fit(dataset).state.item_scores
    np.testing.assert_allclose(catalog.trending, trend, rtol=1e-9)
    ours = funnel.state.engine.itemknn.state.similarity  # type: ignore[union-attr]
    theirs = ItemKNN(funnel.config.itemknn).fit(dataset).state.similarity
    assert ours.nnz == theirs.nnz
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), atol=1e-5)


def test_neighbours_by_several_blocks_equal_itemknn(
    spark: Any, lake: tuple[str, Path], trained: tuple[Settings, Funnel]
) -> None:
    """The co-occurrence top-k computed by many small item blocks (several
    tasks, several chunks per block) is ItemKNN's, as with one block."""
    from sieve.spark.lake import read_lake
    from sieve.spark.models import cooccurrence_topk, index_interactions, to_pandas

    settings, funnel = trained
    data = read_lake(spark, lake[1], dict(settings.event_weights))
    ids = to_pandas(data.items)["item_id"].astype(str).tolist()
    indexed = index_interactions(spark, data.events, ids)
    config = dataclasses.replace(funnel.config.itemknn, k=5, binary=False, shrinkage=1.0)
    ours = cooccurrence_topk(indexed.pairs, len(indexed.item_ids), config, block_items=16)
    indexed.pairs.unpersist()
    with open_store(settings.store_url) as store:
        dataset = snapshot(store, settings.event_weights)
    theirs = ItemKNN(config).fit(dataset).state.similarity
    assert ours.nnz == theirs.nnz > 2 * dataset.n_items
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), atol=1e-5)


def test_ranker_rows_and_counters_equal_the_single_process_ones(
    spark: Any, lake: tuple[str, Path], tmp_path: Path
) -> None:
    """On the same fit part (the events without the held-out labels), fitted
    engine and temporal cuts (one per user), the rows Spark featurises equal
    `sieve.pipeline.training.training_rows`' with its log replay, the
    online-counter columns included."""
    from sieve.spark.assemble import spark_config
    from sieve.spark.lake import read_lake
    from sieve.spark.models import index_interactions, item_frame, to_pandas
    from sieve.spark.ranker import featurised_rows
    from sieve.spark.train import EVENT_COLUMNS, ranker_fit_part
    from sieve.training.train import new_funnel

    (tmp_path / "funnel.toml").write_text(FUNNEL_TOML.replace("max_users = 40", "max_users = 12"))
    settings = Settings(model_dir=tmp_path / "models", funnel_config=tmp_path / "funnel.toml")
    weights = EventWeights(weights=dict(settings.event_weights))
    config = spark_config(new_funnel(settings).config)
    config = config.replace(ranker=dataclasses.replace(config.ranker, holdout="temporal"))
    data = read_lake(spark, lake[1], weights.weights)
    catalog = to_pandas(data.items)
    events = data.events.select(*EVENT_COLUMNS).cache()
    pairs = index_interactions(spark, events, catalog["item_id"].astype(str).tolist()).pairs
    labels, fit_events, funnel, fit_pairs = ranker_fit_part(
        spark, events, pairs, catalog, config, weights
    )
    rows = featurised_rows(spark, fit_events, labels, funnel).set_index("user_id")
    frame = to_pandas(fit_events).drop(columns=["weight"]).assign(value=np.nan)
    for cached in (pairs, fit_pairs, labels, events):
        cached.unpersist()

    # the single process on the same fit part, engine and cuts
    fit_part = Dataset.from_frames(
        frame,
        item_frame(catalog, funnel.item_ids),
        weights=weights,
        user_ids=funnel.user_ids,
        item_ids=funnel.item_ids,
    )
    user_ids = sorted(rows.index)
    users = np.array([funnel.user_index(u) for u in user_ids], dtype=np.int64)
    replay = Replay(fit_part.events, categories_of(fit_part))
    expected = training_rows(funnel.config, funnel.state.engine, users, fit_part, replay)
    assert len(user_ids) == 12
    online = [FEATURE_NAMES.index(name) for name in ONLINE_FEATURES]
    filled = np.zeros(len(online), bool)
    for user_id, (items, x, base) in zip(user_ids, expected, strict=True):
        row = rows.loc[user_id]
        got = np.asarray(row["x"], np.float32).reshape(len(row["items"]), int(row["width"]))
        np.testing.assert_array_equal(np.asarray(row["items"]), items)
        np.testing.assert_allclose(got[:, online], x[:, online], rtol=1e-5, equal_nan=True)
        np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(np.asarray(row["base"]), base, rtol=1e-5, atol=1e-6)
        filled |= np.isfinite(got[:, online]).any(axis=0)
    assert filled.all()  # every counter column has values, not only missing ones


def test_batch_lists_are_what_the_service_serves(
    spark: Any, lake: tuple[str, Path], trained: tuple[Settings, Funnel], tmp_path: Path
) -> None:
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    import uuid

    import redis

    from sieve.spark.batch import batch_on_spark

    settings, funnel = trained
    prefix = f"sieve_spark_test_{uuid.uuid4().hex}:"
    cache_url = f"{REDIS_URL}?prefix={prefix}"
    settings = settings.model_copy(update={"cache_url": cache_url, "open_read": True})
    try:
        result = batch_on_spark(spark, lake[1], settings, tmp_path / "out", n=20)
        lists = pd.read_parquet(tmp_path / "out" / "lists")
        listed = int((lists["items"].map(len) > 0).sum())  # some users saw every item
        assert result.version == funnel.version and result.users == len(funnel.user_ids)
        assert result.cached == listed > 100
        assert set(lists["model_version"]) == {funnel.version}
        # the known answer: the version's ALS scores, seen items left out
        als = funnel.state.engine.als
        assert als is not None
        with open_store(settings.store_url) as store:
            events = store.events_frame()
        users = lists.loc[lists["items"].map(len) >= 10, "user_id"].tolist()[:40]
        for user_id in users[:10]:
            seen = set(events.loc[events["user_id"] == user_id, "item_id"])
            u = funnel.user_index(user_id)
            scores = als.state.item_factors @ als.state.user_factors[u]
            order = [str(funnel.item_ids[i]) for i in np.argsort(-scores, kind="stable")]
            expected = [i for i in order if i not in seen][:20]
            got = list(lists.loc[lists["user_id"] == user_id, "items"].iloc[0])
            assert len(set(got[:10]) & set(expected[:10])) >= 9
        # served through the service: the precomputed answers, for the version
        with TestClient(create_app(settings)) as client:
            overlaps = []
            for user_id in users:
                body = client.get(f"/recommendations/{user_id}", params={"n": 10}).json()
                assert body["cached"] is True and body["model_version"] == funnel.version
                served = [i["id"] for i in body["items"]]
                stored = list(lists.loc[lists["user_id"] == user_id, "items"].iloc[0])[:10]
                overlaps.append(len(set(served) & set(stored)) / 10)
        assert np.mean(overlaps) >= 0.9
    finally:
        client_ = redis.Redis.from_url(REDIS_URL)
        for key in client_.scan_iter(match=f"{prefix}*"):
            client_.delete(key)
        client_.close()
