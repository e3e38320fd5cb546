"""Does online evaluation tell the truth? A/A, power, peeking, interleaving vs A/B.

1. A/A tests (two-proportion z-test, α = 0.05, base CTR 5 %, n per arm from
   the calculator): false positive rate; target within [3 %, 7 %].
2. A/B tests with B's true CTR 10 % higher: observed detection rate against the
   calculator's predicted power at several n; target within ±10 points.
3. Peeking: A/A tests read after each of 100 batches (500 units per arm each),
   stopping at the first p < 0.05: naive fixed-horizon p-values against
   always-valid mSPRT p-values; target naive well above 5 %, sequential ≤ 5 %
   (+ noise: ≤ 6 %).
4. Interleaving vs A/B: two rankers (good: true click logit + N(0, 0.5²)
   noise; weak: + N(0, 1²)) over a SyntheticWorld population, clicks from a
   position-biased model (examination 1/rank); impressions each method needs
   to reach significance in 80 % of repetitions, and the ratio.

    .venv/bin/python benchmarks/bench_experiments.py             # plots in docs/img/
    .venv/bin/python benchmarks/bench_experiments.py --reps 500  # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
from rich.console import Console
from rich.table import Table

from sieve.experiments.analysis import two_proportion_pvalues
from sieve.experiments.design import power_proportions, sample_size_proportions
from sieve.experiments.sequential import always_valid_pvalues_proportions
from sieve.experiments.simulate import (
    RankerScenario,
    RankerWorld,
    aa_false_positive_rate,
    ab_detection_rate,
    impressions_for_power,
    peeking_error_rates,
)

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
BASE, LIFT, ALPHA = 0.05, 0.10, 0.05


def _rate_ci(rate: float, reps: int) -> str:
    k = round(rate * reps)
    ci = scipy.stats.binomtest(k, reps).proportion_ci(0.95)
    return f"{100 * rate:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def _ok(flag: bool) -> str:
    return "[green]PASS[/]" if flag else "[red]FAIL[/]"


def aa_and_power(console: Console, reps: int, seed: int) -> bool:
    rng = np.random.default_rng(seed)
    n80 = sample_size_proportions(BASE, LIFT, power=0.8, alpha=ALPHA)
    fpr = aa_false_positive_rate(n80, BASE, reps, rng, ALPHA)
    t = Table(title=f"A/A and A/B tests: base CTR {BASE:.0%}, α={ALPHA}, {reps} repetitions each")
    for col in ("test", "n per arm", "predicted", "observed [95% CI]", "target", ""):
        t.add_column(col, justify="left" if col in ("test", "target") else "right")
    ok_aa = 0.03 <= fpr <= 0.07
    t.add_row("A/A", f"{n80:,}", "5.0%", _rate_ci(fpr, reps), "in [3%, 7%]", _ok(ok_aa))
    all_ok = ok_aa
    for frac in (0.25, 0.5, 1.0, 1.5):
        n = int(n80 * frac)
        pred = power_proportions(BASE, LIFT, n, alpha=ALPHA)
        obs = ab_detection_rate(n, BASE, LIFT, reps, rng, ALPHA)
        ok = abs(obs - pred) <= 0.10
        all_ok &= ok
        t.add_row(
            f"A/B +{LIFT:.0%}",
            f"{n:,}",
            f"{100 * pred:.1f}%",
            _rate_ci(obs, reps),
            "±10 pts",
            _ok(ok),
        )
    console.print(t)
    return all_ok


def peeking(console: Console, reps: int, seed: int) -> bool:
    looks, batch = 100, 500
    rng = np.random.default_rng(seed)
    t = Table(
        title=f"Peeking after each of {looks} batches of {batch} units per arm "
        f"(A/A, base {BASE:.0%}, {reps} repetitions)"
    )
    for col in ("τ (mSPRT)", "naive: stop at first p<.05", "always-valid p", "final look only"):
        t.add_column(col, justify="right")
    all_ok = True
    for tau in (0.0025, 0.005, 0.01):
        res = peeking_error_rates(looks, batch, BASE, reps, rng, tau=tau, alpha=ALPHA)
        all_ok &= res.naive > 0.15 and res.sequential <= 0.06
        t.add_row(
            f"{tau:g}",
            _rate_ci(res.naive, reps),
            _rate_ci(res.sequential, reps),
            _rate_ci(res.final_only, reps),
        )
    power = peeking_error_rates(looks, batch, BASE, reps, rng, tau=0.005, relative_lift=LIFT)
    console.print(t)
    console.print(
        f"with B +{LIFT:.0%} (τ=0.005): detected by the always-valid test at any look "
        f"{_rate_ci(power.sequential, reps)}, by the fixed-horizon test at the last look "
        f"(n={looks * batch:,}/arm) {_rate_ci(power.final_only, reps)}. "
        f"Targets (naive > 15%, always-valid ≤ 6%): {_ok(all_ok)}"
    )

    # figure: share of A/A tests already declared significant after k looks
    shape = (reps, looks)
    xa = np.cumsum(rng.binomial(batch, BASE, size=shape), axis=1)
    xb = np.cumsum(rng.binomial(batch, BASE, size=shape), axis=1)
    n = np.broadcast_to(batch * np.arange(1, looks + 1), shape)
    naive = np.maximum.accumulate(two_proportion_pvalues(xa, n, xb, n) < ALPHA, axis=1).mean(0)
    seq = (always_valid_pvalues_proportions(xa, n, xb, n, tau=0.005, burn_in=1) <= ALPHA).mean(0)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    k = np.arange(1, looks + 1)
    ax.plot(k, 100 * naive, label="naive z-test, stop at first p<.05")
    ax.plot(k, 100 * seq, label="always-valid p (mSPRT, τ=0.005)")
    ax.axhline(5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("number of looks")
    ax.set_ylabel("A/A false positives (%)")
    ax.set_title(f"Peeking, {reps} A/A tests", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "peeking.png", dpi=100)
    plt.close(fig)
    return all_ok


def interleaving(console: Console, reps: int, seed: int) -> bool:
    t = Table(title=f"Impressions to reach significance (α=.05) in 80% of {reps} repetitions")
    cols = (
        "scenario",
        "clicks/impr good | weak",
        "interleaving",
        "A/B (both arms)",
        "ratio A/B÷IL",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    il_grid = np.unique(np.geomspace(250, 16_000, 13).astype(int))
    ab_grid = np.unique(np.geomspace(1_000, 64_000, 13).astype(int))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    all_ok = True
    for label, sd in (("homogeneous users", 0.0), ("user click-propensity sd 1 logit", 1.0)):
        world = RankerWorld(RankerScenario(user_logit_sd=sd, seed=seed))
        rng = np.random.default_rng(seed)
        il = world.interleaving_power(il_grid, reps, rng)
        ab = world.ab_power(ab_grid, reps, rng)
        n_il = impressions_for_power(il_grid, il)
        n_ab = 2 * impressions_for_power(ab_grid, ab)
        all_ok &= n_il < n_ab
        good, weak = world.clicks_per_impression
        t.add_row(
            label,
            f"{good:.3f} | {weak:.3f} (+{100 * (good / weak - 1):.1f}%)",
            f"{n_il:,.0f}",
            f"{n_ab:,.0f}",
            f"{n_ab / n_il:.1f}×",
        )
        style = "-" if sd == 0 else "--"
        ax.plot(il_grid, 100 * il, style, color="C0", label=f"interleaving ({label})")
        ax.plot(2 * ab_grid, 100 * ab, style, color="C1", label=f"A/B ({label})")
    console.print(t)
    ax.axhline(80, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("impressions")
    ax.set_ylabel("significant at α=.05 (%)")
    ax.set_title("Good vs weak ranker: interleaving vs A/B", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMG / "interleaving_vs_ab.png", dpi=100)
    plt.close(fig)
    return all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="repetitions of the z-test sims")
    parser.add_argument("--il-reps", type=int, default=200, help="repetitions of interleaving/AB")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    console = Console(width=120)
    IMG.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ok = aa_and_power(console, args.reps, args.seed)
    ok &= peeking(console, args.reps, args.seed + 1)
    ok &= interleaving(console, args.il_reps, args.seed + 2)
    console.print(
        f"plots: {IMG / 'peeking.png'}, {IMG / 'interleaving_vs_ab.png'}; "
        f"{time.perf_counter() - start:.0f} s; all targets {_ok(ok)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
