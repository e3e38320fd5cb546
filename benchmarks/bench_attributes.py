"""The learned ranker with attribute features against the ranker without,
and against its best single source, on the synthetic world.

The synthetic world's users have attribute-driven tastes: a user's
favourite categories (their `favourite_categories` attribute) add to the
utility of every item in them (`sieve.data.synthetic`). The funnel is
fitted twice on the same training split: with its default features, and
with attribute features declared in the funnel config (the user's
favourite categories matched against the item's categories, the list
itself, the user's group and the item's price). The funnel's candidate
models alone (EASE, ALS, item-kNN, with the funnel's own configs) are the
single sources.

- Offline: NDCG@10 on a per-user random 75/25 split, per-user values with
  a t interval, and the paired difference of each funnel against the best
  single source and of the two funnels.
- Online, in process (`sieve simulate`'s click model without the HTTP
  round trip): every user is served each model's top 10 (the live path:
  `recommend_query` from their training events) `--rounds` times; each
  slot at position p is examined with probability 1/log2(p + 2) and
  clicked with the world's true click probability. CTR = clicks / shown
  slots, with a t interval over users (a user's rounds are one cluster),
  and the expected CTR (true probabilities, no sampling noise).
- The loop closed (`--logged`, on by default): the attribute funnel serves
  `--logged-requests` logged requests, each 10 slots drawn uniformly from
  its top 30 (propensity 1/3, logged), clicked by the same click model
  after the training span; a funnel with `ranker.train_on = "both"` then
  learns from those impressions and clicks as well (`sieve.ranking.logged`)
  and is measured like the others.

    PYTHONPATH=src python benchmarks/bench_attributes.py [--users 1000 --items 500]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from sieve.data.split import make_splits
from sieve.data.synthetic import SyntheticConfig, SyntheticWorld, generate
from sieve.evaluate.metrics import ndcg_at_k
from sieve.evaluate.stats import Interval, mean_ci, paired_test
from sieve.models.base import Recommender
from sieve.models.ease import EASE
from sieve.models.factorization import ALS
from sieve.models.itemknn import ItemKNN
from sieve.pipeline import Funnel, FunnelConfig
from sieve.ranking.logged import LoggedData
from sieve.simulator import examination

console = Console(width=130)
K = 10

#: The attribute features the benchmark declares (`[attributes]` of a funnel config).
ATTRIBUTES = {
    "matches": ["categories:favourite_categories"],
    "user_lists": ["favourite_categories"],
    "user_categorical": ["group"],
    "item_numeric": ["price"],
}


@dataclass
class Result:
    name: str
    fit_seconds: float
    ndcg: NDArray[np.float64]  # per test user
    ctr: NDArray[np.float64]  # per user: clicks / shown slots over the rounds
    expected_ctr: NDArray[np.float64]  # per user: Σ p_click · examination / shown slots


def _fmt(iv: Interval, digits: int = 4) -> str:
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def _online(
    world: SyntheticWorld,
    users: NDArray[np.int64],
    recs: NDArray[np.int64],
    rounds: int,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-user sampled and expected CTR of serving `recs` (users × K) `rounds` times."""
    shown = recs >= 0
    items = np.where(shown, recs, 0)
    p = world.click_probability(users[:, None], items) * np.array(
        [examination(k) for k in range(recs.shape[1])]
    )
    p = np.where(shown, p, 0.0)
    slots = shown.sum(axis=1) * rounds
    clicks = rng.binomial(rounds, p).sum(axis=1)
    expected = p.sum(axis=1) * rounds
    return clicks / np.maximum(slots, 1), expected / np.maximum(slots, 1)


def _logged(
    world: SyntheticWorld,
    funnel: Funnel,
    train_users: NDArray[np.object_],
    world_items: NDArray[np.int64],
    start: float,
    n_requests: int,
    rng: np.random.Generator,
) -> LoggedData:
    """Logged traffic of `funnel`: each request shows 10 of the user's top 30
    uniformly at random (propensity 1/3 per slot) and gets the click model's
    clicks; one request per user in turn, an hour apart, after `start`."""
    users = rng.choice(len(train_users), size=n_requests)
    slots: list[dict[str, object]] = []
    clicks: list[dict[str, object]] = []
    exam = np.array([examination(k) for k in range(K)])
    for r, u in enumerate(users):
        user_id = str(train_users[u])
        events = funnel.user_log.events(user_id)  # type: ignore[union-attr]
        attrs = funnel.user_attributes.get(user_id)
        query = funnel.query(events, user_id, n=30, user_attributes=attrs)
        top = np.array([rec.item for rec in funnel.recommend_query(query)], dtype=np.int64)
        if len(top) < K:
            continue
        shown = rng.choice(top, size=K, replace=False)
        p = world.click_probability(int(user_id[1:]), world_items[shown]) * exam
        clicked = rng.random(K) < p
        at = start + 3600.0 * r
        request_id = f"r{r:06d}"
        for pos, item in enumerate(shown.tolist()):
            slots.append(
                {
                    "request_id": request_id,
                    "user_id": user_id,
                    "item_id": str(funnel.item_ids[item]),
                    "position": pos,
                    "score": 0.0,
                    "propensity": K / len(top),
                    "sources": [],
                    "model_version": "bench",
                    "experiment": None,
                    "arm": None,
                    "timestamp": at,
                }
            )
            if clicked[pos]:
                clicks.append(
                    {
                        "request_id": request_id,
                        "item_id": str(funnel.item_ids[item]),
                        "type": "click",
                        "timestamp": at + 30.0,
                    }
                )
    return LoggedData(pd.DataFrame(slots), pd.DataFrame(clicks))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--events", type=float, default=40.0, help="mean events per user")
    ap.add_argument("--rounds", type=int, default=20, help="requests per user online")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--logged-requests", type=int, default=3000)
    ap.add_argument("--no-logged", dest="logged", action="store_false")
    args = ap.parse_args()

    world_cfg = SyntheticConfig(
        n_users=args.users, n_items=args.items, events_per_user=args.events, seed=args.seed
    )
    raw, world = generate(world_cfg)
    ds = raw.to_dataset()
    split = make_splits(ds, "random:0.75", args.seed)[0]
    train, test = split.train, split.test
    relevant = (test.matrix > 0).astype(np.float32).tocsr()
    users = np.flatnonzero(relevant.getnnz(axis=1) > 0).astype(np.int64)
    # world indices of the snapshot's users (ids are the world's, zero-padded)
    world_users = np.array([int(str(u)[1:]) for u in train.user_ids[users]], dtype=np.int64)
    world_items = np.array([int(str(i)[1:]) for i in train.item_ids], dtype=np.int64)
    console.print(
        f"synthetic world: {world_cfg.n_users} users, {world_cfg.n_items} items, "
        f"{ds.matrix.nnz} user-item pairs; {len(users)} test users (random 75/25, "
        f"seed {args.seed}); online: {args.rounds} requests per user"
    )

    base = FunnelConfig()
    with_attributes = FunnelConfig.from_dict({"attributes": ATTRIBUTES})
    models: list[tuple[str, Recommender]] = [
        ("EASE (source)", EASE(base.ease)),
        ("ALS (source)", ALS(base.als)),
        ("item-kNN (source)", ItemKNN(base.itemknn)),
        ("funnel, no attributes", Funnel(base)),
        ("funnel + attributes", Funnel(with_attributes)),
    ]
    rng = np.random.default_rng(args.seed)
    results: list[Result] = []
    for name, model in models:
        t0 = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t0
        top = model.recommend_batch(users, train.matrix[users], n=K).items
        ndcg = ndcg_at_k(top, relevant[users], K)
        mapped = np.where(top >= 0, world_items[np.maximum(top, 0)], -1)
        ctr, expected = _online(world, world_users, mapped, args.rounds, rng)
        results.append(Result(name, fit_s, ndcg, ctr, expected))
        console.print(f"  {name}: fitted in {fit_s:.1f} s")
        if name == "funnel + attributes" and args.logged:
            assert isinstance(model, Funnel)
            times = train.events["timestamp"].to_numpy(np.float64)
            logged = _logged(
                world,
                model,
                train.user_ids,
                world_items,
                float(np.nanmax(times)) + 3600.0,
                args.logged_requests,
                rng,
            )
            n_clicks = len(logged.feedback)
            console.print(
                f"    logged {logged.impressions['request_id'].nunique()} requests, "
                f"{len(logged.impressions)} slots, {n_clicks} clicks"
            )
            closed = Funnel(
                with_attributes.replace(ranker=with_attributes.ranker.replace(train_on="both"))
            )
            closed.logged = logged
            models.append(("funnel + attributes + logged clicks", closed))
        if isinstance(model, Funnel) and model.state.ranker is not None:
            top_gain = list(model.state.ranker.importance().items())[:3]
            console.print("    ranker's top features by gain: " + ", ".join(n for n, _ in top_gain))

    table = Table(title="NDCG@10 (offline) and CTR (in-process simulation), 95% t intervals")
    for col in ("model", "NDCG@10", "CTR (sampled)", "expected CTR", "fit s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(
            r.name,
            _fmt(mean_ci(r.ndcg)),
            _fmt(mean_ci(r.ctr)),
            _fmt(mean_ci(r.expected_ctr)),
            f"{r.fit_seconds:.1f}",
        )
    console.print(table)

    sources = [r for r in results if r.name.endswith("(source)")]
    best = max(sources, key=lambda r: float(r.ndcg.mean()))
    best_ctr = max(sources, key=lambda r: float(r.ctr.mean()))
    plain, attrs = results[3], results[4]
    diffs = Table(title="Paired differences (per user), 95% t intervals")
    for col in ("comparison", "Δ NDCG@10", "Δ CTR (sampled)", "Δ expected CTR"):
        diffs.add_column(col, justify="left" if col == "comparison" else "right")
    pairs = [
        (attrs, plain),
        (attrs, best),
        (plain, best),
    ]
    if best_ctr is not best:
        pairs.append((attrs, best_ctr))
    for loop in results[5:]:
        pairs += [(loop, attrs), (loop, best_ctr)]
    for a, b in pairs:
        cells = []
        for metric in ("ndcg", "ctr", "expected_ctr"):
            res = paired_test(getattr(a, metric), getattr(b, metric))
            cells.append(
                f"{res.mean_diff:+.4f} [{res.ci_low:+.4f}, {res.ci_high:+.4f}] p={res.p_value:.2g}"
            )
        diffs.add_row(f"{a.name} − {b.name}", *cells)
    console.print(diffs)
    console.print(f"best single source by NDCG@10: {best.name}; by CTR: {best_ctr.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
