"""CUPED: variance reduction with a pre-experiment covariate (Deng et al., 2013).

With outcome Y and a covariate X measured before assignment (so independent
of the arm), Y_cuped = Y − θ·(X − E[X]) has the same expectation as Y and
variance var(Y)·(1 − ρ²) at θ = cov(Y, X)/var(X), ρ = corr(Y, X). The same θ
must be used in every arm; it is estimated from the pooled within-arm
covariances, so an arm's effect does not leak into θ:

    θ = Σ_arms Σ_i (y_i − ȳ_arm)(x_i − x̄_arm) / Σ_arms Σ_i (x_i − x̄_arm)²

The adjusted arm mean is ȳ_arm − θ·(x̄_arm − x̄_all) (x̄_all over all arms),
and its standard error comes from the adjusted per-unit values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

__all__ = ["CupedResult", "cuped_adjust", "cuped_theta", "pooled_theta"]


@dataclass(frozen=True)
class CupedResult:
    """Adjusted values, the θ used and the variance reduction 1 − var(adj)/var(y)."""

    adjusted: FloatArray
    theta: float
    variance_reduction: float


def _pair(y: ArrayLike, x: ArrayLike) -> tuple[FloatArray, FloatArray]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    xx = np.asarray(x, dtype=np.float64).ravel()
    if yy.shape != xx.shape:
        raise ValueError(f"outcome and covariate must pair up ({yy.size} != {xx.size})")
    if not (np.all(np.isfinite(yy)) and np.all(np.isfinite(xx))):
        raise ValueError("outcome and covariate must be finite")
    return yy, xx


def cuped_theta(y: ArrayLike, x: ArrayLike) -> float:
    """θ = cov(Y, X)/var(X) (0 when X is constant)."""
    yy, xx = _pair(y, x)
    xc = xx - xx.mean()
    var = float(xc @ xc)
    return 0.0 if var == 0.0 else float((yy - yy.mean()) @ xc) / var


def pooled_theta(ys: Sequence[ArrayLike], xs: Sequence[ArrayLike]) -> float:
    """θ from within-arm centred data pooled over arms (see module docstring)."""
    num = den = 0.0
    for y, x in zip(ys, xs, strict=True):
        yy, xx = _pair(y, x)
        xc = xx - xx.mean()
        num += float((yy - yy.mean()) @ xc)
        den += float(xc @ xc)
    return 0.0 if den == 0.0 else num / den


def cuped_adjust(y: ArrayLike, x: ArrayLike, theta: float | None = None) -> CupedResult:
    """Y − θ·(X − x̄) with θ = cov(Y, X)/var(X) unless given."""
    yy, xx = _pair(y, x)
    th = cuped_theta(yy, xx) if theta is None else float(theta)
    adjusted = yy - th * (xx - xx.mean())
    v = float(yy.var())
    reduction = 0.0 if v == 0.0 else 1.0 - float(adjusted.var()) / v
    return CupedResult(adjusted, th, reduction if math.isfinite(reduction) else 0.0)
