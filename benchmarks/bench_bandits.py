"""Regret of Thompson sampling, UCB1 and ε-greedy on a Bernoulli bandit.

Scenario: 20 arms whose click rates are drawn from Beta(2, 8) (mean 0.2),
except arms 3, 7 and 15 set to 0.50, 0.40 and 0.45; 500 single-slot rounds;
each policy starts empty (Thompson: Beta(1, 1) priors, propensities from
1,000 posterior draws; UCB1 with c = 1; ε-greedy with ε = 0.1, untried arms
first). Averaged over 100 seeds (the same rates and reward draws per seed for
every policy: each policy's run starts from the seed's generator). Target:
Thompson's mean cumulative reward ≥ UCB1's. Writes docs/img/bandit_regret.png.

    .venv/bin/python benchmarks/bench_bandits.py
    .venv/bin/python benchmarks/bench_bandits.py --seeds 20   # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from sieve.evaluate.stats import mean_ci, paired_test
from sieve.experiments.simulate import bandit_rates, run_bandit
from sieve.explore.bandits import UCB1, BanditPolicy, EpsilonGreedy, ThompsonSampling

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
POLICIES: dict[str, Callable[[], BanditPolicy]] = {
    "Thompson sampling": lambda: ThompsonSampling(1.0, 1.0, n_draws=1000),
    "UCB1": lambda: UCB1(1.0),
    "ε-greedy (ε=0.1)": lambda: EpsilonGreedy(0.1),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args(argv)
    console = Console(width=110)
    IMG.mkdir(parents=True, exist_ok=True)

    regret = {name: np.zeros((args.seeds, args.rounds)) for name in POLICIES}
    reward = {name: np.zeros(args.seeds) for name in POLICIES}
    best_share = {name: np.zeros(args.seeds) for name in POLICIES}
    seconds = dict.fromkeys(POLICIES, 0.0)
    for seed in range(args.seeds):
        rates = bandit_rates(np.random.default_rng([seed, 0]))
        for name, make in POLICIES.items():
            rng = np.random.default_rng([seed, 1])
            start = time.perf_counter()
            chosen, rewards, _ = run_bandit(make(), rates, args.rounds, rng)
            seconds[name] += time.perf_counter() - start
            regret[name][seed] = np.cumsum(rates.max() - rates[chosen])
            reward[name][seed] = rewards.sum()
            best_share[name][seed] = np.mean(chosen == rates.argmax())

    t = Table(
        title=f"{args.rounds} rounds, 20 arms (Beta(2,8), arms 3/7/15 = .50/.40/.45), "
        f"mean over {args.seeds} seeds [95% CI]"
    )
    for col in ("policy", "cumulative reward", "regret", "best arm played", "ms / round"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for name in POLICIES:
        r = mean_ci(reward[name])
        g = mean_ci(regret[name][:, -1])
        t.add_row(
            name,
            f"{r.mean:.1f} [{r.low:.1f}, {r.high:.1f}]",
            f"{g.mean:.1f} [{g.low:.1f}, {g.high:.1f}]",
            f"{100 * best_share[name].mean():.0f}%",
            f"{1000 * seconds[name] / (args.seeds * args.rounds):.3f}",
        )
    console.print(t)
    ts, ucb = reward["Thompson sampling"], reward["UCB1"]
    diff = paired_test(ts, ucb)
    ok = ts.mean() >= ucb.mean()
    console.print(
        f"Thompson − UCB1 cumulative reward: {diff.mean_diff:+.1f} "
        f"[{diff.ci_low:+.1f}, {diff.ci_high:+.1f}] (paired t p={diff.p_value:.2g}); "
        f"target Thompson ≥ UCB1: {'[green]PASS[/]' if ok else '[red]FAIL[/]'}"
    )

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    rounds = np.arange(1, args.rounds + 1)
    for name in POLICIES:
        ax.plot(rounds, regret[name].mean(axis=0), label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title(f"20-arm Bernoulli bandit, mean of {args.seeds} seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "bandit_regret.png", dpi=100)
    plt.close(fig)
    console.print(f"plot: {IMG / 'bandit_regret.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
