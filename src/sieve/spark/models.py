"""The funnel's candidate models computed on Spark.

Each function does its work on the executors and brings to the driver only
what a saved funnel holds anyway (factors, top-k neighbours, one number per
item or user):

- `index_interactions`: events → summed weights per (user, item), with the
  funnel's sorted id vocabularies (the same order `Dataset` gives);
- `fit_als`: `pyspark.ml.recommendation.ALS` with `implicitPrefs`;
- `charts`: popularity (distinct users) and time-decayed trending, in Spark SQL;
- `cooccurrence_topk`: item-to-item cosine over co-occurrences, top-k per
  item chosen by a window on the executors;
- `user_sums`: the per-user counts the candidate engine keeps.

ALS's confidence differs from `implicit`'s: Spark weights an observed cell by
c = 1 + alpha·r and scales λ by the user's (item's) number of ratings
(ALS-WR); `implicit` uses c = alpha·x and a plain λ. `fit_als` feeds
r = x (the summed event weights) and passes alpha unchanged, and divides λ
by the mean number of interactions per user so that the penalty of a typical
user is the one `implicit` applies (BENCHMARKS.md measures the parity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.models.factorization import ALSConfig
from sieve.models.itemknn import ItemKNNConfig
from sieve.models.popularity import TrendingConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class Indexed:
    """Interactions with dense indices: `pairs` (u, i, x = summed weight > 0,
    t = latest time), the sorted vocabularies and the snapshot time (the
    latest finite event time)."""

    pairs: DataFrame
    user_ids: NDArray[np.object_]
    item_ids: NDArray[np.object_]
    snapshot_time: float


def index_interactions(spark: SparkSession, events: DataFrame, catalog_ids: list[str]) -> Indexed:
    """Sum the weights of each (user, item) and give users and items the
    indices of the funnel's vocabularies: sorted ids, items being the union
    of the catalog and the events."""
    from pyspark.sql import functions as F

    summed = events.groupBy("user_id", "item_id").agg(
        F.sum("weight").alias("x"), F.max("timestamp").alias("t")
    )
    summed = summed.where(F.col("x") > 0).cache()
    event_items = [r[0] for r in summed.select("item_id").distinct().collect()]
    item_ids = np.array(sorted(set(catalog_ids) | set(event_items)), dtype=object)
    user_ids = np.array(
        sorted(r[0] for r in events.select("user_id").distinct().collect()), dtype=object
    )
    items = spark.createDataFrame(
        pd.DataFrame({"item_id": item_ids.astype(str), "i": np.arange(len(item_ids))})
    )
    users = spark.createDataFrame(
        pd.DataFrame({"user_id": user_ids.astype(str), "u": np.arange(len(user_ids))})
    )
    pairs = (
        summed.join(F.broadcast(items), "item_id")
        .join(users, "user_id")
        .select("u", "i", "x", "t", "user_id", "item_id")
        .cache()
    )
    finite = events.where(~F.isnan("timestamp") & F.col("timestamp").isNotNull())
    last = finite.agg(F.max("timestamp")).collect()[0][0]
    summed.unpersist()
    return Indexed(pairs, user_ids, item_ids, float(last) if last is not None else 0.0)


def fit_als(
    pairs: DataFrame, n_users: int, n_items: int, config: ALSConfig, *, rescale: bool = True
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """User and item factors of implicit ALS on Spark (rows of users/items
    without interactions are zero, as `implicit` leaves them); `rescale`
    divides λ by the mean interactions per user (see the module doc)."""
    from pyspark.ml.recommendation import ALS as SparkALS

    per_user = 1.0
    if rescale:
        stats = pairs.groupBy("u").count().agg({"count": "avg"}).collect()[0][0]
        per_user = float(stats) if stats else 1.0
    blocks = max(2, pairs.sparkSession.sparkContext.defaultParallelism)
    als = SparkALS(
        rank=config.factors,
        maxIter=config.iterations,
        regParam=config.regularization / max(per_user, 1.0),
        alpha=config.alpha,
        implicitPrefs=True,
        userCol="u",
        itemCol="i",
        ratingCol="x",
        seed=config.random_state,
        coldStartStrategy="drop",
        numUserBlocks=blocks,
        numItemBlocks=blocks,
    )
    model = als.fit(pairs.select("u", "i", "x"))
    users = _factors(model.userFactors, n_users, config.factors)
    items = _factors(model.itemFactors, n_items, config.factors)
    return users, items


def to_pandas(frame: DataFrame) -> pd.DataFrame:
    """A Spark DataFrame's rows on the driver, as pandas (typed for mypy)."""
    return cast(pd.DataFrame, frame.toPandas())


def _factors(frame: DataFrame, rows: int, width: int) -> NDArray[np.float32]:
    out = np.zeros((rows, width), dtype=np.float32)
    pdf = to_pandas(frame)
    if len(pdf):
        out[pdf["id"].to_numpy(np.int64)] = np.stack(pdf["features"].to_numpy()).astype(np.float32)
    return out


def charts(
    events: DataFrame, pairs: DataFrame, n_items: int, config: TrendingConfig, snapshot: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Popularity (distinct users per item, as `Dataset.item_popularity`) and
    trending (Σ exp(−ln2·(now − t)/half-life), optionally weighted, over events
    up to `now`, as `Trending`), by item index."""
    from pyspark.sql import functions as F

    popularity = np.zeros(n_items)
    for i, c in pairs.groupBy("i").count().collect():
        popularity[int(i)] = float(c)
    now = config.now if config.now is not None else snapshot
    half_life = config.half_life_days * _DAY_SECONDS
    decay = F.exp(F.lit(-math.log(2.0)) * (F.lit(now) - F.col("timestamp")) / F.lit(half_life))
    if config.weighted:
        decay = decay * F.col("weight")
    index = pairs.select("item_id", "i").distinct()
    scored = (
        events.where(
            ~F.isnan("timestamp") & (F.col("weight") > 0) & (F.col("timestamp") <= F.lit(now))
        )
        .groupBy("item_id")
        .agg(F.sum(decay).alias("score"))
        .join(index, "item_id")
    )
    trending = np.zeros(n_items)
    for i, s in scored.select("i", "score").collect():
        trending[int(i)] = float(s)
    return popularity, trending


def cooccurrence_topk(
    pairs: DataFrame, n_items: int, config: ItemKNNConfig, max_user_items: int = 500
) -> sp.csr_matrix:
    """Item i's `config.k` most similar items j ≠ i, s_ij = x_i·x_j /
    (‖x_i‖‖x_j‖ + shrinkage) over the user columns (0/1 when `binary`), as
    `ItemKNN`'s cosine. The pairs come from a self-join on users, so a user
    with n items makes n² of them: each user's `max_user_items` strongest
    items take part (a cap ItemKNN does not have; it only binds users
    with more items than that). The top-k is chosen per item by a window on
    the executors; only those k rows per item reach the driver."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if config.similarity != "cosine":
        raise ValueError(
            f"spark train computes the cosine item-to-item similarity only, not "
            f"{config.similarity!r}: set [itemknn] similarity = 'cosine'"
        )
    w = F.lit(1.0) if config.binary else F.col("x")
    strongest = Window.partitionBy("u").orderBy(F.desc("x"), F.asc("i"))
    cells = (
        pairs.withColumn("w", w)
        .withColumn("r", F.row_number().over(strongest))
        .where(F.col("r") <= max_user_items)
        .select("u", "i", "w")
    )
    norms = pairs.withColumn("w", w).groupBy("i").agg(F.sqrt(F.sum(F.col("w") ** 2)).alias("n"))
    a, b = cells.alias("a"), cells.alias("b")
    dots = (
        a.join(b, (F.col("a.u") == F.col("b.u")) & (F.col("a.i") != F.col("b.i")))
        .groupBy(F.col("a.i").alias("i"), F.col("b.i").alias("j"))
        .agg(F.sum(F.col("a.w") * F.col("b.w")).alias("dot"))
    )
    ni, nj = norms.alias("ni"), norms.withColumnRenamed("i", "j").withColumnRenamed("n", "m")
    sims = (
        dots.join(F.broadcast(ni), "i")
        .join(F.broadcast(nj), "j")
        .withColumn("s", F.col("dot") / (F.col("n") * F.col("m") + F.lit(config.shrinkage)))
        .where(F.col("s") > 0)
    )
    best = Window.partitionBy("i").orderBy(F.desc("s"), F.asc("j"))
    top = sims.withColumn("r", F.row_number().over(best)).where(F.col("r") <= config.k)
    pdf = to_pandas(top.select("i", "j", "s"))
    return sp.csr_matrix(
        (
            pdf["s"].to_numpy(np.float32),
            (pdf["i"].to_numpy(np.int64), pdf["j"].to_numpy(np.int64)),
        ),
        shape=(n_items, n_items),
        dtype=np.float32,
    )


def user_sums(pairs: DataFrame, n_users: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per user: the number of items with interactions and the sum of their
    indices (the candidate engine's `user_train_count`/`user_train_sum`)."""
    from pyspark.sql import functions as F

    count = np.zeros(n_users, np.int64)
    total = np.zeros(n_users, np.int64)
    pdf = to_pandas(pairs.groupBy("u").agg(F.count("i").alias("c"), F.sum("i").alias("s")))
    count[pdf["u"].to_numpy(np.int64)] = pdf["c"].to_numpy(np.int64)
    total[pdf["u"].to_numpy(np.int64)] = pdf["s"].to_numpy(np.int64)
    return count, total


def item_frame(items: pd.DataFrame, item_ids: NDArray[np.object_]) -> pd.DataFrame:
    """The exported catalog as the funnel's items frame over the full item
    vocabulary: items with events but gone from the catalog are unavailable
    (as in `sieve train`'s snapshot)."""
    import json

    frame = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            "title": items["title"].astype(str),
            "text": items["text"].astype(str),
            "categories": [list(c) if c is not None else [] for c in items["categories"]],
            "created_at": items["created_at"].astype(np.float64),
            "attributes": [json.loads(a) if a else {} for a in items["attributes"]],
            "available": items["available"].astype(bool),
        }
    )
    gone = sorted(set(item_ids.tolist()) - set(frame["item_id"]))
    extra: dict[str, Any] = {
        "item_id": gone,
        "title": "",
        "text": "",
        "categories": [[] for _ in gone],
        "created_at": np.nan,
        "attributes": [{} for _ in gone],
        "available": False,
    }
    return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)


__all__ = [
    "Indexed",
    "charts",
    "cooccurrence_topk",
    "fit_als",
    "index_interactions",
    "item_frame",
    "to_pandas",
    "user_sums",
]
