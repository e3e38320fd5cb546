"""The export folder (`sieve export`) as Spark DataFrames: the weighted
events, the newest catalog snapshot and the sequence range they cover."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sieve.training.export import read_manifest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class Lake:
    """What Spark reads from an export folder.

    - `events`: event_id, user_id, item_id, type, value, timestamp, seq, day
      and `weight` (the event type's weight; types not configured are left out);
    - `items`: the newest catalog snapshot (item_id, title, text, categories,
      created_at, attributes as JSON, available);
    - `data_range`: the sequence numbers and exports it covers (for manifests).
    """

    events: DataFrame
    items: DataFrame
    data_range: dict[str, Any]


def read_lake(spark: SparkSession, root: str | Path, weights: Mapping[str, float]) -> Lake:
    """The export at `root` with each event weighted by `weights` (event type → weight)."""
    from pyspark.sql import functions as F

    root = Path(root)
    records = read_manifest(root)
    if not records:
        raise FileNotFoundError(
            f"{root} holds no export (no _manifest.json): run `sieve export --to {root}` first"
        )
    if not weights:
        raise ValueError("no event types are configured (event_weights is empty)")
    events = spark.read.parquet(str(root / "events"))
    weight = F.lit(None).cast("double")
    for kind, w in weights.items():
        weight = F.when(F.col("type") == kind, F.lit(float(w))).otherwise(weight)
    events = events.withColumn("weight", weight).where(F.col("weight").isNotNull())
    newest = max(records, key=lambda r: r.to_seq)
    items = spark.read.parquet(str(root / newest.catalog / "items.parquet"))
    data_range = {
        "engine": "spark",
        "lake": str(root.resolve()),
        "min_seq": min(r.from_seq for r in records) + 1,
        "max_seq": max(r.to_seq for r in records),
        "exports": len(records),
        "catalog": newest.catalog,
    }
    return Lake(events=events, items=items, data_range=data_range)


__all__ = ["Lake", "read_lake"]
