"""Freshness: a score bonus for new items, decaying with their age.

Bonus = `boost` · 2^(−age / half_life), added to the relevance normalised to
[0, 1], so `boost` reads as "a brand-new item gains this share of the
request's relevance range". Items of unknown age get no bonus; items dated
in the future count as brand new.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class FreshnessConfig(Config):
    """Freshness boost.

    - `enabled`: add the bonus.
    - `boost`: bonus of a brand-new item, in units of the relevance range.
    - `half_life_days`: age at which the bonus has halved.
    """

    enabled: bool = True
    boost: float = 0.02
    half_life_days: float = 14.0

    def validate(self) -> None:
        if self.boost < 0:
            raise ConfigError("FreshnessConfig.boost must be >= 0")
        if self.half_life_days <= 0:
            raise ConfigError("FreshnessConfig.half_life_days must be > 0")


def freshness_bonus(age_days: NDArray[np.floating], config: FreshnessConfig) -> NDArray[np.float64]:
    """The bonus of items of the given ages (0 where the age is unknown)."""
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    bonus = config.boost * np.exp2(-age / config.half_life_days)
    return np.where(np.isfinite(bonus), bonus, 0.0)
