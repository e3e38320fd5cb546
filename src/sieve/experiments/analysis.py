"""Per-arm analysis of an online experiment, with a verdict in words.

Input: one row per randomisation unit (user or session) with its arm and its
aggregates over the experiment — ``impressions``, ``clicks`` and, optionally,
``conversions``, ``revenue``, ``dwell_seconds``, ``bounces``, ``sessions``
and pre-period covariates. Units are the independent observations, so every
interval is over units:

- CTR = Σclicks/Σimpressions and bounce rate = Σbounces/Σsessions (or
  /Σimpressions) are *ratio* metrics: clicks of one user are correlated, so
  their variance comes from the delta method over units, with the linearised
  per-unit values l_i = (num_i − R·den_i)/mean(den) and se(R)² = var(l)/n
  (or, per arm, from a bootstrap over units); arms are compared with a z-test.
- Conversion rate = share of units with ≥ 1 conversion: two-proportion z-test
  (pooled standard error for the test, unpooled for the interval).
- Revenue per user and mean dwell are means over units: Welch's t-test, with
  Welch–Satterthwaite degrees of freedom.
- Relative lift T/C − 1 has a delta-method interval:
  se² = se_T²/C² + T²·se_C²/C⁴.
- CUPED (`sieve.experiments.cuped`) adjusts any metric by a pre-period
  covariate column: the per-unit values l (or y) become l − θ(x − x̄_arm) and
  the arm estimate est − θ(x̄_arm − x̄_all); the report gives the variance
  reduction of the difference, 1 − se²_adj/se².
- Sample-ratio mismatch: χ² test of the unit counts per arm against the
  configured shares; flagged at p < 0.001, in which case nothing else should be
  trusted.
- Multiple comparisons: Holm over treatment arms for the primary metric and
  over all (arm, metric) pairs for the secondary metrics.

Size: every analysis the report runs per arm (z, Welch, delta method,
bootstrap, SRM, CUPED, corrections) works on one per-unit frame and feeds one
verdict; split, the verdict would import every piece back.

Longer than most modules: every test behind one verdict (z, Welch, bootstrap, SRM,
CUPED) and the verdict's wording are read together here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from sieve.config import Config, ConfigError
from sieve.evaluate.stats import Interval, bootstrap_ci, holm_bonferroni
from sieve.experiments.assignment import Experiment
from sieve.experiments.cuped import pooled_theta
from sieve.experiments.design import mde_from_se

FloatArray = NDArray[np.float64]
MetricKind = Literal["ratio", "proportion", "mean"]

__all__ = [
    "AnalysisConfig",
    "ArmReport",
    "Comparison",
    "ExperimentReport",
    "Metric",
    "SampleRatioCheck",
    "TestResult",
    "analyze",
    "default_metrics",
    "sample_ratio_check",
    "two_proportion_pvalues",
    "two_proportion_ztest",
    "welch_ttest",
]


# ------------------------------------------------------------------- tests
@dataclass(frozen=True)
class TestResult:
    """Treatment − control: absolute difference and relative lift with intervals,
    the test statistic and its two-sided p-value."""

    __test__ = False  # not a pytest class

    diff: Interval
    lift: Interval
    statistic: float
    p_value: float
    df: float = math.inf


def _lift(t: float, c: float, se_t: float, se_c: float, crit: float) -> Interval:
    """T/C − 1 with the delta-method interval (se² = se_T²/C² + T²·se_C²/C⁴)."""
    if c == 0.0:
        return Interval(math.nan, math.nan, math.nan)
    lift = t / c - 1.0
    se = math.sqrt(se_t**2 / c**2 + t**2 * se_c**2 / c**4)
    return Interval(lift, lift - crit * se, lift + crit * se)


def two_proportion_pvalues(
    x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike
) -> FloatArray:
    """Vectorised two-sided p-values of the pooled two-proportion z-test:
    z = (p_B − p_A)/√(p̄(1 − p̄)(1/n_A + 1/n_B)), p̄ = (x_A + x_B)/(n_A + n_B)
    (p = 1 where p̄ ∈ {0, 1})."""
    xa, na = np.asarray(x_a, dtype=np.float64), np.asarray(n_a, dtype=np.float64)
    xb, nb = np.asarray(x_b, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    pbar = (xa + xb) / (na + nb)
    se = np.sqrt(pbar * (1 - pbar) * (1 / na + 1 / nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (xb / nb - xa / na) / np.where(se > 0, se, 1.0), 0.0)
    return np.asarray(2.0 * scipy.stats.norm.sf(np.abs(z)), dtype=np.float64)


def two_proportion_ztest(
    x_a: int, n_a: int, x_b: int, n_b: int, confidence: float = 0.95
) -> TestResult:
    """Two-proportion z-test of B against A.

    z uses the pooled standard error √(p̄q̄(1/n_A + 1/n_B)); the interval of
    p_B − p_A the unpooled one √(p_Aq_A/n_A + p_Bq_B/n_B) (Wald).
    """
    if min(n_a, n_b) <= 0 or not (0 <= x_a <= n_a and 0 <= x_b <= n_b):
        raise ValueError(f"need 0 ≤ x ≤ n and n > 0, got {x_a}/{n_a} and {x_b}/{n_b}")
    pa, pb = x_a / n_a, x_b / n_b
    pbar = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pbar * (1 - pbar) * (1 / n_a + 1 / n_b))
    z = 0.0 if se0 == 0 else (pb - pa) / se0
    p = float(2 * scipy.stats.norm.sf(abs(z)))
    se_a, se_b = math.sqrt(pa * (1 - pa) / n_a), math.sqrt(pb * (1 - pb) / n_b)
    crit = float(scipy.stats.norm.ppf(0.5 + confidence / 2))
    se = math.hypot(se_a, se_b)
    diff = Interval(pb - pa, pb - pa - crit * se, pb - pa + crit * se)
    return TestResult(diff, _lift(pb, pa, se_b, se_a, crit), z, p)


def _welch(
    est_a: float, se_a: float, n_a: int, est_b: float, se_b: float, n_b: int, confidence: float
) -> TestResult:
    se = math.hypot(se_a, se_b)
    d = est_b - est_a
    if not math.isfinite(se):  # an arm with one unit has no variance estimate
        return _unknown(d)
    if se == 0.0:
        p = 1.0 if d == 0 else 0.0
        t = 0.0 if d == 0 else math.copysign(math.inf, d)
        return TestResult(Interval(d, d, d), _lift(est_b, est_a, 0.0, 0.0, 0.0), t, p)
    df = se**4 / (se_a**4 / max(n_a - 1, 1) + se_b**4 / max(n_b - 1, 1))
    t = d / se
    p = float(2 * scipy.stats.t.sf(abs(t), df))
    crit = float(scipy.stats.t.ppf(0.5 + confidence / 2, df))
    diff = Interval(d, d - crit * se, d + crit * se)
    return TestResult(diff, _lift(est_b, est_a, se_b, se_a, crit), t, p, df)


def welch_ttest(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> TestResult:
    """Welch's t-test of mean(B) − mean(A): t = d/√(s_A²/n_A + s_B²/n_B), df by
    Welch–Satterthwaite; same statistic and p as ``scipy.stats.ttest_ind(b, a,
    equal_var=False)``."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if min(x.size, y.size) < 2:
        raise ValueError("Welch's t-test needs at least two units per arm")
    se_a, se_b = x.std(ddof=1) / math.sqrt(x.size), y.std(ddof=1) / math.sqrt(y.size)
    return _welch(
        float(x.mean()), float(se_a), x.size, float(y.mean()), float(se_b), y.size, confidence
    )


# -------------------------------------------------------------------- SRM
@dataclass(frozen=True)
class SampleRatioCheck:
    """χ² goodness of fit of unit counts per arm to the configured shares."""

    counts: dict[str, int]
    shares: dict[str, float]
    statistic: float
    p_value: float
    mismatch: bool
    unknown_arms: tuple[str, ...] = ()

    def describe(self) -> str:
        n = sum(self.counts.values())
        observed = "/".join(f"{100 * self.counts.get(a, 0) / max(n, 1):.1f}%" for a in self.shares)
        expected = "/".join(f"{100 * s:.1f}%" for s in self.shares.values())
        names = "/".join(self.shares)
        if self.unknown_arms:
            return (
                f"Sample ratio mismatch: units logged in arms that are not configured "
                f"({', '.join(self.unknown_arms)}): assignment or logging is broken; "
                "do not trust these results."
            )
        if self.mismatch:
            return (
                f"Sample ratio mismatch (χ² {_fmt_p(self.p_value)}; {names} observed "
                f"{observed}, configured {expected}): assignment or logging is broken; "
                "do not trust these results."
            )
        return f"Sample ratio is as configured ({names} {observed}, χ² {_fmt_p(self.p_value)})."


def sample_ratio_check(
    counts: Mapping[str, int], shares: Mapping[str, float], alpha: float = 0.001
) -> SampleRatioCheck:
    """χ² = Σ (O − E)²/E with E = n·share, k − 1 degrees of freedom; mismatch
    at p < ``alpha`` (0.001: SRM checks run on every experiment, so a strict
    threshold keeps false alarms rare). Arms with units but no configured
    share are a mismatch by themselves."""
    total_share = math.fsum(shares.values())
    if not shares or abs(total_share - 1.0) > 1e-6:
        raise ValueError(f"shares must be non-empty and sum to 1, got {dict(shares)}")
    unknown = tuple(sorted(a for a, c in counts.items() if a not in shares and c > 0))
    obs = np.array([counts.get(a, 0) for a in shares], dtype=np.float64)
    n = obs.sum()
    if unknown:
        return SampleRatioCheck(dict(counts), dict(shares), math.inf, 0.0, True, unknown)
    if n == 0:
        return SampleRatioCheck(dict(counts), dict(shares), 0.0, 1.0, False)
    exp = n * np.array(list(shares.values()))
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    p = float(scipy.stats.chi2.sf(chi2, len(shares) - 1)) if len(shares) > 1 else 1.0
    return SampleRatioCheck(
        {a: int(c) for a, c in counts.items()}, dict(shares), chi2, p, p < alpha
    )


# ---------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A metric: ``ratio`` Σnum/Σden, ``proportion`` share of units with num > 0,
    or ``mean`` of num over units."""

    name: str
    label: str
    kind: MetricKind
    numerator: str
    denominator: str | None = None


def default_metrics(columns: Any) -> list[Metric]:
    """The standard metrics whose columns are present (CTR always)."""
    cols = set(columns)
    out = [Metric("ctr", "CTR", "ratio", "clicks", "impressions")]
    if "conversions" in cols:
        out.append(Metric("conversion_rate", "conversion rate", "proportion", "conversions"))
    if "revenue" in cols:
        out.append(Metric("revenue_per_user", "revenue per user", "mean", "revenue"))
    if "dwell_seconds" in cols:
        out.append(Metric("mean_dwell", "mean dwell", "mean", "dwell_seconds"))
    if "bounces" in cols:
        den = "sessions" if "sessions" in cols else "impressions"
        out.append(Metric("bounce_rate", "bounce rate", "ratio", "bounces", den))
    return out


@dataclass(frozen=True)
class AnalysisConfig(Config):
    """How to analyse an experiment.

    - `alpha`: significance level (intervals are at 1 − alpha);
    - `power`: power at which the verdict states the detectable effect;
    - `primary_metric`: the decision metric (others are secondary);
    - `control`: control arm (default: the experiment's first served arm, else
      the first arm in sorted order);
    - `srm_alpha`: sample-ratio-mismatch threshold;
    - `arm_column`: column holding the arm name;
    - `ratio_ci`: per-arm intervals of ratio metrics, "delta" or "bootstrap"
      (over units; `n_bootstrap` resamples, `seed`);
    - `cuped`: metric name → pre-period covariate column for CUPED.
    """

    alpha: float = 0.05
    power: float = 0.8
    primary_metric: str = "ctr"
    control: str | None = None
    srm_alpha: float = 0.001
    arm_column: str = "arm"
    ratio_ci: Literal["delta", "bootstrap"] = "delta"
    n_bootstrap: int = 2000
    seed: int = 0
    cuped: dict[str, str] | None = None

    def validate(self) -> None:
        for name in ("alpha", "power", "srm_alpha"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"AnalysisConfig.{name}: must be in (0, 1)")
        if self.n_bootstrap < 100:
            raise ConfigError("AnalysisConfig.n_bootstrap: must be ≥ 100")


@dataclass(frozen=True)
class ArmReport:
    """One arm: unit count, totals of the input columns, metric estimates with
    intervals (at 1 − alpha), and any extra numbers passed in (coverage, …)."""

    arm: str
    units: int
    totals: dict[str, float]
    metrics: dict[str, Interval]
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def impressions(self) -> float:
        return self.totals.get("impressions", 0.0)

    @property
    def ctr(self) -> Interval | None:
        return self.metrics.get("ctr")

    @property
    def conversion_rate(self) -> Interval | None:
        return self.metrics.get("conversion_rate")

    @property
    def revenue_per_user(self) -> Interval | None:
        return self.metrics.get("revenue_per_user")

    @property
    def mean_dwell(self) -> Interval | None:
        return self.metrics.get("mean_dwell")

    @property
    def bounce_rate(self) -> Interval | None:
        return self.metrics.get("bounce_rate")


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric.

    ``mde`` is the relative lift the test could detect with the configured power
    at this sample size; ``variance_reduction`` and ``cuped_theta`` are set when
    CUPED was applied.
    """

    metric: str
    label: str
    control: str
    treatment: str
    control_value: float
    treatment_value: float
    result: TestResult
    test: str
    primary: bool
    p_adjusted: float
    significant: bool
    mde: float
    variance_reduction: float | None = None
    cuped_theta: float | None = None
    covariate: str | None = None

    def as_row(self) -> dict[str, Any]:
        r = self.result
        return {
            "metric": self.metric,
            "control": self.control,
            "treatment": self.treatment,
            "control_value": self.control_value,
            "treatment_value": self.treatment_value,
            "diff": r.diff.mean,
            "diff_low": r.diff.low,
            "diff_high": r.diff.high,
            "lift": r.lift.mean,
            "lift_low": r.lift.low,
            "lift_high": r.lift.high,
            "p_value": r.p_value,
            "p_adjusted": self.p_adjusted,
            "significant": self.significant,
            "mde": self.mde,
            "test": self.test,
            "primary": self.primary,
            "variance_reduction": self.variance_reduction,
        }


@dataclass(frozen=True)
class ExperimentReport:
    """Arms, comparisons against the control and the sample-ratio check."""

    arms: dict[str, ArmReport]
    control: str
    comparisons: list[Comparison]
    srm: SampleRatioCheck | None
    config: AnalysisConfig

    def comparison(self, treatment: str, metric: str | None = None) -> Comparison:
        metric = metric or self.config.primary_metric
        for c in self.comparisons:
            if c.treatment == treatment and c.metric == metric:
                return c
        raise KeyError(f"no comparison of {treatment!r} on {metric!r}")

    def to_frame(self) -> pd.DataFrame:
        """One row per (treatment, metric) comparison."""
        return pd.DataFrame([c.as_row() for c in self.comparisons])

    def arms_frame(self) -> pd.DataFrame:
        """One row per arm: units, totals, metric estimates and intervals, extras."""
        rows = []
        for a in self.arms.values():
            row: dict[str, Any] = {"arm": a.arm, "units": a.units, **a.totals}
            for name, iv in a.metrics.items():
                row[name], row[f"{name}_low"], row[f"{name}_high"] = iv.mean, iv.low, iv.high
            row.update(a.extra)
            rows.append(row)
        return pd.DataFrame(rows)

    def verdict(self) -> str:
        """What can and cannot be concluded, in words."""
        alpha = self.config.alpha
        conf = f"{100 * (1 - alpha):g}%"
        if self.srm is not None and self.srm.mismatch:
            return self.srm.describe()
        lines: list[str] = []
        for c in (c for c in self.comparisons if c.primary):
            r = c.result
            adj = (
                "" if c.p_adjusted == r.p_value else f", {_fmt_p(c.p_adjusted, 'Holm-adjusted p')}"
            )
            if c.significant:
                word = "higher" if r.lift.mean > 0 else "lower"
                lines.append(
                    f"{c.treatment}'s {c.label} is {_pct(abs(r.lift.mean))} {word} than "
                    f"{c.control}'s ({conf} CI {_range(r.lift)}, {_fmt_p(r.p_value)}{adj}); "
                    f"the difference is significant at α={alpha:g}."
                )
            else:
                lines.append(
                    f"No significant difference in {c.label} between {c.treatment} and "
                    f"{c.control} ({c.treatment} vs {c.control}: {_pct(r.lift.mean, sign=True)}, "
                    f"{conf} CI {_range(r.lift)}, {_fmt_p(r.p_value)}{adj}); with this sample "
                    f"the test could detect a lift of ≥ {_pct(c.mde)} with "
                    f"{100 * self.config.power:g}% power; keep running or accept that any "
                    "effect is smaller."
                )
            if c.variance_reduction is not None:
                lines.append(
                    f"CUPED on {c.covariate} reduced the variance of the {c.label} difference "
                    f"by {_pct(c.variance_reduction)}."
                )
        secondary = [c for c in self.comparisons if not c.primary and c.significant]
        if secondary:
            parts = [
                f"{c.label} {c.treatment} {_pct(c.result.lift.mean, sign=True)} "
                f"({_fmt_p(c.p_adjusted, 'Holm-adjusted p')})"
                for c in secondary
            ]
            lines.append(
                "Secondary metrics with a significant difference: " + "; ".join(parts) + "."
            )
        elif any(not c.primary for c in self.comparisons):
            lines.append("No secondary metric differs significantly (Holm-adjusted).")
        if self.srm is None:
            lines.append("No configured shares given: the sample ratio was not checked.")
        else:
            lines.append(self.srm.describe())
        return " ".join(lines)


def _fmt_p(p: float, name: str = "p") -> str:
    """ "p=0.012", or "p<0.001" below that."""
    return f"{name}<0.001" if p < 0.001 else f"{name}={p:.3f}"


def _pct(x: float, sign: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{100 * x:+.1f}%" if sign else f"{100 * x:.1f}%"


def _range(iv: Interval) -> str:
    lo, hi = _pct(iv.low), _pct(iv.high)
    return f"{lo}–{hi}" if iv.low >= 0 else f"{lo} to {hi}"


# ---------------------------------------------------------------- analyse
@dataclass
class _ArmMetric:
    n: int
    estimate: float
    influence: FloatArray  # per-unit values with mean 0: se² = var(influence)/n
    covariate: FloatArray | None = None

    @property
    def se(self) -> float:
        if self.n < 2:
            return math.nan
        return float(self.influence.std(ddof=1)) / math.sqrt(self.n)


def _arm_metric(metric: Metric, sub: pd.DataFrame) -> _ArmMetric:
    num = sub[metric.numerator].to_numpy(dtype=np.float64)
    n = len(num)
    if metric.kind == "ratio":
        assert metric.denominator is not None
        den = sub[metric.denominator].to_numpy(dtype=np.float64)
        total = den.sum()
        r = float(num.sum() / total) if total > 0 else math.nan
        mean_den = total / n if n else math.nan
        infl = (num - r * den) / mean_den if total > 0 else np.zeros(n)
        return _ArmMetric(n, r, infl)
    y = (num > 0).astype(np.float64) if metric.kind == "proportion" else num
    est = float(y.mean()) if n else math.nan
    return _ArmMetric(n, est, y - est)


def _ratio_bootstrap(
    num: FloatArray, den: FloatArray, confidence: float, n_resamples: int, seed: int
) -> Interval:
    """Bootstrap over units of Σnum/Σden (resampling unit indices)."""

    def ratio(idx: FloatArray, axis: int = -1) -> Any:
        k = idx.astype(np.int64)
        return num[k].sum(axis=axis) / den[k].sum(axis=axis)

    return bootstrap_ci(
        np.arange(num.size, dtype=np.float64),
        ratio,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def analyze(
    data: pd.DataFrame,
    experiment: Experiment | None = None,
    *,
    shares: Mapping[str, float] | None = None,
    config: AnalysisConfig | None = None,
    metrics: list[Metric] | None = None,
    extra: Mapping[str, Mapping[str, float]] | None = None,
) -> ExperimentReport:
    """Analyse per-unit aggregates (one row per unit, see the module docstring).

    ``shares`` (or the ``experiment``'s configured shares) enable the
    sample-ratio check; ``extra`` holds per-arm numbers reported as they are
    (e.g. catalog coverage or diversity of what each arm showed).
    """
    cfg = config or AnalysisConfig()
    col = cfg.arm_column
    if col not in data.columns:
        raise ValueError(f"data has no arm column {col!r}; columns: {list(data.columns)}")
    metric_list = metrics if metrics is not None else default_metrics(data.columns)
    needed = {m.numerator for m in metric_list} | {
        m.denominator for m in metric_list if m.denominator
    }
    cuped = dict(cfg.cuped or {})
    missing = sorted((needed | set(cuped.values())) - set(data.columns))
    if missing:
        raise ValueError(f"data lacks column(s) {missing}")
    if cfg.primary_metric not in {m.name for m in metric_list}:
        raise ValueError(
            f"primary metric {cfg.primary_metric!r} not among {[m.name for m in metric_list]}"
        )
    unknown_cuped = sorted(set(cuped) - {m.name for m in metric_list})
    if unknown_cuped:
        raise ValueError(f"CUPED asked for unknown metric(s) {unknown_cuped}")
    if shares is None and experiment is not None:
        shares = experiment.shares

    groups = {str(k): g for k, g in data.groupby(col, sort=True)}
    arm_names = list(groups)
    if shares is not None:
        arm_names = [a for a in shares if a in groups] + [a for a in groups if a not in shares]
    control = cfg.control
    if control is None:
        control = experiment.served[0].name if experiment is not None else arm_names[0]
    if control not in groups:
        raise ValueError(f"control arm {control!r} has no units; arms: {arm_names}")
    treatments = [a for a in arm_names if a != control]
    confidence = 1.0 - cfg.alpha
    z = float(scipy.stats.norm.ppf(0.5 + confidence / 2))

    # per-arm metric statistics
    stats: dict[str, dict[str, _ArmMetric]] = {}
    for arm, g in groups.items():
        stats[arm] = {}
        for m in metric_list:
            am = _arm_metric(m, g)
            if m.name in cuped:
                am.covariate = g[cuped[m.name]].to_numpy(dtype=np.float64)
            stats[arm][m.name] = am

    # arm reports
    total_cols = [c for c in data.columns if c != col and pd.api.types.is_numeric_dtype(data[c])]
    arms: dict[str, ArmReport] = {}
    for arm in arm_names:
        g = groups[arm]
        ivs: dict[str, Interval] = {}
        for m in metric_list:
            am = stats[arm][m.name]
            if m.kind == "ratio" and cfg.ratio_ci == "bootstrap" and am.n >= 2:
                assert m.denominator is not None
                ivs[m.name] = _ratio_bootstrap(
                    g[m.numerator].to_numpy(dtype=np.float64),
                    g[m.denominator].to_numpy(dtype=np.float64),
                    confidence,
                    cfg.n_bootstrap,
                    cfg.seed,
                )
            else:
                crit = z if m.kind != "mean" else _t_crit(confidence, am.n - 1)
                ivs[m.name] = Interval(
                    am.estimate, am.estimate - crit * am.se, am.estimate + crit * am.se
                )
        arms[arm] = ArmReport(
            arm,
            len(g),
            {c: float(g[c].sum()) for c in total_cols},
            ivs,
            dict((extra or {}).get(arm, {})),
        )

    # comparisons
    raw: list[tuple[Metric, str, TestResult, str, float, float | None, float | None]] = []
    for m in metric_list:
        adj = _cuped_adjust(m, stats) if m.name in cuped else None
        for t in treatments:
            a, b = stats[control][m.name], stats[t][m.name]
            reduction: float | None = None
            theta: float | None = None
            if adj is not None:
                theta, adjusted = adj
                (ea, sa), (eb, sb) = adjusted[control], adjusted[t]
                denom = a.se**2 + b.se**2
                reduction = 1.0 - (sa**2 + sb**2) / denom if denom > 0 else 0.0
            else:
                ea, sa, eb, sb = a.estimate, a.se, b.estimate, b.se
            if m.kind == "mean":
                res, test = _welch(ea, sa, a.n, eb, sb, b.n, confidence), "Welch t"
            elif m.kind == "proportion" and adj is None:
                xa, xb = round(a.estimate * a.n), round(b.estimate * b.n)
                res, test = two_proportion_ztest(xa, a.n, xb, b.n, confidence), "two-proportion z"
            else:
                res = _ztest(ea, sa, eb, sb, confidence)
                test = "z (delta method)" if m.kind == "ratio" else "z"
            if adj is not None:
                test += " + CUPED"
            se_diff = math.hypot(sa, sb)
            mde = mde_from_se(se_diff, alpha=cfg.alpha, power=cfg.power) / abs(ea) if ea else 0.0
            raw.append((m, t, res, test, mde, reduction, theta))

    primary_idx = [i for i, r in enumerate(raw) if r[0].name == cfg.primary_metric]
    secondary_idx = [i for i, r in enumerate(raw) if r[0].name != cfg.primary_metric]
    p_adj = np.empty(len(raw))
    for idx in (primary_idx, secondary_idx):
        if idx:
            p_adj[idx] = holm_bonferroni([raw[i][2].p_value for i in idx])
    comparisons = [
        Comparison(
            metric=m.name,
            label=m.label,
            control=control,
            treatment=t,
            control_value=stats[control][m.name].estimate,
            treatment_value=stats[t][m.name].estimate,
            result=res,
            test=test,
            primary=m.name == cfg.primary_metric,
            p_adjusted=float(p_adj[i]),
            significant=bool(p_adj[i] < cfg.alpha),
            mde=mde,
            variance_reduction=red,
            cuped_theta=theta,
            covariate=cuped.get(m.name),
        )
        for i, (m, t, res, test, mde, red, theta) in enumerate(raw)
    ]
    srm = None
    if shares is not None:
        srm = sample_ratio_check(
            {a: len(g) for a, g in groups.items()}, dict(shares), alpha=cfg.srm_alpha
        )
    return ExperimentReport(arms, control, comparisons, srm, cfg)


def _t_crit(confidence: float, df: int) -> float:
    return float(scipy.stats.t.ppf(0.5 + confidence / 2, max(df, 1)))


def _ztest(ea: float, sa: float, eb: float, sb: float, confidence: float) -> TestResult:
    se = math.hypot(sa, sb)
    d = eb - ea
    crit = float(scipy.stats.norm.ppf(0.5 + confidence / 2))
    if not math.isfinite(se):  # an arm with one unit has no variance estimate
        return _unknown(d)
    if se == 0.0:
        zstat = 0.0 if d == 0 else math.copysign(math.inf, d)
        p = 1.0 if d == 0 else 0.0
    else:
        zstat = d / se
        p = float(2 * scipy.stats.norm.sf(abs(zstat)))
    diff = Interval(d, d - crit * se, d + crit * se)
    return TestResult(diff, _lift(eb, ea, sb, sa, crit), zstat, p)


def _unknown(d: float) -> TestResult:
    """A difference whose standard error cannot be estimated: no evidence
    either way (p = 1, an unbounded interval)."""
    inf = math.inf
    return TestResult(Interval(d, -inf, inf), Interval(math.nan, -inf, inf), math.nan, 1.0)


def _cuped_adjust(
    m: Metric, stats: dict[str, dict[str, _ArmMetric]]
) -> tuple[float, dict[str, tuple[float, float]]]:
    """θ pooled over all arms; per arm (adjusted estimate, adjusted se)."""
    arms = [s[m.name] for s in stats.values()]
    xs = [a.covariate for a in arms]
    assert all(x is not None for x in xs)
    theta = pooled_theta([a.influence for a in arms], [x for x in xs if x is not None])
    x_all = float(np.concatenate([x for x in xs if x is not None]).mean())
    out: dict[str, tuple[float, float]] = {}
    for arm, s in stats.items():
        a = s[m.name]
        assert a.covariate is not None
        xbar = float(a.covariate.mean())
        adjusted = a.influence - theta * (a.covariate - xbar)
        se = float(adjusted.std(ddof=1)) / math.sqrt(a.n) if a.n >= 2 else math.nan
        out[arm] = (a.estimate - theta * (xbar - x_all), se)
    return theta, out
