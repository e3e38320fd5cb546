"""The funnel's configuration: `FunnelConfig` (one TOML table per stage) and
`BlendConfig` (the source weights when the ranker is off)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sieve.config import Config, ConfigError, read_toml
from sieve.explore.linear import ContextualConfig
from sieve.models.content import ContentConfig
from sieve.models.ease import EASEConfig
from sieve.models.factorization import ALSConfig
from sieve.models.itemknn import ItemKNNConfig
from sieve.models.neural.sasrec import SASRecConfig
from sieve.models.neural.two_tower import TwoTowerConfig
from sieve.models.popularity import TrendingConfig
from sieve.models.sparse_ease import SparseEASEConfig
from sieve.ranking.attributes import AttributesConfig
from sieve.ranking.ltr import RankerConfig
from sieve.ranking.query import QueryConfig
from sieve.rerank.stages import RerankConfig, SectionedConfig
from sieve.retrieval.ann import AnnConfig
from sieve.retrieval.candidates import SOURCES, SourcesConfig


@dataclasses.dataclass(frozen=True)
class BlendConfig(Config):
    """Ranking without the learned ranker: weighted reciprocal-rank fusion,
    relevance = Σ_s weight_s / (`k` + rank of the item in source s).

    - `k`: the fusion constant (larger flattens the rank differences).
    - `ann`, `item_to_item`, `content`, `ease`, `popular`, `trending`,
      `fresh`, `continuation`, `user_to_user`, `sasrec`: the weight of each
      source.
    """

    k: float = 60.0
    ann: float = 1.0
    item_to_item: float = 1.0
    content: float = 0.5
    ease: float = 1.5
    popular: float = 0.3
    trending: float = 0.5
    fresh: float = 0.2
    continuation: float = 1.0
    user_to_user: float = 0.5
    sasrec: float = 1.0

    def validate(self) -> None:
        if self.k <= 0:
            raise ConfigError("BlendConfig.k must be > 0")
        for s in SOURCES:
            if getattr(self, s) < 0:
                raise ConfigError(f"BlendConfig.{s} must be >= 0")


def _funnel_als() -> ALSConfig:
    return ALSConfig(factors=64, regularization=0.05, alpha=2.0, iterations=15)


@dataclasses.dataclass(frozen=True)
class FunnelConfig(SectionedConfig):
    """The whole funnel, one TOML table per section.

    - `sources`: candidate sources and their quotas (`SourcesConfig`).
    - `ann`: the FAISS index over ALS item factors (`AnnConfig`).
    - `als`: the ALS model whose item factors the ANN source searches (its
      own config; 64 factors here).
    - `itemknn`: the item-kNN model behind the item-to-item source.
    - `ease`: the EASE model of the EASE source (catalogs up to
      `sources.ease_max_items`).
    - `sparse_ease`: the sparse EASE model of the EASE source on larger
      catalogs (`sources.ease_large`).
    - `content`: the TF-IDF model of the content source (cold items).
    - `two_tower`: the two-tower model behind the ANN source when
      `sources.ann_model = "two-tower"`.
    - `sasrec`: the SASRec model of the session source (`sources.sasrec`
      > 0; the `neural` extra, `pip install 'sieve[neural]'`).
    - `trending`: time decay of the trending chart (`TrendingConfig`).
    - `ranker`: the LambdaMART ranker and how its labels are made
      (`RankerConfig`).
    - `blend`: source weights when the ranker is off (`BlendConfig`).
    - `rerank`: the re-ranking stages (`RerankConfig`).
    - `query`: how a request is built from a user's events, the same for the
      ranker's training queries and live requests (`QueryConfig`).
    - `attributes`: item and user attributes (and a `POST /rank` caller's
      per-item fields) the ranker learns from (`AttributesConfig`).
    - `linucb`: the context features of LinUCB in serving, as an
      exploration policy and an experiment's arm allocation
      (`sieve.explore.linear.ContextualConfig`).
    """

    sources: SourcesConfig = dataclasses.field(default_factory=SourcesConfig)
    ann: AnnConfig = dataclasses.field(default_factory=AnnConfig)
    als: ALSConfig = dataclasses.field(default_factory=_funnel_als)
    itemknn: ItemKNNConfig = dataclasses.field(default_factory=ItemKNNConfig)
    ease: EASEConfig = dataclasses.field(default_factory=EASEConfig)
    sparse_ease: SparseEASEConfig = dataclasses.field(default_factory=SparseEASEConfig)
    content: ContentConfig = dataclasses.field(default_factory=ContentConfig)
    trending: TrendingConfig = dataclasses.field(default_factory=TrendingConfig)
    ranker: RankerConfig = dataclasses.field(default_factory=RankerConfig)
    blend: BlendConfig = dataclasses.field(default_factory=BlendConfig)
    rerank: RerankConfig = dataclasses.field(default_factory=RerankConfig)
    query: QueryConfig = dataclasses.field(default_factory=QueryConfig)
    attributes: AttributesConfig = dataclasses.field(default_factory=AttributesConfig)
    linucb: ContextualConfig = dataclasses.field(default_factory=ContextualConfig)
    two_tower: TwoTowerConfig = dataclasses.field(default_factory=TwoTowerConfig)
    sasrec: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)


def load_funnel_config(path: str | Path) -> FunnelConfig:
    """A `FunnelConfig` from a TOML file (missing keys keep their defaults)."""
    return FunnelConfig.from_dict(read_toml(path))
