"""`sieve spark batch`: every user's top-N from a version's ALS factors,
scored on the executors and written to Parquet and, from the executors, into
the cache as the precomputed lists hybrid serving reads.

What a precomputed list can apply of the funnel's re-ranking, it applies:
the user's seen items, unavailable items, items blocked by the rules
(`rerank.rules`) and items not released yet are left out. The stages that
need the live candidate set and its features (the ranker, MMR diversity,
category caps, calibration) are the live path's; a precomputed answer is
served only while it is valid (`sieve.serve.answers`), otherwise the funnel
answers live.

Each cache entry is `recs:{user}` (plus the URL's key prefix) holding
`{"items": [...], "model_version": ..., "computed_at": ...}` with the items
in the served item's shape — the format `sieve.serve.answers` reads (a test
serves them through the service). `computed_at` is taken before any list is
scored: an event recorded after it invalidates the user's entry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from sieve.data.schema import EventWeights
from sieve.registry import ModelRegistry
from sieve.rerank.explain import SIMILAR_TASTE
from sieve.rerank.rules import blocked_items
from sieve.settings import Settings
from sieve.spark.lake import read_lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sieve.pipeline import Funnel

#: Users scored per matrix product on an executor.
_BLOCK = 2048
#: Cache writes per pipeline round trip.
_PIPELINE = 500


@dataclass(frozen=True)
class BatchResult:
    """What a batch wrote: users with a list, entries written to the cache,
    the model version and the time the lists are valid from."""

    users: int
    cached: int
    version: str
    computed_at: float


def recs_key(user_id: str) -> str:
    """The cache key of a user's precomputed list (the key `sieve.serve.answers` reads)."""
    return f"recs:{user_id}"


def batch_on_spark(
    spark: SparkSession,
    data: str | Path,
    settings: Settings,
    to: str | Path,
    *,
    version: str | None = None,
    n: int = 50,
) -> BatchResult:
    """Score every user the version knows on Spark; lists to `to/lists`
    (Parquet) and, when `settings.cache_url` is a redis:// URL, into the cache."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    computed_at = time.time()
    registry = ModelRegistry(settings.model_dir)
    version = version or registry.current()
    if version is None:
        raise ValueError(
            f"no model is serving in {settings.model_dir}: give --version or train one"
        )
    funnel: Funnel = registry.load(version)  # type: ignore[assignment]
    engine = funnel.state.engine
    if engine.als is None:
        raise ValueError(f"model {version} has no ALS factors to score users with")
    to = Path(to)
    factors_path = _write_user_factors(funnel, to / "_factors")
    cache_url = settings.cache_url if settings.cache_url.startswith("redis") else None
    lake = read_lake(spark, data, EventWeights(weights=dict(settings.event_weights)).weights)
    seen = lake.events.groupBy("user_id").agg(F.collect_set("item_id").alias("seen"))
    users = spark.read.parquet(str(factors_path)).join(seen, "user_id", "left")
    cat = engine.catalog
    servable = cat.available.copy()
    blocked = blocked_items(cat, funnel.config.rerank.rules)
    if blocked is not None:
        servable &= ~blocked
    servable &= ~(np.nan_to_num(cat.created_at, nan=-np.inf) > computed_at)
    shared = spark.sparkContext.broadcast(
        {
            "factors": engine.als.state.item_factors,
            "servable": servable,
            "ids": np.asarray(cat.item_ids, dtype=str),
            "titles": [str(t) for t in cat.titles],
            "categories": [cat.categories_of(i) for i in range(cat.n_items)],
        }
    )
    meta = {"version": str(version), "computed_at": computed_at, "n": int(n), "cache": cache_url}
    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("items", T.ArrayType(T.StringType())),
            T.StructField("scores", T.ArrayType(T.FloatType())),
            T.StructField("model_version", T.StringType()),
            T.StructField("cached", T.BooleanType()),
        ]
    )

    def score(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _score_partition(frames, shared.value, meta)

    lists = users.mapInPandas(score, schema)
    lists.write.mode("overwrite").parquet(str(to / "lists"))
    written = spark.read.parquet(str(to / "lists"))
    counts = written.agg(F.count("*"), F.sum(F.col("cached").cast("int"))).collect()[0]
    shared.unpersist()
    return BatchResult(int(counts[0]), int(counts[1] or 0), str(version), computed_at)


def _write_user_factors(funnel: Funnel, folder: Path) -> Path:
    """The version's user factors as Parquet (user_id, factors) for Spark to
    read and partition, written in chunks."""
    state = funnel.state.engine.als.state  # type: ignore[union-attr]
    ids = np.asarray(funnel.user_ids, dtype=str)
    width = int(state.user_factors.shape[1])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "users.parquet"
    schema = pa.schema([("user_id", pa.string()), ("factors", pa.list_(pa.float32(), width))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(ids), 100_000):
            block = np.ascontiguousarray(state.user_factors[start : start + 100_000], np.float32)
            values = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), width)
            writer.write_table(
                pa.table([pa.array(ids[start : start + 100_000]), values], schema=schema)
            )
    return folder


def _score_partition(
    frames: Iterator[pd.DataFrame], shared: dict[str, Any], meta: dict[str, Any]
) -> Iterator[pd.DataFrame]:
    """Top-n of each user of a partition, written to the cache in pipelines."""
    client, prefix = _redis(meta["cache"])
    items: NDArray[np.float32] = shared["factors"]
    servable: NDArray[np.bool_] = shared["servable"]
    lookup = {str(i): k for k, i in enumerate(shared["ids"])}
    n = min(int(meta["n"]), int(servable.sum()))
    try:
        for frame in frames:
            for start in range(0, len(frame), _BLOCK):
                yield _score_block(
                    frame.iloc[start : start + _BLOCK],
                    items,
                    servable,
                    lookup,
                    n,
                    shared,
                    meta,
                    client,
                    prefix,
                )
    finally:
        if client is not None:
            client.close()


def _score_block(
    frame: pd.DataFrame,
    items: NDArray[np.float32],
    servable: NDArray[np.bool_],
    lookup: dict[str, int],
    n: int,
    shared: dict[str, Any],
    meta: dict[str, Any],
    client: Any,
    prefix: str,
) -> pd.DataFrame:
    users = np.stack(frame["factors"].to_numpy()).astype(np.float32)
    scores = users @ items.T
    scores[:, ~servable] = -np.inf
    for row, seen in enumerate(frame["seen"].to_numpy()):
        if seen is not None and len(seen):
            idx = [lookup[s] for s in seen if s in lookup]
            scores[row, idx] = -np.inf
    evidence: NDArray[np.bool_] = np.asarray(
        users.any(axis=1)
    )  # a zero vector scores every item 0: no order, no list
    top = (
        np.argpartition(-scores, n - 1, axis=1)[:, :n] if n > 0 else np.zeros((len(frame), 0), int)
    )
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    out_ids: list[list[str]] = []
    out_scores: list[list[float]] = []
    cached: list[bool] = []
    pipe = client.pipeline(transaction=False) if client is not None else None
    for row, user_id in enumerate(frame["user_id"].tolist()):
        keep: NDArray[np.bool_] = np.isfinite(top_scores[row]) & bool(evidence[row])
        picked, values = top[row][keep], top_scores[row][keep]
        out_ids.append([str(shared["ids"][i]) for i in picked])
        out_scores.append([float(s) for s in values])
        if pipe is None or len(picked) == 0:
            cached.append(False)
            continue
        entry = {
            "items": [
                {
                    "id": str(shared["ids"][i]),
                    "score": float(s),
                    "title": shared["titles"][i],
                    "categories": shared["categories"][i],
                    "explanation": SIMILAR_TASTE,
                    "sources": {"ann": float(s)},
                    "propensity": 1.0,
                    "slot": "ranked",
                    "team": None,
                }
                for i, s in zip(picked.tolist(), values.tolist(), strict=True)
            ],
            "model_version": meta["version"],
            "computed_at": meta["computed_at"],
        }
        pipe.set(prefix + recs_key(str(user_id)), json.dumps(entry, separators=(",", ":")))
        cached.append(True)
        if len(pipe) >= _PIPELINE:
            pipe.execute()
    if pipe is not None and len(pipe):
        pipe.execute()
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str).to_numpy(),
            "items": out_ids,
            "scores": out_scores,
            "model_version": meta["version"],
            "cached": cached,
        }
    )


def _redis(url: str | None) -> tuple[Any, str]:
    """A redis-py client and the key prefix of a cache URL (`?prefix=`), or (None, "")."""
    if url is None:
        return None, ""
    import redis

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", "")
    query.pop("cooldown", None)
    query.setdefault("socket_timeout", "10")
    return redis.Redis.from_url(urlunsplit(parts._replace(query=urlencode(query)))), prefix


__all__ = ["BatchResult", "batch_on_spark", "recs_key"]
