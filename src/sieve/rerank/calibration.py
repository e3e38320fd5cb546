"""Calibration: the list's category mix follows the user's (Steck, RecSys 2018).

The greedy step adds −w · KL(p ‖ q̃) to each item's objective, where p is the
user's category distribution (their history's share of each category), q
the distribution of the list with the item added (each item spreads one unit
uniformly over its categories) and q̃ = (1 − α) q + α p keeps the divergence
finite. Items that bring the list closer to p win.
"""

from __future__ import annotations

import dataclasses
import math

import numba
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


@numba.njit(cache=True, nogil=True)
def kl_added(
    list_mass: NDArray[np.float64],
    n_listed: int,
    distribution: NDArray[np.float64],
    target: NDArray[np.float64],
    smoothing: float,
) -> float:  # pragma: no cover - compiled
    """KL(p ‖ q̃) of a list (summed category distributions `list_mass` of
    its `n_listed` items) extended by one item of category `distribution`
    (summing to 1 or 0): p = `target`, q the extended list's mix (only the
    categories p holds count)."""
    kl = 0.0
    for c in range(target.shape[0]):
        p = target[c]
        if p > 0:
            q = (list_mass[c] + distribution[c]) / (n_listed + 1.0)
            kl += p * (math.log(p) - math.log((1.0 - smoothing) * q + smoothing * p))
    return kl


def calibration_kl(
    distribution: NDArray[np.float64], target: NDArray[np.float64], smoothing: float = 0.01
) -> float:
    """KL(p ‖ q̃) of a whole list (rows of `distribution`)."""
    if len(distribution) == 0:
        return 0.0
    d = np.asarray(distribution, dtype=np.float64)
    mass = d[:-1].sum(axis=0)
    return float(kl_added(mass, len(d) - 1, d[-1], np.asarray(target, np.float64), smoothing))
