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

The online-counter features are those of the single process too: the
counters as they stood at each query's cut, by the same code
(`sieve.realtime.counters.Replay` and `OnlineCounters`). The single process
replays the whole log once in time order; here the replay is split by key,
which the counters allow (a key's record depends on that key's events
only): each candidate item's events are replayed on the executors up to
the cuts that ask for it, each user's own events in their query's task.

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
    from sieve.types import Query

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
    """The featurised rows of the sampled users (`featurised_rows`, bounded
    by `max_users`) collected with their labels."""
    rows = featurised_rows(spark, fit_events, labels, engine_funnel)
    held = to_pandas(labels.select("user_id", "i")).groupby("user_id")["i"].apply(np.array)
    requests = []
    label_rows = []
    for r in rows.itertuples(index=False):
        items = np.asarray(r.items, np.int64)
        x = np.asarray(r.x, np.float32).reshape(len(items), int(r.width))
        requests.append((items, x, np.asarray(r.base, np.float64)))
        label_rows.append(np.asarray(held.get(r.user_id, np.empty(0)), np.int64))
    return collect(requests, label_rows)


def featurised_rows(
    spark: SparkSession,
    fit_events: DataFrame,
    labels: DataFrame,
    engine_funnel: Funnel,
) -> pd.DataFrame:
    """Each sampled user's query featurised on the executors with the funnel
    fitted without the labels (shipped to them as a saved folder): one row
    per user (user_id, candidate items, features flattened, width, base
    scores).

    Online counters as of each query's cut, in three steps: (1) each user's
    cut and candidates (`featurize` without features); (2) per candidate
    item, the log's events of that item replayed to each cut that asks for
    it (`Replay`, grouped by item on the executors); (3) each user's query
    featurised with those item records and the user's own records (their
    events replayed to the cut) restored into counters."""
    from pyspark.sql import types as T

    # a name of its own: a session ships one file per name, and refuses another
    # one under the same name
    name = f"funnel-{engine_funnel.version}"
    folder = Path(tempfile.mkdtemp(prefix="sieve-ranker-fit-"))
    engine_funnel.save(folder / name)
    spark.sparkContext.addFile(str(folder / name), recursive=True)
    temporal = engine_funnel.config.ranker.holdout == "temporal"
    users = labels.select("user_id").distinct()
    events = fit_events.join(users, "user_id").select(
        "user_id", "item_id", "type", "timestamp", "seq"
    )
    asked = events.groupBy("user_id").applyInPandas(
        lambda group: _candidates(group, name, temporal),
        "user_id string, cut double, item_id string",
    )
    cuts = asked.select("item_id", "cut").distinct()
    item_events = fit_events.join(cuts.select("item_id").distinct(), "item_id").select(
        "user_id", "item_id", "type", "timestamp"
    )
    records = (
        item_events.groupBy("item_id")
        .cogroup(cuts.groupBy("item_id"))
        .applyInPandas(_item_records, "item_id string, cut double, key string, record binary")
    )
    wanted = asked.join(records, ["item_id", "cut"]).select("user_id", "key", "record")
    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("items", T.ArrayType(T.LongType())),
            T.StructField("x", T.ArrayType(T.FloatType())),
            T.StructField("width", T.IntegerType()),
            T.StructField("base", T.ArrayType(T.DoubleType())),
        ]
    )

    def featurise(group: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
        return _featurise_user(group, records, name, temporal)

    rows = (
        events.groupBy("user_id")
        .cogroup(wanted.groupBy("user_id"))
        .applyInPandas(featurise, schema)
    )
    return to_pandas(rows)


def _loaded(name: str) -> Funnel:
    """The funnel shipped as `name` (`SparkContext.addFile`), loaded once per worker."""
    from pyspark import SparkFiles

    from sieve.pipeline import Funnel

    path = SparkFiles.get(name)
    funnel = _LOADED.get(path)
    if funnel is None:
        funnel = _LOADED[path] = Funnel.load(path)
    return funnel


def _user_query(group: pd.DataFrame, funnel: Funnel, temporal: bool) -> tuple[str, float, Query]:
    """One user's id, cut and query: asked at the snapshot's end (random
    holdout) or at their last remaining event (temporal), as
    `sieve.pipeline.training.training_rows` asks it."""
    from sieve.ranking.query import UserLog

    user_id = str(group["user_id"].iloc[0])
    times = group["timestamp"].to_numpy(np.float64)
    finite = times[np.isfinite(times)]
    now = float(finite.max()) if temporal and len(finite) else None
    query = funnel.query(UserLog(group).events(user_id, now), user_id, now=now)
    cut = now if now is not None else funnel.state.engine.snapshot_time
    return user_id, cut, query


def _candidates(group: pd.DataFrame, name: str, temporal: bool) -> pd.DataFrame:
    """One user's cut and candidate item ids, on an executor."""
    from sieve.pipeline.features import featurize
    from sieve.rerank.rules import blocked_items

    funnel = _loaded(name)
    engine = funnel.state.engine
    user_id, cut, query = _user_query(group, funnel, temporal)
    blocked = blocked_items(engine.catalog, funnel.config.rerank.rules)
    _, cands, _ = featurize(engine, query, blocked, with_features=False)
    ids = engine.catalog.item_ids[cands.items].astype(str)
    return pd.DataFrame({"user_id": user_id, "cut": cut, "item_id": ids})


def _item_records(events: pd.DataFrame, cuts: pd.DataFrame) -> pd.DataFrame:
    """One item's counter record at each cut asked for it: the item's events
    (of every user) replayed up to the cut, exported as the counters store
    it (an item without events by then has none, and reads as unseen)."""
    from sieve.realtime.counters import Replay

    out: dict[str, list[Any]] = {"item_id": [], "cut": [], "key": [], "record": []}
    if cuts.empty or events.empty:
        return pd.DataFrame(out)
    item_id = str(events["item_id"].iloc[0])
    replay = Replay(events, lambda _: ())
    for cut in np.sort(cuts["cut"].unique()):
        for key, blob in replay.advance(float(cut)).export([item_id], []).items():
            out["item_id"].append(item_id)
            out["cut"].append(float(cut))
            out["key"].append(key)
            out["record"].append(blob)
    return pd.DataFrame(out)


def _featurise_user(
    group: pd.DataFrame, records: pd.DataFrame, name: str, temporal: bool
) -> pd.DataFrame:
    """One user's (candidates, features, base score), on an executor, with
    the online counters as of the cut: the candidates' item records
    (`records`) and the user's own, from their events."""
    from sieve.pipeline.features import featurize
    from sieve.ranking.features import base_score
    from sieve.realtime.counters import OnlineCounters, Replay
    from sieve.rerank.rules import blocked_items
    from sieve.storage.cache import MemoryCache

    empty: dict[str, Any] = {"user_id": [], "items": [], "x": [], "width": [], "base": []}
    if group.empty:
        return pd.DataFrame(empty)
    funnel = _loaded(name)
    engine = funnel.state.engine
    config = funnel.config
    catalog = engine.catalog
    user_id, cut, query = _user_query(group, funnel, temporal)

    def categories(item_id: str) -> list[str]:
        item = catalog.find(item_id)
        return catalog.categories_of(item) if item >= 0 else []

    mine = Replay(group, categories).advance(cut).export([], [user_id])
    online = OnlineCounters(MemoryCache())
    online.restore({**mine, **dict(zip(records["key"], records["record"], strict=True))})
    blocked = blocked_items(catalog, config.rerank.rules)
    _, cands, x = featurize(engine, query, blocked, online=online)
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


__all__ = ["featurised_rows", "label_pairs", "training_rows"]
