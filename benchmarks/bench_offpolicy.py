"""Off-policy evaluation: do IPS, SNIPS and DR intervals contain the true CTR?

A contextual click model over a SyntheticWorld (500 users as contexts, 10
candidate items as actions, base click logit −5): the logging policy is a
noisy softmax ranker mixed with 20 % uniform exploration (propensities
logged); the target is a better softmax ranker whose CTR is computed exactly
from the click model. Each repetition logs 5,000 impressions and estimates
the target's CTR with 95 % intervals; the DR reward model is the per-item
mean click rate of the logs (context-blind, deliberately imperfect). Target:
SNIPS and DR intervals contain the true CTR in ≥ 90 % of 100 repetitions.
Writes docs/img/offpolicy_intervals.png.

    .venv/bin/python benchmarks/bench_offpolicy.py
    .venv/bin/python benchmarks/bench_offpolicy.py --reps 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from sieve.evaluate.offpolicy import OPEResult, doubly_robust, ips, snips
from sieve.experiments.simulate import OPEScenario, OPEWorld

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--logs", type=int, default=5000, help="impressions per repetition")
    parser.add_argument("--clip", type=float, default=10.0, help="weight cap of the clipped rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    console = Console(width=110)
    IMG.mkdir(parents=True, exist_ok=True)

    scenario = OPEScenario(seed=args.seed)
    world = OPEWorld(scenario)
    truth = world.true_value()
    results: dict[str, list[OPEResult]] = {}
    for rep in range(args.reps):
        logs = world.sample_logs(args.logs, np.random.default_rng([args.seed, rep]))
        a = (logs.rewards, logs.propensities, logs.target, logs.actions)
        for clip in (None, args.clip):
            tag = "" if clip is None else f" (clip {clip:g})"
            for name, res in (
                ("IPS", ips(*a, clip=clip)),
                ("SNIPS", snips(*a, clip=clip)),
                ("DR", doubly_robust(*a, logs.reward_model, clip=clip)),
            ):
                results.setdefault(name + tag, []).append(res)

    console.print(
        f"true CTR of the target policy {truth:.4f}; "
        f"logging policy {world.true_value(world.logging):.4f}; uniform random {world.p.mean():.4f}"
    )
    t = Table(title=f"{args.reps} repetitions × {args.logs:,} logged impressions, 95% intervals")
    for col in ("estimator", "mean estimate", "bias", "RMSE", "mean half-width", "ESS", "coverage"):
        t.add_column(col, justify="left" if col == "estimator" else "right")
    ok = True
    for name, rs in results.items():
        est = np.array([r.estimate for r in rs])
        cover = np.mean([r.interval.low <= truth <= r.interval.high for r in rs])
        if name in ("SNIPS", "DR"):
            ok &= cover >= 0.9
        t.add_row(
            name,
            f"{est.mean():.4f}",
            f"{est.mean() - truth:+.4f}",
            f"{np.sqrt(np.mean((est - truth) ** 2)):.4f}",
            f"{np.mean([r.interval.half_width for r in rs]):.4f}",
            f"{np.mean([r.ess for r in rs]):,.0f}",
            f"{100 * cover:.0f}%",
        )
    console.print(t)
    console.print(
        f"target SNIPS and DR coverage ≥ 90%: {'[green]PASS[/]' if ok else '[red]FAIL[/]'}"
    )

    show = min(40, args.reps)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for k, (name, color) in enumerate((("SNIPS", "C0"), ("DR", "C2"))):
        rs = results[name][:show]
        x = np.arange(show) + (k - 0.5) * 0.3
        mid = np.array([r.estimate for r in rs])
        err = np.array([[r.estimate - r.interval.low, r.interval.high - r.estimate] for r in rs]).T
        ax.errorbar(x, mid, yerr=err, fmt="o", ms=2, lw=0.8, color=color, label=name)
    ax.axhline(truth, color="k", lw=1, label="true CTR")
    ax.set_xlabel("repetition")
    ax.set_ylabel("target CTR estimate")
    ax.set_title(f"95% intervals of {show} repetitions", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "offpolicy_intervals.png", dpi=100)
    plt.close(fig)
    console.print(f"plot: {IMG / 'offpolicy_intervals.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
