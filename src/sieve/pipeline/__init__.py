"""The multi-stage funnel: candidate generation → learned ranking → re-ranking.

`Funnel` is a `Recommender` (so `sieve evaluate --models funnel,ease` works)
whose live path is `recommend_query`: one `Query` in, a list of
`Recommended` items out, each with the sources that proposed it and an
explanation.

1. Candidates (`sieve.retrieval`): ALS factors in a FAISS index,
   item-to-item from the session and history, content (TF-IDF), EASE
   (optionally sparse EASE on large catalogs), popular, trending and fresh
   items; merged under per-source quotas with seen, excluded, unavailable
   and out-of-category items removed.
2. Ranking (`sieve.ranking`): LightGBM LambdaMART over the features of
   `sieve.ranking.features` (online-counter features included, read from
   `Funnel.online`), trained on held-out training interactions, on logged
   impressions and their clicks (`Funnel.logged`, `RankerConfig.train_on`)
   or both; a reciprocal-rank blend of the sources when it is off (and for
   requests with no history at all, which get the charts).
3. Re-ranking (`sieve.rerank`): freshness bonus, MMR diversity, a cap per
   category, calibration to the user's category mix, minimum long-tail
   exposure and business rules; then an explanation per item.

Everything is built from one `FunnelConfig` (TOML sections), whose defaults
need no file.
"""

from sieve.data.schema import UnknownIdError
from sieve.models.base import NotFittedError
from sieve.pipeline.config import BlendConfig, FunnelConfig, load_funnel_config
from sieve.pipeline.features import featurize
from sieve.pipeline.funnel import Funnel
from sieve.pipeline.training import FunnelState

__all__ = [
    "BlendConfig",
    "Funnel",
    "FunnelConfig",
    "FunnelState",
    "NotFittedError",
    "UnknownIdError",
    "featurize",
    "load_funnel_config",
]
