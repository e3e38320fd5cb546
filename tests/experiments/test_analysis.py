"""Per-arm analysis: tests against scipy and hand values, SRM, CUPED, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from sieve.experiments.analysis import (
    AnalysisConfig,
    analyze,
    sample_ratio_check,
    two_proportion_pvalues,
    two_proportion_ztest,
    welch_ttest,
)
from sieve.experiments.assignment import Experiment, Variant
from sieve.experiments.cuped import cuped_adjust, cuped_theta, pooled_theta


def units(
    rng: np.random.Generator,
    n: dict[str, int],
    ctr: dict[str, float],
    revenue_lift: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Per-user aggregates: heterogeneous users (activity and click propensity),
    a pre-period click count correlated with the in-experiment behaviour."""
    frames = []
    for arm, size in n.items():
        propensity = rng.gamma(1.0, 1.0, size)  # mean 1, sd 1: some users click much more
        impressions = rng.poisson(20, size) + 1
        p = np.clip(ctr[arm] * propensity, 0, 1)
        clicks = rng.binomial(impressions, p)
        pre_impr = rng.poisson(20, size) + 1
        pre_clicks = rng.binomial(pre_impr, np.clip(ctr["A"] * propensity, 0, 1))
        conv = rng.binomial(clicks, 0.1)
        lift = (revenue_lift or {}).get(arm, 0.0)
        revenue = conv * rng.gamma(2.0, 10.0 * (1 + lift), size)
        frames.append(
            pd.DataFrame(
                {
                    "arm": arm,
                    "impressions": impressions,
                    "clicks": clicks,
                    "conversions": conv,
                    "revenue": revenue,
                    "dwell_seconds": clicks * rng.exponential(30.0, size),
                    "bounces": rng.binomial(clicks, 0.3),
                    "pre_clicks": pre_clicks,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


EXP = Experiment(name="e", layer="L", salt="s", variants=(Variant("A", 0.5), Variant("B", 0.5)))


def test_two_proportion_ztest_by_hand() -> None:
    # 100/1000 vs 130/1000: p̄ = 0.115, se₀ = √(0.115·0.885·0.002) = 0.0142671
    res = two_proportion_ztest(100, 1000, 130, 1000)
    se0 = math.sqrt(0.115 * 0.885 * 0.002)
    assert res.statistic == pytest.approx(0.03 / se0)
    assert res.statistic == pytest.approx(2.10272, abs=1e-4)
    assert res.p_value == pytest.approx(0.035491, abs=1e-5)
    se1 = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert res.diff.mean == pytest.approx(0.03)
    assert res.diff.low == pytest.approx(0.03 - 1.959964 * se1, abs=1e-6)
    assert res.lift.mean == pytest.approx(0.3)
    # the vectorised p-values agree and handle degenerate totals
    p = two_proportion_pvalues([100, 0], [1000, 10], [130, 0], [1000, 10])
    assert p[0] == pytest.approx(res.p_value) and p[1] == 1.0
    with pytest.raises(ValueError):
        two_proportion_ztest(11, 10, 1, 10)


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 2, 80), rng.normal(11, 5, 50)
    res = welch_ttest(a, b)
    ref = scipy.stats.ttest_ind(b, a, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (res.diff.low, res.diff.high) == pytest.approx((ci.low, ci.high))


def test_sample_ratio_mismatch() -> None:
    skewed = sample_ratio_check({"A": 50_800, "B": 49_200}, {"A": 0.5, "B": 0.5})
    assert skewed.mismatch and skewed.p_value < 1e-5
    fine = sample_ratio_check({"A": 50_100, "B": 49_900}, {"A": 0.5, "B": 0.5})
    assert not fine.mismatch and fine.p_value > 0.1
    ref = scipy.stats.chisquare([50_800, 49_200])
    assert skewed.statistic == pytest.approx(ref.statistic)
    unknown = sample_ratio_check({"A": 10, "B": 10, "C": 3}, {"A": 0.5, "B": 0.5})
    assert unknown.mismatch and unknown.unknown_arms == ("C",)


def test_srm_in_report_overrides_everything() -> None:
    rng = np.random.default_rng(1)
    data = units(rng, {"A": 5200, "B": 4800}, {"A": 0.05, "B": 0.06})
    report = analyze(data, EXP)
    assert report.srm is not None and report.srm.mismatch
    text = report.verdict()
    assert text.startswith("Sample ratio mismatch (χ² p")
    assert "do not trust these results" in text


def test_report_significant_lift_and_verdict() -> None:
    rng = np.random.default_rng(2)
    data = units(rng, {"A": 20_000, "B": 20_000}, {"A": 0.05, "B": 0.055})
    report = analyze(data, EXP, extra={"A": {"coverage": 0.2}, "B": {"coverage": 0.3}})
    a, b = report.arms["A"], report.arms["B"]
    assert a.units == 20_000 and a.impressions == data.loc[data.arm == "A", "impressions"].sum()
    assert a.ctr is not None and a.ctr.mean == pytest.approx(
        data.loc[data.arm == "A", "clicks"].sum() / a.impressions
    )
    assert b.extra == {"coverage": 0.3}
    c = report.comparison("B")
    assert c.test == "z (delta method)" and c.significant
    assert c.result.lift.low < 0.1 < c.result.lift.high  # true lift 10 %
    text = report.verdict()
    assert "B's CTR is" in text and "higher than A's" in text
    assert "significant at α=0.05" in text and "Sample ratio is as configured" in text
    frame = report.to_frame()
    assert set(frame.metric) == {
        "ctr",
        "conversion_rate",
        "revenue_per_user",
        "mean_dwell",
        "bounce_rate",
    }
    assert report.comparison("B", "revenue_per_user").test == "Welch t"
    assert report.comparison("B", "conversion_rate").test == "two-proportion z"
    assert len(report.arms_frame()) == 2


def test_report_no_difference_states_detectable_effect() -> None:
    rng = np.random.default_rng(3)
    data = units(rng, {"A": 3000, "B": 3000}, {"A": 0.05, "B": 0.05})
    report = analyze(data, EXP)
    c = report.comparison("B")
    assert not c.significant
    # the stated MDE is the effect with 80 % power: (z_.975 + z_.8)·se
    se = (c.result.diff.high - c.result.diff.low) / (2 * 1.959964)
    assert c.mde == pytest.approx((1.959964 + 0.841621) * se / c.control_value, rel=1e-4)
    text = report.verdict()
    assert text.startswith("No significant difference in CTR between B and A")
    assert "could detect a lift of ≥" in text and "80% power" in text


def test_ratio_delta_interval_agrees_with_bootstrap() -> None:
    rng = np.random.default_rng(4)
    data = units(rng, {"A": 2000, "B": 2000}, {"A": 0.05, "B": 0.05})
    delta = analyze(data, EXP).arms["A"].ctr
    boot = (
        analyze(data, EXP, config=AnalysisConfig(ratio_ci="bootstrap", n_bootstrap=1000, seed=1))
        .arms["A"]
        .ctr
    )
    assert delta is not None and boot is not None
    assert boot.half_width == pytest.approx(delta.half_width, rel=0.15)
    assert boot.mean == delta.mean
    # the naive binomial interval (impressions as independent trials) is too narrow
    p, n = delta.mean, data.loc[data.arm == "A", "impressions"].sum()
    assert 1.96 * math.sqrt(p * (1 - p) / n) < 0.9 * delta.half_width


def test_cuped_reduces_variance_on_correlated_pre_period() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 5000)
    y = 2.0 * x + rng.normal(0, 1, 5000)  # ρ² = 4/5
    res = cuped_adjust(y, x)
    assert res.theta == pytest.approx(2.0, abs=0.05)
    assert res.variance_reduction == pytest.approx(0.8, abs=0.02)
    assert res.adjusted.mean() == pytest.approx(y.mean())
    assert cuped_theta(y, np.ones_like(y)) == 0.0
    assert pooled_theta([y[:2500], y[2500:] + 5], [x[:2500], x[2500:]]) == pytest.approx(
        2.0, abs=0.05
    )

    data = units(rng, {"A": 10_000, "B": 10_000}, {"A": 0.05, "B": 0.052})
    plain = analyze(data, EXP).comparison("B")
    cfg = AnalysisConfig(cuped={"ctr": "pre_clicks", "revenue_per_user": "pre_clicks"})
    adjusted = analyze(data, EXP, config=cfg)
    c = adjusted.comparison("B")
    assert c.variance_reduction is not None and c.variance_reduction > 0.1
    assert c.result.diff.half_width < plain.result.diff.half_width
    assert c.test.endswith("+ CUPED") and c.covariate == "pre_clicks"
    assert "CUPED on pre_clicks reduced the variance" in adjusted.verdict()


def test_cuped_keeps_aa_false_positive_rate() -> None:
    rng = np.random.default_rng(6)
    cfg = AnalysisConfig(cuped={"ctr": "pre_clicks"})
    p = [
        analyze(units(rng, {"A": 500, "B": 500}, {"A": 0.05, "B": 0.05}), EXP, config=cfg)
        .comparison("B")
        .result.p_value
        for _ in range(150)
    ]
    assert 0.0 <= np.mean(np.array(p) < 0.05) <= 0.1


def test_three_arms_holm_and_control_choice() -> None:
    rng = np.random.default_rng(7)
    exp = Experiment(
        name="e3", layer="L", salt="s3", variants=tuple(Variant(n, 1 / 3) for n in ("A", "B", "C"))
    )
    data = units(rng, {"A": 3000, "B": 3000, "C": 3000}, {"A": 0.05, "B": 0.05, "C": 0.05})
    report = analyze(data, exp, config=AnalysisConfig(control="C"))
    assert report.control == "C"
    prim = [c for c in report.comparisons if c.primary]
    assert {c.treatment for c in prim} == {"A", "B"}
    assert all(c.p_adjusted >= c.result.p_value for c in prim)


def test_bad_input() -> None:
    data = pd.DataFrame({"arm": ["A", "B"], "impressions": [1, 1]})
    with pytest.raises(ValueError, match="clicks"):
        analyze(data)
    with pytest.raises(ValueError, match="arm column"):
        analyze(data.rename(columns={"arm": "variant"}))
