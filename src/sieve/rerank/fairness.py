"""Minimum exposure for the long tail.

Popularity-trained rankers show the same head of the catalog to everyone. In
every block of `RerankConfig.window` slots, at least `min_tail` items come
from outside the head (the ⌈head_share · n⌉ most popular items, the
"short head" of Abdollahpouri et al. 2017): when the remaining slots of a
block are just enough for the missing tail items, only tail items compete
for the slot, provided one is within `tolerance` of the best allowed item's
normalised relevance (a reserved slot is never given to an irrelevant item).
Position-based, so a longer list starts with the same items.
"""

from __future__ import annotations

import dataclasses

from sieve.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class LongTailConfig(Config):
    """Long-tail exposure.

    - `enabled`: reserve slots for the long tail.
    - `head_share`: share of the catalog (most popular first) that is head.
    - `min_tail`: tail items per block of `RerankConfig.window` slots.
    - `tolerance`: a reserved slot goes to a tail item only if its
      normalised relevance is at most this below the best allowed item's
      (1 = always).
    """

    enabled: bool = True
    head_share: float = 0.2
    min_tail: int = 1
    tolerance: float = 0.05

    def validate(self) -> None:
        if not 0 < self.head_share < 1:
            raise ConfigError("LongTailConfig.head_share must be in (0, 1)")
        if self.min_tail < 0:
            raise ConfigError("LongTailConfig.min_tail must be >= 0")
        if not 0 <= self.tolerance <= 1:
            raise ConfigError("LongTailConfig.tolerance must be in [0, 1]")
