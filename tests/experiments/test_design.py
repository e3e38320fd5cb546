"""Sample size and power against textbook values, and their consistency."""

from __future__ import annotations

import math

import pytest

from sieve.experiments import design as D


def test_sample_size_proportions_textbook() -> None:
    # p₁ = 10 %, p₂ = 12 %, α = .05 two-sided, power .8: Fleiss without
    # continuity correction gives 3,841 per arm
    assert D.sample_size_proportions(0.10, 0.02, relative=False) == 3841
    assert D.sample_size_proportions(0.10, 0.20) == 3841  # the same effect, relative
    # hand: (1.959964·√(2·.11·.89) + 0.841621·√(.09 + .1056))² / .02² = 3840.6
    za, zb = 1.959963985, 0.841621234
    hand = (za * math.sqrt(2 * 0.11 * 0.89) + zb * math.sqrt(0.1 * 0.9 + 0.12 * 0.88)) ** 2
    assert D.sample_size_proportions(0.10, 0.02, relative=False) == math.ceil(hand / 0.02**2)


def test_sample_size_means_textbook() -> None:
    # δ/σ = 0.5: 2·(1.96 + 0.84)²/0.25 = 62.8 → 63 per arm (normal approximation)
    assert D.sample_size_means(1.0, 0.5) == 63
    assert D.sample_size_means(2.0, 1.0) == 63
    assert D.sample_size_means(1.0, 0.5, power=0.9) == 85


def test_power_inverts_sample_size() -> None:
    for base, mde in [(0.05, 0.10), (0.10, 0.2), (0.3, -0.05)]:
        n = D.sample_size_proportions(base, mde)
        assert D.power_proportions(base, mde, n) == pytest.approx(0.8, abs=0.002)
        assert D.power_proportions(base, mde, n // 4) < 0.4
        assert D.mde_proportions(base, n) == pytest.approx(abs(mde), rel=0.02)
    n = D.sample_size_means(3.0, 0.4, power=0.9)
    assert D.power_means(3.0, 0.4, n) == pytest.approx(0.9, abs=0.002)
    assert D.mde_means(3.0, n, power=0.9) == pytest.approx(0.4, rel=0.01)
    # unequal allocation needs more units in total
    n1 = D.sample_size_proportions(0.05, 0.1, ratio=3.0)
    assert n1 + 3 * n1 > 2 * D.sample_size_proportions(0.05, 0.1)
    assert D.power_proportions(0.05, 0.1, n1, ratio=3.0) == pytest.approx(0.8, abs=0.002)


def test_one_sided_needs_fewer_units() -> None:
    assert D.sample_size_proportions(0.05, 0.1, two_sided=False) < D.sample_size_proportions(
        0.05, 0.1
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: D.sample_size_proportions(0.0, 0.1),
        lambda: D.sample_size_proportions(0.5, 0.0),
        lambda: D.sample_size_proportions(0.6, 1.0),
        lambda: D.sample_size_proportions(0.1, 0.1, alpha=1.5),
        lambda: D.sample_size_means(0.0, 1.0),
        lambda: D.power_proportions(0.1, 0.1, 0),
    ],
)
def test_invalid_inputs(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]
