"""Off-policy evaluation: do IPS, SNIPS and DR intervals contain the true CTR?

Part 2 (`--part service`, run by default after part 1) checks the service's own
estimators on ranked lists: traffic logged under model A with a random slice,
candidate B's CTR estimated off-policy from that log (PBM IPS/SNIPS/DR, the
code `sieve evaluate --data logged:` runs), then B run live; target: B's
95% interval contains its measured online CTR in ≥ 90% of repetitions. And
on one log, the off-policy ranking of three candidates against their online
ranking. In process (`sieve.experiments.offpolicy_sim`), to afford the
repetitions; defaults: a world of 400 users × 250 items, A = popular, lists
of 10, a 25% random slice from A's top 100, 40,000 logged and 50,000 live
requests per repetition, candidates itemknn, ease, bpr and als (whose items
lie partly outside A's top 100: the thin-support case):

    .venv/bin/python benchmarks/bench_offpolicy.py --part service --service-reps 100

Part 1: a contextual click model over a SyntheticWorld (500 users as contexts, 10
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
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from sieve.evaluate.offpolicy import OPEResult, doubly_robust, ips, snips
from sieve.experiments.offpolicy_sim import OffPolicySim, OffPolicySimConfig
from sieve.experiments.simulate import OPEScenario, OPEWorld

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--logs", type=int, default=5000, help="impressions per repetition")
    parser.add_argument("--clip", type=float, default=10.0, help="weight cap of the clipped rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", choices=["all", "bandit", "service"], default="all")
    parser.add_argument("--service-reps", type=int, default=100)
    parser.add_argument("--log-requests", type=int, default=40_000)
    parser.add_argument("--online-requests", type=int, default=50_000)
    parser.add_argument("--random-share", type=float, default=0.25)
    args = parser.parse_args(argv)
    console = Console(width=110)
    ok = True
    if args.part in ("all", "bandit"):
        ok &= bandit_part(args, console)
    if args.part in ("all", "service"):
        ok &= service_part(args, console)
    return 0 if ok else 1


def bandit_part(args: argparse.Namespace, console: Console) -> bool:
    """Part 1: one action per impression (see the module doc)."""
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
    return bool(ok)


def service_part(args: argparse.Namespace, console: Console) -> bool:
    """Part 2: ranked lists logged under A with a random slice, candidates
    estimated off-policy, then run live (see the module doc)."""
    started = time.perf_counter()
    cfg = OffPolicySimConfig(
        candidates=("itemknn", "ease", "bpr", "als"),
        random_share=args.random_share,
        log_requests=args.log_requests,
        online_requests=args.online_requests,
        world_seed=args.seed,
    )
    sim = OffPolicySim(cfg)
    console.print(
        f"world {cfg.n_users} users × {cfg.n_items} items; logging model {cfg.logging!r}, "
        f"lists of {cfg.n}, random slice {cfg.random_share:.0%} from its top {cfg.pool}; "
        f"{cfg.log_requests:,} logged and {cfg.online_requests:,} live requests per repetition"
    )
    estimators = ("ips", "snips", "dr")
    cover: dict[tuple[str, str], list[bool]] = {}
    truth_cover: dict[tuple[str, str], list[bool]] = {}
    width: dict[tuple[str, str], list[float]] = {}
    support: dict[str, list[float]] = {}
    warned: dict[str, int] = {}
    first = None
    for rep in range(args.service_reps):
        r = sim.repetition(rep)
        first = first or r
        for name, res in r.evaluation.candidates.items():
            assert not isinstance(res, str), res
            support.setdefault(name, []).append(res.support)
            warned[name] = warned.get(name, 0) + bool(res.warnings)
            for est in estimators:
                iv = res.estimates[est].interval
                cover.setdefault((name, est), []).append(iv.low <= r.online[name] <= iv.high)
                truth_cover.setdefault((name, est), []).append(
                    iv.low <= r.true_ctr[name] <= iv.high
                )
                width.setdefault((name, est), []).append(iv.half_width)
    assert first is not None
    t = Table(
        title=f"{args.service_reps} repetitions: does the off-policy 95% interval contain "
        "the candidate's measured online CTR?"
    )
    for col in (
        "candidate",
        "true CTR",
        "support",
        "warned",
        "estimator",
        "mean ±",
        "covers online",
        "covers truth",
    ):
        t.add_column(col, justify="left" if col in ("candidate", "estimator") else "right")
    ok = True
    for name in cfg.candidates:
        for k, est in enumerate(estimators):
            c = float(np.mean(cover[(name, est)]))
            supported = np.mean(support[name]) >= 0.9
            if supported:
                ok &= c >= 0.9
            t.add_row(
                name if k == 0 else "",
                f"{sim.true_ctr(name):.4f}" if k == 0 else "",
                f"{100 * np.mean(support[name]):.0f}%" if k == 0 else "",
                f"{warned[name]}/{args.service_reps}" if k == 0 else "",
                est.upper(),
                f"{np.mean(width[(name, est)]):.4f}",
                f"{100 * c:.0f}%",
                f"{100 * np.mean(truth_cover[(name, est)]):.0f}%",
            )
    console.print(t)
    console.print(
        f"logging policy CTR {sim.true_ctr(cfg.logging):.4f} (true); target: coverage ≥ 90% "
        f"for every candidate with support ≥ 90%: {'[green]PASS[/]' if ok else '[red]FAIL[/]'}"
    )
    # one log: the off-policy ranking of three candidates against the online one
    three = [c for c in cfg.candidates if np.mean(support[c]) >= 0.9][:3]
    big = OffPolicySim(
        OffPolicySimConfig(
            candidates=cfg.candidates,
            random_share=cfg.random_share,
            log_requests=cfg.log_requests,
            online_requests=100_000,
            world_seed=cfg.world_seed,
        )
    )
    one = big.repetition(10_000, candidates=three)
    rank = Table(title="one log of A: off-policy (SNIPS) vs online ranking of three candidates")
    for col in ("candidate", "off-policy SNIPS [95%]", "online CTR (100k requests)", "true CTR"):
        rank.add_column(col, justify="left" if col == "candidate" else "right")
    est_of = {}
    for name in three:
        res = one.evaluation.candidates[name]
        assert not isinstance(res, str)
        iv = res.estimates["snips"].interval
        est_of[name] = iv.mean
        rank.add_row(
            name,
            f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]",
            f"{one.online[name]:.4f}",
            f"{one.true_ctr[name]:.4f}",
        )
    console.print(rank)
    off_order = sorted(three, key=lambda c: -est_of[c])
    on_order = sorted(three, key=lambda c: -one.online[c])
    same = off_order == on_order
    console.print(
        f"off-policy order {' > '.join(off_order)}; online order {' > '.join(on_order)}: "
        f"{'[green]same[/]' if same else '[red]different[/]'}"
    )
    console.print(f"part 2 took {time.perf_counter() - started:.0f} s")
    return bool(ok and same)


if __name__ == "__main__":
    sys.exit(main())
