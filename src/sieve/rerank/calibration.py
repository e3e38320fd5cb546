"""Calibration: the list's category mix follows the user's (Steck, RecSys 2018).

The greedy step adds −w · KL(p ‖ q̃) to each item's objective, where p is the
user's category distribution (their history's share of each category), q
the distribution of the list with the item added (each item spreads one unit
uniformly over its categories) and q̃ = (1 − α) q + α p keeps the divergence
finite. Items that bring the list closer to p win.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class CalibrationConfig(Config):
    """Calibrated recommendations.

    - `enabled`: add the calibration term.
    - `weight`: w, the weight of the KL term against normalised relevance.
    - `smoothing`: α of q̃ = (1 − α) q + α p.
    """

    enabled: bool = False
    weight: float = 0.1
    smoothing: float = 0.01

    def validate(self) -> None:
        if self.weight < 0:
            raise ConfigError("CalibrationConfig.weight must be >= 0")
        if not 0 < self.smoothing < 1:
            raise ConfigError("CalibrationConfig.smoothing must be in (0, 1)")


def kl_if_added(
    list_mass: NDArray[np.float64],
    n_listed: int,
    distribution: NDArray[np.float64],
    target: NDArray[np.float64],
    config: CalibrationConfig,
) -> NDArray[np.float64]:
    """KL(p ‖ q̃) of the list extended by each candidate.

    `list_mass`: summed category distributions of the listed items;
    `distribution`: candidates × categories (rows sum to 1 or 0); `target`: p.
    """
    on = target > 0
    if not on.any():
        return np.zeros(len(distribution))
    p = target[on]
    q = (list_mass[on][None, :] + distribution[:, on]) / (n_listed + 1.0)
    q_smooth = (1.0 - config.smoothing) * q + config.smoothing * p[None, :]
    return np.asarray((p[None, :] * (np.log(p)[None, :] - np.log(q_smooth))).sum(axis=1))


def calibration_kl(
    distribution: NDArray[np.float64], target: NDArray[np.float64], smoothing: float = 0.01
) -> float:
    """KL(p ‖ q̃) of a whole list (rows of `distribution`)."""
    if len(distribution) == 0:
        return 0.0
    cfg = CalibrationConfig(smoothing=smoothing)
    mass = distribution[:-1].sum(axis=0)
    return float(kl_if_added(mass, len(distribution) - 1, distribution[-1:], target, cfg)[0])
