"""Intervals, paired tests and multiple-comparison corrections."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats

from sieve.evaluate import stats as S


def test_mean_ci_by_hand() -> None:
    # [1..5]: mean 3, s = sqrt(2.5), se = sqrt(2.5 / 5) = sqrt(0.5); t_{0.975, 4} = 2.7764451
    iv = S.mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(0.5)
    assert iv.mean == pytest.approx(3.0)
    assert iv.low == pytest.approx(3.0 - half)
    assert iv.high == pytest.approx(3.0 + half)
    assert iv.half_width == pytest.approx(half)


def test_mean_ci_degenerate_and_invalid() -> None:
    assert S.mean_ci([2.0, 2.0, 2.0]) == S.Interval(2.0, 2.0, 2.0)
    single = S.mean_ci([4.0])
    assert single.mean == 4.0 and math.isnan(single.low) and math.isnan(single.high)
    with pytest.raises(ValueError):
        S.mean_ci([1.0, np.nan])
    with pytest.raises(ValueError):
        S.mean_ci([])
    with pytest.raises(ValueError):
        S.mean_ci([1.0, 2.0], confidence=1.0)


@pytest.mark.parametrize(("confidence", "lo", "hi"), [(0.95, 0.92, 0.98), (0.80, 0.75, 0.85)])
def test_t_interval_coverage_by_simulation(confidence: float, lo: float, hi: float) -> None:
    rng = np.random.default_rng(7)
    true_mean = 1.3
    covered = 0
    for _ in range(400):
        iv = S.mean_ci(rng.normal(true_mean, 2.0, size=20), confidence)
        covered += iv.low <= true_mean <= iv.high
    assert lo <= covered / 400 <= hi


def test_bootstrap_coverage_by_simulation() -> None:
    rng = np.random.default_rng(8)
    covered = 0
    reps = 150
    for i in range(reps):
        x = rng.exponential(1.0, size=60)  # skewed, true mean 1
        iv = S.bootstrap_ci(x, n_resamples=999, seed=i)
        covered += iv.low <= 1.0 <= iv.high
    # percentile bootstrap under-covers a little on skewed small samples
    assert 0.85 <= covered / reps <= 0.99


def test_bootstrap_ci_properties() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(0.4, 0.2, size=2000)
    boot = S.bootstrap_ci(x, seed=1)
    t = S.mean_ci(x)
    # large normal sample: bootstrap and t intervals agree closely
    assert boot.mean == pytest.approx(t.mean)
    assert boot.low == pytest.approx(t.low, abs=0.003)
    assert boot.high == pytest.approx(t.high, abs=0.003)
    assert S.bootstrap_ci(x, seed=1) == boot  # reproducible
    med = S.bootstrap_ci(x[:200], statistic=np.median, seed=2, method="BCa")
    assert med.mean == pytest.approx(float(np.median(x[:200])))
    assert med.low < med.mean < med.high
    assert S.bootstrap_ci(np.ones(10), seed=0) == S.Interval(1.0, 1.0, 1.0)


def _recsys_like(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Two models' per-user scores sharing a strong per-user effect."""
    user_effect = rng.beta(0.5, 2.0, size=n)
    a = user_effect + rng.normal(0.0, 0.05, size=n)
    b = user_effect + shift + rng.normal(0.0, 0.05, size=n)
    return a, b


@pytest.mark.parametrize("method", ["t", "wilcoxon"])
def test_paired_test_detects_planted_shift(method: str) -> None:
    rng = np.random.default_rng(10)
    a, b = _recsys_like(rng, 300, shift=0.02)
    res = S.paired_test(b, a, method=method)  # type: ignore[arg-type]
    assert res.p_value < 1e-6
    assert res.mean_diff == pytest.approx(0.02, abs=0.01)
    assert res.ci_low < 0.02 < res.ci_high
    assert res.ci_low > 0.0
    # an unpaired view of the same data cannot see the shift through the user effect
    assert scipy.stats.ttest_ind(b, a).pvalue > 0.05


@pytest.mark.parametrize("method", ["t", "wilcoxon"])
def test_paired_test_false_positive_rate_and_power(method: str) -> None:
    rng = np.random.default_rng(11)
    null = [S.paired_test(*_recsys_like(rng, 100, 0.0), method=method) for _ in range(300)]  # type: ignore[arg-type]
    rate = np.mean([r.p_value < 0.05 for r in null])
    assert 0.02 <= rate <= 0.09
    # sd(a − b) = 0.05·√2 ≈ 0.071, se over 100 users ≈ 0.0071: a 0.025 shift is ≈ 3.5 se,
    # which a t-test at α = 0.05 detects with power ≈ 0.94
    alt = [S.paired_test(*_recsys_like(rng, 100, 0.025), method=method) for _ in range(100)]  # type: ignore[arg-type]
    assert np.mean([r.p_value < 0.05 for r in alt]) > 0.85


@pytest.mark.parametrize("method", ["t", "wilcoxon"])
def test_paired_test_identical_arrays(method: str) -> None:
    a = np.array([0.1, 0.5, 0.0, 0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = S.paired_test(a, a.copy(), method=method)  # type: ignore[arg-type]
    assert res == S.PairedResult(0.0, 1.0, 0.0, 0.0, 0.0)


def test_paired_test_constant_shift_and_errors() -> None:
    a = np.array([0.1, 0.5, 0.0, 0.3])
    # a shift that is exact in binary floating point, and one that is not (rounding
    # leaves d = a + 0.1 − a off by ~1e-17): both are a constant difference
    for shift in (0.125, 0.1, -0.1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = S.paired_test(a + shift, a)
        assert res.p_value == 0.0 and res.statistic == math.copysign(math.inf, shift)
        assert res.mean_diff == pytest.approx(shift)
    with pytest.raises(ValueError):
        S.paired_test(a, a[:3])
    with pytest.raises(ValueError):
        S.paired_test(a, a, method="anova")  # type: ignore[arg-type]


def test_holm_by_hand() -> None:
    # sorted: 0.005 (×4 = 0.02), 0.01 (×3 = 0.03), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04)
    # step-down monotonicity lifts the last one to max(0.06, 0.04) = 0.06
    got = S.holm_bonferroni([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])
    # capped at 1: 2 × 0.5 = 1.0, then max(1.0, 0.6) = 1.0
    np.testing.assert_allclose(S.holm_bonferroni([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(S.holm_bonferroni([0.2]), [0.2])


def test_holm_matches_definition_on_random_p() -> None:
    rng = np.random.default_rng(12)
    p = rng.uniform(0, 0.2, size=15)
    m = p.size
    srt = np.sort(p)
    # p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)), written as an explicit loop
    expected_sorted = [max(min(1.0, (m - j) * srt[j]) for j in range(i + 1)) for i in range(m)]
    got = S.holm_bonferroni(p)
    np.testing.assert_allclose(np.sort(got), expected_sorted)
    assert np.all(got >= p)


def test_benjamini_hochberg_by_hand_and_vs_scipy() -> None:
    # sorted: 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04
    got = S.benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.02, 0.04, 0.04, 0.02])
    rng = np.random.default_rng(13)
    p = np.concatenate([rng.uniform(0, 0.01, 5), rng.uniform(0, 1, 20)])
    np.testing.assert_allclose(S.benjamini_hochberg(p), scipy.stats.false_discovery_control(p))
    with pytest.raises(ValueError):
        S.benjamini_hochberg([0.1, 1.5])


def test_compare_to_baseline() -> None:
    rng = np.random.default_rng(14)
    n = 400
    user_effect = rng.beta(0.5, 2.0, size=n)

    def model(shift: float) -> np.ndarray:
        return user_effect + shift + rng.normal(0.0, 0.05, size=n)

    per_user = {"pop": model(0.0), "ease": model(0.03), "same": model(0.0), "worse": model(-0.02)}
    out = S.compare_to_baseline(per_user, "pop")
    assert list(out) == ["ease", "same", "worse"]
    assert out["ease"].mean_diff > 0 and out["worse"].mean_diff < 0
    assert out["ease"].p_adjusted is not None and out["ease"].p_adjusted < 1e-6
    assert out["worse"].p_adjusted is not None and out["worse"].p_adjusted < 1e-3
    assert out["same"].p_adjusted is not None and out["same"].p_adjusted > 0.05
    raw = np.array([r.p_value for r in out.values()])
    adjusted = np.array([r.p_adjusted for r in out.values()], dtype=float)
    np.testing.assert_allclose(adjusted, S.holm_bonferroni(raw))
    bh = S.compare_to_baseline(per_user, "pop", method="wilcoxon", correction="bh")
    assert all(r.p_adjusted is not None and r.p_adjusted >= r.p_value for r in bh.values())
    with pytest.raises(KeyError):
        S.compare_to_baseline(per_user, "missing")
    with pytest.raises(ValueError):
        S.compare_to_baseline({"a": np.ones(3), "b": np.ones(4)}, "a")
