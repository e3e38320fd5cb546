"""`sieve spark train`: a funnel version trained on Spark from an export,
registered in the model registry like one `sieve train` makes.

Steps: read the lake (`lake`) → index the interactions → on the executors,
ALS, the charts and the item-to-item top-k (`models`) → with the ranker on,
the same on the data without the held-out labels and the ranker's rows
featurised on the executors (`ranker`), LightGBM on the driver → assemble
the funnel (`assemble`) → register it, its manifest naming the engine, the
sequence range of the data and the Spark configuration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sieve.data.schema import EventWeights
from sieve.ranking.features import FEATURE_NAMES
from sieve.ranking.ltr import LTRRanker
from sieve.registry import ModelRegistry
from sieve.settings import Settings
from sieve.spark.assemble import SparkParts, assemble, spark_config, without_ranker
from sieve.spark.lake import read_lake
from sieve.spark.models import (
    charts,
    cooccurrence_topk,
    fit_als,
    index_interactions,
    item_frame,
    to_pandas,
    user_sums,
)
from sieve.spark.session import recorded_conf
from sieve.training.train import new_funnel

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from sieve.pipeline import Funnel
    from sieve.pipeline.config import FunnelConfig

log = logging.getLogger(__name__)

#: The event columns training reads (the rest of the export is not cached).
EVENT_COLUMNS = ("user_id", "item_id", "type", "timestamp", "seq", "weight")


def fit_parts(
    spark: SparkSession,
    events: DataFrame,
    catalog: pd.DataFrame,
    config: FunnelConfig,
    *,
    max_user_items: int = 500,
) -> tuple[SparkParts, DataFrame]:
    """The candidate models of `events` computed on Spark; also returns the
    indexed interactions (cached; the caller unpersists them)."""
    indexed = index_interactions(spark, events, catalog["item_id"].astype(str).tolist())
    n_users, n_items = len(indexed.user_ids), len(indexed.item_ids)
    users = items = sim = None
    if config.sources.ann > 0:
        users, items = fit_als(indexed.pairs, n_users, n_items, config.als)
    if config.sources.item_to_item > 0:
        sim = cooccurrence_topk(indexed.pairs, n_items, config.itemknn, max_user_items)
    popularity, trending = charts(
        events, indexed.pairs, n_items, config.trending, indexed.snapshot_time
    )
    count, total = user_sums(indexed.pairs, n_users)
    parts = SparkParts(
        user_ids=indexed.user_ids,
        item_ids=indexed.item_ids,
        items=item_frame(catalog, indexed.item_ids),
        user_factors=users,
        item_factors=items,
        similarity=sim,
        popularity=popularity,
        trending=trending,
        user_train_count=count,
        user_train_sum=total,
        snapshot_time=indexed.snapshot_time,
    )
    return parts, indexed.pairs


def ranker_fit_part(
    spark: SparkSession,
    events: DataFrame,
    pairs: DataFrame,
    catalog: pd.DataFrame,
    config: FunnelConfig,
    weights: EventWeights,
) -> tuple[DataFrame, DataFrame, Funnel, DataFrame]:
    """The ranker's held-out labels (cached), the events without them, the
    funnel fitted on those (the full fit's vocabularies: every user and item
    keeps its index) and its indexed interactions (cached); the caller
    unpersists the cached ones."""
    from sieve.spark.ranker import label_pairs

    labels = label_pairs(pairs, config).cache()
    fit_events = events.join(
        labels.select("user_id", "item_id"), ["user_id", "item_id"], "left_anti"
    )
    parts, fit_pairs = fit_parts(spark, fit_events, catalog, config)
    fit_funnel = assemble(parts, without_ranker(config), weights, None, exact_ann=True)
    return labels, fit_events, fit_funnel, fit_pairs


def fit_ranker(
    spark: SparkSession,
    events: DataFrame,
    pairs: DataFrame,
    catalog: pd.DataFrame,
    config: FunnelConfig,
    weights: EventWeights,
) -> LTRRanker | None:
    """LightGBM on the rows of the held-out users, featurised on Spark with
    models fitted without their labels (see `sieve.spark.ranker`)."""
    from sieve.spark.ranker import training_rows

    labels, fit_events, fit_funnel, fit_pairs = ranker_fit_part(
        spark, events, pairs, catalog, config, weights
    )
    data = training_rows(spark, fit_events, labels, fit_funnel)
    fit_pairs.unpersist()
    labels.unpersist()
    log.info("ranker rows: %d groups, %d rows", data.n_groups, len(data.y))
    if data.n_groups < 2:
        return None
    return LTRRanker.train(data, FEATURE_NAMES, config.ranker)


def train_on_spark(
    spark: SparkSession,
    data: str | Path,
    settings: Settings,
    *,
    ranker: bool = True,
    promote: bool = True,
) -> tuple[Funnel, Path]:
    """Train a funnel on Spark from the export at `data`, register it in
    `settings.model_dir` (promoted unless `promote=False`); returns the funnel
    and the folder of its saved model."""
    started = time.perf_counter()
    weights = EventWeights(weights=dict(settings.event_weights))
    lake = read_lake(spark, data, weights.weights)
    config = spark_config(new_funnel(settings).config)
    if not ranker or not config.ranker.enabled:
        config = without_ranker(config)
    catalog = to_pandas(lake.items)
    events = lake.events.select(*EVENT_COLUMNS).cache()
    n_events = events.count()
    if n_events == 0:
        raise ValueError(f"the export at {data} has no events of the configured types")
    parts, pairs = fit_parts(spark, events, catalog, config)
    timings: dict[str, Any] = {"models_s": round(time.perf_counter() - started, 2)}
    learned = None
    if config.ranker.enabled:
        t0 = time.perf_counter()
        learned = fit_ranker(spark, events, pairs, catalog, config, weights)
        timings["ranker_s"] = round(time.perf_counter() - t0, 2)
        if learned is None:
            config = without_ranker(config)
    n_pairs = pairs.count()
    pairs.unpersist()
    events.unpersist()
    funnel = assemble(parts, config, weights, learned)
    registry = ModelRegistry(settings.model_dir)
    registry.register(
        funnel,
        version=str(funnel.version),
        data={
            **lake.data_range,
            "events": int(n_events),
            "users": len(parts.user_ids),
            "items": len(parts.item_ids),
            "interactions": int(n_pairs),
            "spark": recorded_conf(spark),
            "timings": timings,
        },
    )
    if promote:
        registry.promote(str(funnel.version), "trained by `sieve spark train`")
    saved = registry.model_path(str(funnel.version)).resolve()
    log.info("trained funnel %s on Spark; saved to %s", funnel.version, saved)
    return funnel, saved


__all__ = ["fit_parts", "fit_ranker", "ranker_fit_part", "train_on_spark"]
