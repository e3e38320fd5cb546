"""The funnel's candidate models computed on Spark.

Each function does its work on the executors and brings to the driver only
what a saved funnel holds anyway (factors, top-k neighbours, one number per
item or user):

- `index_interactions`: events → summed weights per (user, item), with the
  funnel's sorted id vocabularies (the same order `Dataset` gives);
- `fit_als`: `pyspark.ml.recommendation.ALS` with `implicitPrefs`;
- `charts`: popularity (distinct users) and time-decayed trending, in Spark SQL;
- `cooccurrence_topk`: item-to-item cosine over co-occurrences, top-k per
  item, by blocks of items on the executors (sparse products);
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
from sieve.training.snapshot import with_unlisted_items

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
    pairs.count()  # materialised from `summed` before it is dropped, not recomputed later
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

    per_user = 1.0  # the mean interactions per user with any, as `interactions_per_user`
    if rescale or config.alpha == 0:
        stats = pairs.groupBy("u").count().agg({"count": "avg"}).collect()[0][0]
        per_user = float(stats) if stats else 1.0
    alpha = config.for_data(per_user).alpha  # 0: chosen from the data, as `ALS.fit` does
    blocks = max(2, pairs.sparkSession.sparkContext.defaultParallelism)
    als = SparkALS(
        rank=config.factors,
        maxIter=config.iterations,
        regParam=config.regularization / max(per_user, 1.0) if rescale else config.regularization,
        alpha=alpha,
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


#: Similarity rows per task of `cooccurrence_topk` (items of a block), and per
#: sparse product inside it (bounds a Python worker's memory: a chunk's dot
#: products are at most CHUNK_ITEMS × items).
BLOCK_ITEMS = 4096
CHUNK_ITEMS = 256


def cooccurrence_topk(
    pairs: DataFrame,
    n_items: int,
    config: ItemKNNConfig,
    max_user_items: int = 500,
    block_items: int = BLOCK_ITEMS,
) -> sp.csr_matrix:
    """Item i's `config.k` most similar items j ≠ i, s_ij = x_i·x_j /
    (‖x_i‖‖x_j‖ + shrinkage) over the user columns (0/1 when `binary`), as
    `ItemKNN`'s cosine.

    The rows of XᵀX are computed by blocks of `block_items` items, a task
    each: it receives the rows of the users who have an item in its block
    (their item lists) and multiplies them with scipy's sparse product,
    keeping each item's top k (by a chunk of rows at a time); only those k
    per item reach the driver. Each user takes part with their
    `max_user_items` strongest items (a cap ItemKNN does not have; it only
    binds users with more items than that). A self-join of the
    interactions on users would instead emit a row per co-occurring pair —
    Σ n_u² rows, nearly all distinct, which Spark's aggregation cannot
    reduce and spills to disk (BENCHMARKS.md: ~450M rows at 10M events)."""
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
        pairs.withColumn("w", w.cast("double"))
        .withColumn("r", F.row_number().over(strongest))
        .where(F.col("r") <= max_user_items)
        .select("u", "i", "w")
    )
    found = to_pandas(
        pairs.withColumn("w", w).groupBy("i").agg(F.sqrt(F.sum(F.col("w") ** 2)).alias("n"))
    )
    norms = np.zeros(n_items)
    norms[found["i"].to_numpy(np.int64)] = found["n"].to_numpy(np.float64)
    rows = (
        cells.groupBy("u")
        .agg(F.collect_list(F.struct("i", "w")).alias("c"))
        .select("u", F.col("c.i").alias("items"), F.col("c.w").alias("ws"))
    )
    block = F.floor(F.col("i") / F.lit(block_items)).cast("int").alias("b")
    shipped = rows.join(cells.select("u", block).distinct(), "u")
    k, shrinkage = config.k, config.shrinkage

    def topk(frame: pd.DataFrame) -> pd.DataFrame:
        return _block_topk(frame, norms, block_items, k, shrinkage)

    top = shipped.groupBy("b").applyInPandas(topk, "i long, j long, s double")
    pdf = to_pandas(top)
    return sp.csr_matrix(
        (
            pdf["s"].to_numpy(np.float32),
            (pdf["i"].to_numpy(np.int64), pdf["j"].to_numpy(np.int64)),
        ),
        shape=(n_items, n_items),
        dtype=np.float32,
    )


def _block_topk(
    frame: pd.DataFrame,
    norms: NDArray[np.float64],
    block_items: int,
    k: int,
    shrinkage: float,
) -> pd.DataFrame:
    """One block's similarity rows, on an executor: `frame` holds the users
    with an item in block `b` (their items and weights); returns each block
    item's top k (i, j, s), s > 0, ties by j."""
    out: dict[str, list[NDArray[Any]]] = {"i": [], "j": [], "s": []}
    if frame.empty:
        return pd.DataFrame({"i": [], "j": [], "s": []})
    n_items = len(norms)
    lengths = frame["items"].map(len).to_numpy(np.int64)
    x = sp.csr_matrix(
        (
            np.concatenate(frame["ws"].to_numpy()).astype(np.float64),
            np.concatenate(frame["items"].to_numpy()).astype(np.int64),
            np.concatenate([[0], np.cumsum(lengths)]),
        ),
        shape=(len(frame), n_items),
    )
    columns = x.tocsc()
    lo = int(frame["b"].iloc[0]) * block_items
    for start in range(lo, min(lo + block_items, n_items), CHUNK_ITEMS):
        stop = min(start + CHUNK_ITEMS, lo + block_items, n_items)
        dots = (columns[:, start:stop].T @ x).tocoo()
        i, j = dots.row.astype(np.int64) + start, dots.col.astype(np.int64)
        s = dots.data / (norms[i] * norms[j] + shrinkage)
        keep = (i != j) & (s > 0)
        i, j, s = i[keep], j[keep], s[keep]
        order = np.lexsort((j, -s, i))
        i, j, s = i[order], j[order], s[order]
        best = np.arange(len(i)) - np.searchsorted(i, i) < k
        out["i"].append(i[best])
        out["j"].append(j[best])
        out["s"].append(s[best])
    return pd.DataFrame({name: np.concatenate(parts) for name, parts in out.items()})


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
    return with_unlisted_items(frame, item_ids.tolist())


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
