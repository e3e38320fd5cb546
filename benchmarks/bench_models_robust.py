"""Models that hold up on any data: scale, memory, adaptive defaults, library defaults.

Sections (run one with its name, e.g. `python benchmarks/bench_models_robust.py scale`):

- `ml100k`: EASE against sparse EASE (and its neighbour counts) on the core
  protocol (MovieLens 100K, per-user random 75/25, seed 42).
- `scale`: a synthetic catalogue of `--items` items: fit seconds, the fit's
  peak extra memory and NDCG@10 of sparse EASE, item-kNN and ALS; EASE's
  memory estimate there (it is refused, or would need the printed amount).
- `ease16k`: EASE at the item count that crashed in OpenBLAS's threaded
  Cholesky (~16K items), float32 under a 4 GiB budget: time and peak.
- `defaults`: shipped defaults vs the shape rule vs `auto` (a bounded search
  on validation data) per data set (see `sieve.evaluate.auto`).
- `libs`: sieve's ALS/BPR defaults against `implicit`'s own defaults, used
  directly, on the same split in one run (over `--seeds`).
- `bpr`: BPR's shipped defaults (epochs chosen on validation) against one
  20% validation part, the same model trained a fixed 100 epochs and
  `implicit`'s own defaults, over seeds, on every data set.
- `funnel`: the funnel's offline prediction against single models, profiled.

Each fit runs in a forked child process; its peak extra memory is the
child's peak resident set minus its resident set when it started (the
parent's data is shared, not counted).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.split import Split, make_splits
from sieve.evaluate import metrics as M
from sieve.evaluate.protocol import ModelSpec, evaluate, fit_and_rank
from sieve.models.ease import EASE
from sieve.models.memory import format_bytes

ML100K = "movielens-100k:/work/shared/data/ml-100k"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(conn: Any, fn: Callable[[], Any]) -> None:
    start = _rss()
    t = time.perf_counter()
    try:
        value = fn()
        error = None
    except Exception as e:  # reported, not raised: the benchmark goes on
        value, error = None, f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send((value, error, seconds, max(peak - start, 0)))


_JOB: Callable[[], Any] | None = None


def _run_job(conn: Any) -> None:
    assert _JOB is not None
    _child(conn, _JOB)


def measured(fn: Callable[[], Any]) -> tuple[Any, str | None, float, int]:
    """fn() in a forked child: (value, error, seconds, peak extra bytes)."""
    global _JOB
    _JOB = fn
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_job, args=(child,))
    proc.start()
    child.close()
    try:
        out = parent.recv()
    except EOFError:
        out = (None, f"child died with exit code {proc.exitcode}", 0.0, 0)
    proc.join()
    return out


def ndcg_of(split: Split, spec: ModelSpec, k: int = 10) -> tuple[float, float, float, int, str]:
    """Fit + rank one model measured in a child; NDCG@k on the split."""
    users = split.test_users
    model_users = np.where(split.holdout_users[users], -1, users).astype(np.int64)
    history = split.history[users].tocsr()
    relevant = (split.test.matrix[users] > 0).astype(np.float64).tocsr()
    ranked, error, _, peak = measured(
        lambda: fit_and_rank(spec, split.train, model_users, history, k, None)
    )
    if error is not None:
        return float("nan"), 0.0, 0.0, peak, error
    ndcg = float(np.mean(M.ndcg_at_k(ranked.items, relevant, k)))
    return ndcg, ranked.fit_seconds, ranked.predict_seconds, peak, ""


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def bench_ml100k(args: argparse.Namespace) -> None:
    ds = load_data(ML100K).to_dataset()
    splits = make_splits(ds, "random:0.75", 42)
    specs = [ModelSpec("ease", "ease")] + [
        ModelSpec(f"sparse-ease m={m}", "sparse-ease", {"neighbours": m}) for m in (128, 256, 400)
    ]
    res = evaluate(ds, splits, specs)
    ref = res.models[0].summary["ndcg@10"].mean
    rows = []
    for m in res.models:
        iv = m.summary["ndcg@10"]
        rows.append(
            (
                m.label,
                f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]",
                f"{100 * (iv.mean / ref - 1):+.1f}%",
                f"{m.summary['precision@10'].mean:.4f}",
                f"{m.fit_seconds:.2f}",
            )
        )
    _table(rows, ("model", "NDCG@10 [95% CI]", "vs EASE", "P@10", "fit s"))


def _synthetic(items: int, users: int, events: float, seed: int = 1) -> Dataset:
    spec = f"synthetic:users={users},items={items},events_per_user={events},seed={seed}"
    t = time.perf_counter()
    ds = load_data(spec).to_dataset()
    print(f"{spec}: {ds} (generated in {time.perf_counter() - t:.0f} s)", flush=True)
    return ds


def bench_scale(args: argparse.Namespace) -> None:
    ds = _synthetic(args.items, args.users, args.events)
    (split,) = make_splits(ds, "random:0.8", 42)
    n = split.train.n_items
    f32 = EASE.peak_bytes(n, "float32")
    print(
        f"EASE at {n} items would need {format_bytes(f32)} (float32) / "
        f"{format_bytes(EASE.peak_bytes(n, 'float64'))} (float64)"
    )
    specs = [
        ModelSpec("sparse-ease", "sparse-ease"),
        ModelSpec("itemknn", "itemknn"),
        ModelSpec("als", "als"),
        ModelSpec("ease (4 GiB budget)", "ease"),
    ]
    rows = []
    for spec in specs:
        from sieve.models.memory import memory_budget

        with memory_budget(4 * 2**30):
            ndcg, fit_s, pred_s, peak, error = ndcg_of(split, spec)
        rows.append(
            (
                spec.label,
                f"{ndcg:.4f}",
                f"{fit_s:.1f}",
                f"{pred_s:.1f}",
                format_bytes(peak),
                error[:140],
            )
        )
        print(rows[-1], flush=True)
    _table(rows, ("model", "NDCG@10", "fit s", "predict s", "peak extra memory", "error"))


def bench_ease16k(args: argparse.Namespace) -> None:
    ds = _synthetic(args.items, args.users, args.events)
    n = ds.n_items
    for precision in args.precision:
        model = EASE(precision=precision)
        _, error, seconds, peak = measured(lambda m=model: m.fit(ds) and None)
        print(
            f"| ease {precision} | {n} items | {seconds:.1f} s | {format_bytes(peak)} | "
            f"estimate {format_bytes(EASE.peak_bytes(n, precision))} | {error or 'ok'} |",
            flush=True,
        )


def _datasets(quick: bool) -> list[tuple[str, Dataset]]:
    """MovieLens 100K, its sparsified and subsampled versions, and the
    synthetic world at three densities."""
    ml = load_data(ML100K).to_dataset()
    rng = np.random.default_rng(0)
    users = ml.events["user_id"].to_numpy()
    kept_users = rng.random(ml.n_users) < 0.3
    user_index = {u: i for i, u in enumerate(ml.user_ids)}
    out = [
        ("ml-100k", ml),
        ("ml-100k, 25% of interactions", ml.subset(rng.random(len(ml.events)) < 0.25)),
        ("ml-100k, 30% of users", ml.subset(kept_users[[user_index[u] for u in users]])),
    ]
    for label, spec in (
        ("synthetic dense (80/user)", "users=2000,items=1000,events_per_user=80"),
        ("synthetic mid (25/user)", "users=3000,items=1500,events_per_user=25"),
        ("synthetic sparse (8/user)", "users=4000,items=2000,events_per_user=8"),
    ):
        out.append((label, load_data(f"synthetic:{spec},seed=3").to_dataset()))
    return out[:2] if quick else out


def bench_defaults(args: argparse.Namespace) -> None:
    from sieve.evaluate.auto import DataShape, shape_params

    rows = []
    for label, ds in _datasets(args.quick):
        (split,) = make_splits(ds, "random:0.75", 42)
        shape = DataShape.of(split.train)
        specs = []
        for name in args.models:
            specs.append(ModelSpec(f"{name}", name))
            specs.append(ModelSpec(f"{name}:rule", name, shape_params(name, shape)))
            specs.append(ModelSpec(f"{name}:auto", name, auto=True, auto_budget_s=args.budget))
        t = time.perf_counter()
        res = evaluate(ds, [split], specs)
        by = {m.label: m for m in res.models}
        for name in args.models:
            cells = []
            for variant in (name, f"{name}:rule", f"{name}:auto"):
                m = by.get(variant)
                cells.append("failed" if m is None else f"{m.summary['ndcg@10'].mean:.4f}")
            auto = by.get(f"{name}:auto")
            chosen = auto.notices[0].split(" chose ")[1].split(" (")[0] if auto else ""
            rows.append(
                (
                    label,
                    f"{shape.n_users}×{shape.n_items}, {shape.per_user:.0f}/user",
                    name,
                    *cells,
                    chosen,
                )
            )
            print(rows[-1], flush=True)
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    _table(
        rows,
        ("data", "shape", "model", "default", "rule", "auto", "auto chose"),
    )


def _implicit_direct(kind: str, split: Split, seed: int = 42, k: int = 10) -> tuple[float, float]:
    """`implicit`'s own model with its own defaults (seeded), used directly: NDCG@k, fit s."""
    import scipy.sparse as sp
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    x = sp.csr_matrix(split.train.matrix, dtype=np.float32)
    model = (
        AlternatingLeastSquares(random_state=seed)
        if kind == "als"
        else BayesianPersonalizedRanking(random_state=seed)
    )
    users = split.test_users
    t = time.perf_counter()
    with threadpoolctl.threadpool_limits(1, "blas"):
        model.fit(x, show_progress=False)
    fit_s = time.perf_counter() - t
    ids, _ = model.recommend(users, x[users], N=k, filter_already_liked_items=True)
    relevant = (split.test.matrix[users] > 0).astype(np.float64).tocsr()
    return float(np.mean(M.ndcg_at_k(np.asarray(ids, dtype=np.int64), relevant, k))), fit_s


def _spread(values: list[float]) -> str:
    """mean ± standard deviation (the value alone for one run)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def bench_libs(args: argparse.Namespace) -> None:
    """Each library's defaults on the same split, over `--seeds` (the
    models' seeds; the split stays seed 42); `:auto` once, seed 42."""
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for label, ds in _datasets(quick=not args.all):
        (split,) = make_splits(ds, "random:0.75", 42)
        specs = [
            ModelSpec(f"{n} {s}", n, {"random_state": s}) for s in seeds for n in ("als", "bpr")
        ]
        specs += [
            ModelSpec(f"{n}:auto", n, auto=True, auto_budget_s=args.budget) for n in ("als", "bpr")
        ]
        res = {m.label: m for m in evaluate(ds, [split], specs).models}
        for kind in ("als", "bpr"):
            theirs = [_implicit_direct(kind, split, s) for s in seeds]
            ours = [res[f"{kind} {s}"] for s in seeds]
            auto = res[f"{kind}:auto"]
            chosen = [n.split(" chose ")[-1] for n in auto.notices if " chose " in n]
            rows.append(
                (
                    label,
                    kind,
                    _spread([m.summary["ndcg@10"].mean for m in ours]),
                    _spread([t[0] for t in theirs]),
                    f"{auto.summary['ndcg@10'].mean:.4f}",
                    f"{np.mean([m.fit_seconds for m in ours]):.1f} / "
                    f"{np.mean([t[1] for t in theirs]):.1f}",
                )
            )
            print(rows[-1], *chosen, flush=True)
            for m in ours:
                print("   ", m.label, *m.notices, flush=True)
    _table(
        rows,
        (
            "data",
            "model",
            "sieve defaults",
            "implicit defaults",
            "sieve :auto",
            "fit s (sieve / implicit)",
        ),
    )


def bench_bpr(args: argparse.Namespace) -> None:
    """BPR with its epochs chosen on validation (the shipped defaults: two
    disjoint parts of 10%) against one part of 20%, a fixed 100 epochs (one
    thread) and `implicit`'s own defaults, over `--seeds`."""
    from sieve.models.factorization import BPR

    seeds = [int(s) for s in args.seeds.split(",")]
    variants = {
        "validation 2 × 10% (shipped)": {},
        "validation 1 × 20%": {"validation_share": 0.2, "validation_parts": 1},
        "100 epochs": {"validation_share": 0.0, "iterations": 100},
    }
    rows = []
    for label, ds in _datasets(quick=False):
        (split,) = make_splits(ds, "random:0.75", 42)
        users = split.test_users
        history = split.history[users].tocsr()
        relevant = (split.test.matrix[users] > 0).astype(np.float64).tocsr()
        cells: list[str] = []
        epochs: list[str] = []
        fit_s: list[str] = []
        for params in variants.values():
            values, chosen, seconds = [], [], []
            for seed in seeds:
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = BPR(**params, random_state=seed).fit(split.train)
                seconds.append(time.perf_counter() - t)
                top = model.recommend_batch(users, history, 10)
                values.append(float(np.mean(M.ndcg_at_k(top.items, relevant, 10))))
                chosen.append(str(model.fit_iterations))
            cells.append(_spread(values))
            fit_s.append(f"{np.mean(seconds):.1f}")
            if params.get("validation_share", 1) > 0:
                epochs.append(", ".join(chosen))
        theirs = [_implicit_direct("bpr", split, seed) for seed in seeds]
        cells.append(_spread([t[0] for t in theirs]))
        fit_s.append(f"{np.mean([t[1] for t in theirs]):.1f}")
        rows.append((label, *cells, " / ".join(epochs), " / ".join(fit_s)))
        print(rows[-1], flush=True)
    _table(
        rows,
        (
            "data",
            *variants,
            "implicit defaults",
            "epochs chosen (2 × 10% / 1 × 20%)",
            "fit s (each column)",
        ),
    )


def bench_funnel(args: argparse.Namespace) -> None:
    """The funnel's offline prediction against single models, with a profile."""
    import cProfile
    import pstats

    from sieve.models.base import create_model

    ds = load_data(ML100K).to_dataset()
    (split,) = make_splits(ds, "random:0.75", 42)
    users = split.test_users
    history = split.history[users].tocsr()
    for name in ("ease", "itemknn", "als", "bpr", "funnel"):
        model = create_model(name).fit(split.train)
        profile = cProfile.Profile() if name == "funnel" else None
        t = time.perf_counter()
        if profile is not None:
            profile.enable()
        model.recommend_batch(users, history, 50)
        if profile is not None:
            profile.disable()
        print(f"{name}: predict {time.perf_counter() - t:.2f} s for {len(users)} users")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="section", required=True)
    sub.add_parser("ml100k")
    sc = sub.add_parser("scale")
    sc.add_argument("--items", type=int, default=40_000)
    sc.add_argument("--users", type=int, default=30_000)
    sc.add_argument("--events", type=float, default=30.0)
    e16 = sub.add_parser("ease16k")
    e16.add_argument("--items", type=int, default=16_000)
    e16.add_argument("--users", type=int, default=12_000)
    e16.add_argument("--events", type=float, default=30.0)
    e16.add_argument("--precision", nargs="+", default=["float32"])
    de = sub.add_parser("defaults")
    de.add_argument("--models", nargs="+", default=["ease", "als", "bpr"])
    de.add_argument("--budget", type=float, default=45.0, help="auto search seconds")
    de.add_argument("--quick", action="store_true", help="two data sets only")
    li = sub.add_parser("libs")
    li.add_argument("--all", action="store_true", help="all data sets (default: two)")
    li.add_argument("--budget", type=float, default=40.0, help="auto search seconds")
    li.add_argument("--seeds", default="42", help="comma-separated model seeds")
    bp = sub.add_parser("bpr")
    bp.add_argument("--seeds", default="42,1,2", help="comma-separated model seeds")
    sub.add_parser("funnel")
    args = parser.parse_args()
    sections = {
        "funnel": bench_funnel,
        "libs": bench_libs,
        "bpr": bench_bpr,
        "ml100k": bench_ml100k,
        "scale": bench_scale,
        "ease16k": bench_ease16k,
        "defaults": bench_defaults,
    }
    sections[args.section](args)


if __name__ == "__main__":
    main()
