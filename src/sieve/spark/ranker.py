"""The ranker's training rows on Spark, featurised on the executors by the
funnel's own code path (`build_query` → `featurize`).

As in `sieve.pipeline.training.snapshot_training_set`: up to
`ranker.max_users` users with at least two items each hold out a share of
their items (`holdout_labels`' rules: the latest ones or a seeded random
share, ⌊n·fraction + ½⌋ of n); the candidate models are fitted without those
label interactions (one fold: at most `max_users` users' labels, a small
share of a log big enough to need Spark); each user's query is built from
their remaining events and asked at the snapshot's end (random holdout) or
at their last remaining event (temporal); a candidate is relevant when it is
one of the user's held-out items.

The one difference: the online-counter features are absent from these rows
(the funnel replays the log in time order to give each query the counters of
its moment, a sequential pass that Spark does not parallelise), so the
ranker learns nothing from them and ignores them when serving.

LightGBM then trains on the driver: the rows are bounded by `max_users`
(3,000 groups of a few hundred candidates by default) whatever the log's
size, which one process trains in seconds; LightGBM's distributed mode
needs a JVM package (SynapseML) from outside PyPI and would only add a
shuffle at this size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sieve.pipeline.config import FunnelConfig
from sieve.ranking.ltr import TrainingSet, collect
from sieve.spark.models import to_pandas

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from sieve.pipeline import Funnel

#: Funnels loaded by a Python worker, by path (a worker serves many partitions).
_LOADED: dict[str, Funnel] = {}


def label_pairs(pairs: DataFrame, config: FunnelConfig) -> DataFrame:
    """(u, i) held out as labels of the sampled users."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cfg = config.ranker
    counts = pairs.groupBy("u").agg(F.count("i").alias("n"))
    counts = counts.withColumn("n_label", F.floor(F.col("n") * cfg.holdout_fraction + 0.5))
    eligible = counts.where(
        (F.col("n") >= 2) & (F.col("n_label") >= 1) & (F.col("n_label") < F.col("n"))
    )
    sampled = eligible.orderBy(F.rand(cfg.seed)).limit(cfg.max_users)
    order = F.desc("t") if cfg.holdout == "temporal" else F.rand(cfg.seed + 1)
    ranked = pairs.join(sampled, "u").withColumn(
        "r", F.row_number().over(Window.partitionBy("u").orderBy(order, F.asc("i")))
    )
    return ranked.where(F.col("r") <= F.col("n_label")).select("u", "i", "user_id", "item_id")


def training_rows(
    spark: SparkSession,
    fit_events: DataFrame,
    labels: DataFrame,
    engine_funnel: Funnel,
) -> TrainingSet:
    """Featurise each sampled user's query on the executors with the funnel
    fitted without the labels (shipped to them as a saved folder), and
    collect the rows (bounded by `max_users`) with their labels."""
    from pyspark.sql import types as T

    cfg = engine_funnel.config
    folder = Path(tempfile.mkdtemp(prefix="sieve-ranker-fit-"))
    engine_funnel.save(folder / "funnel")
    spark.sparkContext.addFile(str(folder / "funnel"), recursive=True)
    users = labels.select("user_id").distinct()
    events = fit_events.join(users, "user_id").select(
        "user_id", "item_id", "type", "timestamp", "seq"
    )
    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("items", T.ArrayType(T.LongType())),
            T.StructField("x", T.ArrayType(T.FloatType())),
            T.StructField("width", T.IntegerType()),
            T.StructField("base", T.ArrayType(T.DoubleType())),
        ]
    )
    temporal = cfg.ranker.holdout == "temporal"

    def featurise(group: pd.DataFrame) -> pd.DataFrame:
        return _featurise_user(group, "funnel", temporal)

    rows = to_pandas(events.groupBy("user_id").applyInPandas(featurise, schema))
    held = to_pandas(labels.select("user_id", "i")).groupby("user_id")["i"].apply(np.array)
    requests = []
    label_rows = []
    for r in rows.itertuples(index=False):
        items = np.asarray(r.items, np.int64)
        x = np.asarray(r.x, np.float32).reshape(len(items), int(r.width))
        requests.append((items, x, np.asarray(r.base, np.float64)))
        label_rows.append(np.asarray(held.get(r.user_id, np.empty(0)), np.int64))
    return collect(requests, label_rows)


def _featurise_user(group: pd.DataFrame, name: str, temporal: bool) -> pd.DataFrame:
    """One user's (candidates, features, base score), on an executor."""
    from pyspark import SparkFiles

    from sieve.pipeline import Funnel
    from sieve.pipeline.features import featurize
    from sieve.ranking.features import base_score
    from sieve.ranking.query import UserLog
    from sieve.rerank.rules import blocked_items

    path = SparkFiles.get(name)
    funnel = _LOADED.get(path)
    if funnel is None:
        funnel = _LOADED[path] = Funnel.load(path)
    engine = funnel.state.engine
    config = funnel.config
    user_id = str(group["user_id"].iloc[0])
    times = group["timestamp"].to_numpy(np.float64)
    finite = times[np.isfinite(times)]
    now = float(finite.max()) if temporal and len(finite) else None
    query = funnel.query(UserLog(group).events(user_id, now), user_id, now=now)
    blocked = blocked_items(engine.catalog, config.rerank.rules)
    _, cands, x = featurize(engine, query, blocked, online=None)
    empty: dict[str, Any] = {"user_id": [], "items": [], "x": [], "width": [], "base": []}
    if x is None or len(cands) == 0:
        return pd.DataFrame(empty)
    base = config.ranker.base_weight * base_score(x)
    return pd.DataFrame(
        {
            "user_id": [user_id],
            "items": [cands.items.astype(np.int64)],
            "x": [x.ravel().astype(np.float32)],
            "width": [int(x.shape[1])],
            "base": [np.asarray(base, np.float64)],
        }
    )


__all__ = ["label_pairs", "training_rows"]
