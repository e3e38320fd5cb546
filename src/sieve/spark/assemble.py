"""What Spark computed, assembled on the driver into a funnel's fitted state:
the same parts `sieve train` saves (catalog with charts, ALS factors and the
FAISS index over them, item-to-item neighbours, user arrays, the ranker), so
the saved version loads and serves through the unchanged `Funnel.load`."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.data.schema import EventWeights, empty_events
from sieve.models.factorization import ALS, MFState, interactions_per_user
from sieve.models.itemknn import ItemKNN, ItemKNNState
from sieve.pipeline import Funnel
from sieve.pipeline.config import FunnelConfig
from sieve.pipeline.training import FunnelState
from sieve.ranking.ltr import LTRRanker
from sieve.retrieval.ann import AnnIndex
from sieve.retrieval.catalog import Catalog
from sieve.retrieval.sources import CandidateEngine


@dataclass(frozen=True)
class SparkParts:
    """The results of one Spark fit, by the funnel's item and user indices."""

    user_ids: NDArray[np.object_]
    item_ids: NDArray[np.object_]
    items: pd.DataFrame  # the funnel's items frame over `item_ids` (`models.item_frame`)
    user_factors: NDArray[np.float32] | None
    item_factors: NDArray[np.float32] | None
    similarity: sp.csr_matrix | None
    popularity: NDArray[np.float64]
    trending: NDArray[np.float64]
    user_train_count: NDArray[np.int64]
    user_train_sum: NDArray[np.int64]
    snapshot_time: float


def spark_config(config: FunnelConfig) -> FunnelConfig:
    """The funnel configuration a Spark-trained version serves with: the
    sources Spark does not train are switched off (EASE: a dense items ×
    items solve on one machine; content: not part of the Spark path), so the
    saved config names exactly the parts the version holds."""
    return config.replace(sources=config.sources.replace(ease=0, content=0))


def build_engine(
    parts: SparkParts, config: FunnelConfig, weights: EventWeights, *, exact_ann: bool = False
) -> CandidateEngine:
    """A candidate engine from Spark's results (the counterpart of
    `sieve.pipeline.training.build_engine`)."""
    base = Catalog.from_dataset(
        Dataset.from_frames(empty_events(), parts.items, weights=weights, item_ids=parts.item_ids),
        config.trending,
        parts.snapshot_time,
    )
    catalog = Catalog(
        base.item_ids,
        base.titles,
        base.category_names,
        base.item_categories,
        base.created_at,
        base.available,
        parts.popularity,
        parts.trending,
    )
    src = config.sources
    als = ann = itemknn = None
    if src.ann > 0 and parts.user_factors is not None and parts.item_factors is not None:
        # alpha 0 resolved from the interaction counts, as `fit_als` resolved it
        als_config = config.als.for_data(interactions_per_user(parts.user_train_count))
        als = ALS.from_state(als_config, MFState(parts.user_factors, parts.item_factors))
        ann = AnnIndex.build(parts.item_factors, config.ann, exact=True if exact_ann else None)
    if src.item_to_item > 0 and parts.similarity is not None:
        itemknn = ItemKNN.from_state(config.itemknn, ItemKNNState(parts.similarity))
    return CandidateEngine(
        src,
        catalog,
        dict(weights.weights),
        als=als,
        ann=ann,
        itemknn=itemknn,
        user_train_count=parts.user_train_count,
        user_train_sum=parts.user_train_sum,
        n_train_items=len(parts.item_ids),
        snapshot_time=parts.snapshot_time,
    )


def assemble(
    parts: SparkParts,
    config: FunnelConfig,
    weights: EventWeights,
    ranker: LTRRanker | None,
    *,
    exact_ann: bool = False,
) -> Funnel:
    """A fitted `Funnel` from Spark's results; its version digests the config,
    the vocabularies, the factors' shape and the fit time."""
    engine = build_engine(parts, config, weights, exact_ann=exact_ann)
    engine.catalog.warm(config.rerank.long_tail.head_share)
    fitted_at = time.time()
    h = hashlib.sha256(config.to_toml().encode())
    h.update("\n".join(str(i) for i in parts.item_ids).encode())
    h.update(np.array([len(parts.user_ids), int(parts.user_train_count.sum())]).tobytes())
    h.update(repr(fitted_at).encode())
    state = FunnelState(
        engine=engine,
        ranker=ranker,
        user_ids=np.asarray(parts.user_ids, dtype=object),
        version=h.hexdigest()[:16],
        fitted_at=fitted_at,
    )
    return Funnel.from_state(config, state)


def without_ranker(config: FunnelConfig) -> FunnelConfig:
    """`config` with the ranker off (a version trained with --no-ranker)."""
    return config.replace(ranker=dataclasses.replace(config.ranker, enabled=False))


__all__ = ["SparkParts", "assemble", "build_engine", "spark_config", "without_ranker"]
