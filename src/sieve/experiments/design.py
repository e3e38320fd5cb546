"""Sample size, power and minimum detectable effect of two-arm tests.

Normal approximations of the two-sided (or one-sided) z-tests, the textbook
forms (Fleiss, without continuity correction). With z_a = z_{1−α/2}
(z_{1−α} one-sided), z_b = z_{power}, control rate p₁, treatment rate p₂ =
p₁ + Δ, k = n₂/n₁ and p̄ = (p₁ + k·p₂)/(1 + k):

    proportions:  n₁ = (z_a·√(p̄q̄(1 + 1/k)) + z_b·√(p₁q₁ + p₂q₂/k))² / Δ²
    means:        n₁ = (z_a + z_b)² · σ²(1 + 1/k) / δ²

(q = 1 − p). Example: p₁ = 10 %, Δ = 2 points, α = 0.05, power 0.8 → 3,841
units per arm. The power functions invert these (both tails counted), and
the MDE functions solve them for the effect.
"""

from __future__ import annotations

import math

import scipy.optimize
import scipy.stats

__all__ = [
    "mde_from_se",
    "mde_means",
    "mde_proportions",
    "power_means",
    "power_proportions",
    "sample_size_means",
    "sample_size_proportions",
]


def _check(alpha: float, power: float | None = None, ratio: float = 1.0) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if power is not None and not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not ratio > 0.0:
        raise ValueError(f"ratio (n_treatment / n_control) must be > 0, got {ratio}")


def _z_alpha(alpha: float, two_sided: bool) -> float:
    return float(scipy.stats.norm.ppf(1.0 - alpha / 2.0 if two_sided else 1.0 - alpha))


def _rates(baseline: float, mde: float, relative: bool) -> tuple[float, float]:
    if not 0.0 < baseline < 1.0:
        raise ValueError(f"baseline rate must be in (0, 1), got {baseline}")
    if mde == 0.0 or not math.isfinite(mde):
        raise ValueError(f"mde must be a non-zero finite effect, got {mde}")
    p2 = baseline * (1.0 + mde) if relative else baseline + mde
    if not 0.0 < p2 < 1.0:
        raise ValueError(
            f"treatment rate {p2:.4g} (baseline {baseline} with mde {mde}"
            f"{' relative' if relative else ' absolute'}) is outside (0, 1)"
        )
    return baseline, p2


def sample_size_proportions(
    baseline: float,
    mde: float,
    *,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> int:
    """Units in the control arm (treatment: ⌈ratio · n⌉) for a two-proportion z-test.

    ``mde`` is relative to ``baseline`` (0.1 = +10 %) unless ``relative=False``
    (then absolute: 0.02 = +2 points). Formula in the module docstring.
    """
    _check(alpha, power, ratio)
    p1, p2 = _rates(baseline, mde, relative)
    k = ratio
    pbar = (p1 + k * p2) / (1.0 + k)
    za, zb = _z_alpha(alpha, two_sided), float(scipy.stats.norm.ppf(power))
    num = za * math.sqrt(pbar * (1 - pbar) * (1 + 1 / k)) + zb * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2) / k
    )
    return math.ceil(num**2 / (p2 - p1) ** 2)


def power_proportions(
    baseline: float,
    mde: float,
    n_per_arm: float,
    *,
    relative: bool = True,
    alpha: float = 0.05,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> float:
    """Power of the two-proportion z-test with ``n_per_arm`` control units.

    power = Φ((|Δ| − z_a·se₀)/se₁) + Φ((−|Δ| − z_a·se₀)/se₁) (second term two-sided
    only), se₀ = √(p̄q̄(1/n₁ + 1/n₂)) under H₀ and se₁ = √(p₁q₁/n₁ + p₂q₂/n₂).
    """
    _check(alpha, None, ratio)
    if not n_per_arm > 0:
        raise ValueError(f"n_per_arm must be > 0, got {n_per_arm}")
    p1, p2 = _rates(baseline, mde, relative)
    n1, n2 = float(n_per_arm), ratio * float(n_per_arm)
    pbar = (n1 * p1 + n2 * p2) / (n1 + n2)
    se0 = math.sqrt(pbar * (1 - pbar) * (1 / n1 + 1 / n2))
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    za, d = _z_alpha(alpha, two_sided), abs(p2 - p1)
    out = float(scipy.stats.norm.cdf((d - za * se0) / se1))
    if two_sided:
        out += float(scipy.stats.norm.cdf((-d - za * se0) / se1))
    return out


def mde_proportions(
    baseline: float,
    n_per_arm: float,
    *,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> float:
    """Smallest increase of the rate detected with ``power`` (inverse of the above).

    Relative to ``baseline`` unless ``relative=False``; solved numerically.
    """
    _check(alpha, power, ratio)
    if not 0.0 < baseline < 1.0:
        raise ValueError(f"baseline rate must be in (0, 1), got {baseline}")
    hi = (1.0 - baseline) * (1 - 1e-9)  # absolute headroom

    def gap(d: float) -> float:
        got = power_proportions(
            baseline, d, n_per_arm, relative=False, alpha=alpha, ratio=ratio, two_sided=two_sided
        )
        return got - power

    if gap(hi) < 0:
        return math.inf
    d = float(scipy.optimize.brentq(gap, 1e-12, hi, xtol=1e-12))
    return d / baseline if relative else d


def sample_size_means(
    sd: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> int:
    """Control-arm units for a two-sample test of means with common ``sd``.

    n₁ = (z_a + z_b)²·σ²(1 + 1/k)/δ² with δ = ``mde`` absolute (same units as the
    metric). Example: σ = 1, δ = 0.5 → 63 per arm.
    """
    _check(alpha, power, ratio)
    if not sd > 0 or mde == 0 or not math.isfinite(mde):
        raise ValueError(f"need sd > 0 and a non-zero finite mde, got sd={sd}, mde={mde}")
    za, zb = _z_alpha(alpha, two_sided), float(scipy.stats.norm.ppf(power))
    return math.ceil((za + zb) ** 2 * sd**2 * (1 + 1 / ratio) / mde**2)


def power_means(
    sd: float,
    mde: float,
    n_per_arm: float,
    *,
    alpha: float = 0.05,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> float:
    """Power of the two-sample z-test of means: Φ(|δ|/se − z_a) + Φ(−|δ|/se − z_a),
    se = σ·√(1/n₁ + 1/n₂)."""
    _check(alpha, None, ratio)
    if not sd > 0 or not n_per_arm > 0:
        raise ValueError(f"need sd > 0 and n_per_arm > 0, got sd={sd}, n={n_per_arm}")
    se = sd * math.sqrt(1 / n_per_arm + 1 / (ratio * n_per_arm))
    za = _z_alpha(alpha, two_sided)
    out = float(scipy.stats.norm.cdf(abs(mde) / se - za))
    if two_sided:
        out += float(scipy.stats.norm.cdf(-abs(mde) / se - za))
    return out


def mde_from_se(se_diff: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Absolute effect detected with ``power`` by a two-sided z-test whose difference
    has standard error ``se_diff``: (z_{1−α/2} + z_{power})·se (one tail neglected)."""
    _check(alpha, power)
    return (_z_alpha(alpha, True) + float(scipy.stats.norm.ppf(power))) * se_diff


def mde_means(
    sd: float,
    n_per_arm: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Absolute difference of means detected with ``power`` (two-sided):
    (z_a + z_b)·σ·√(1/n₁ + 1/n₂)."""
    _check(alpha, power, ratio)
    return mde_from_se(
        sd * math.sqrt(1 / n_per_arm + 1 / (ratio * n_per_arm)), alpha=alpha, power=power
    )
