"""New-item recommendation through item text: TF-IDF against sentence
embeddings (all-MiniLM-L6-v2), cold-item recall@10 with 95% intervals.

A random `--new-share` of the items that have interactions is held out of
training entirely (their events removed, and their rows absent from the
catalog the content model is fitted on). After fitting, their text is
embedded the way the service adds an item (`ContentTFIDF.vectorize`, as
`ContentIndex.set_rows` does), and every user with a held-out interaction
and a training history gets the held-out items ranked by cosine with their
profile; recall@10 is over those items. The random ranking's expected
recall is given for reference.

    python benchmarks/bench_neural.py --data movielens-100k:../shared/data/ml-100k
    python benchmarks/bench_neural.py --data synthetic:users=1000,items=500,seed=1

`--funnel-sasrec DATA` evaluates the funnel with and without its SASRec
session source (`sources.sasrec`) in one run on `--split` (default
leave-last:1): NDCG@10 and recall@10 with 95% intervals and the paired
difference, as the table below prints it.

    python benchmarks/bench_neural.py --funnel-sasrec movielens-100k:../shared/data/ml-100k

The neural models against EASE, ALS and item-kNN are measured with
`sieve evaluate --json FILE` (BENCHMARKS.md lists the commands); `--table
FILE` prints that file as the markdown table BENCHMARKS.md shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.evaluate import metrics as M
from sieve.evaluate.stats import mean_ci, paired_test
from sieve.models.content import ContentConfig, ContentTFIDF, item_document


def cold_split(ds: Dataset, share: float, seed: int) -> tuple[Dataset, Dataset, np.ndarray]:
    """(training snapshot without the new items, the full snapshot, new item ids)."""
    rng = np.random.default_rng(seed)
    touched = np.flatnonzero(ds.matrix.getnnz(axis=0) > 0)
    new = np.sort(rng.choice(touched, round(share * len(touched)), replace=False))
    new_ids = ds.item_ids[new]
    ev = ds.events
    keep = ~ev["item_id"].astype(str).isin(set(new_ids)).to_numpy()
    cols = ["event_id", "user_id", "item_id", "type", "value", "timestamp"]
    items = ds.items.reset_index(drop=True)
    train_items = items[~items["item_id"].astype(str).isin(set(new_ids))]
    train = Dataset.from_frames(
        ev.loc[keep, cols], train_items, weights=ds.weights, user_ids=ds.user_ids
    )
    return train, ds, new_ids


def run(spec: str, share: float, seed: int) -> None:
    ds = load_data(spec).to_dataset()
    train, full, new_ids = cold_split(ds, share, seed)
    new_full = np.searchsorted(full.item_ids, new_ids)
    relevant = sp.csr_matrix((full.matrix[:, new_full] > 0).astype(np.float64))
    history = train.matrix
    users = np.flatnonzero((relevant.getnnz(axis=1) > 0) & (history.getnnz(axis=1) > 0))
    rel = relevant[users]
    meta = full.items.reset_index(drop=True)
    cats = full.item_categories()
    docs = [
        item_document(str(meta["title"].iloc[i]), str(meta["text"].iloc[i] or ""), cats[i])
        for i in new_full
    ]
    print(
        f"{spec}: {full.n_items} items, {len(new_ids)} new (held out), "
        f"{len(users)} users with a new-item interaction"
    )
    per_user: dict[str, np.ndarray] = {}
    for encoder in ("tfidf", "minilm"):
        t0 = time.perf_counter()
        model = ContentTFIDF(ContentConfig(encoder=encoder)).fit(train)
        fit_s = time.perf_counter() - t0
        new_rows = sp.csr_matrix(model.vectorize(docs), dtype=np.float32)
        profiles = sp.csr_matrix(history[users], dtype=np.float32) @ model.state.item_matrix
        profiles = sp.csr_matrix(profiles)
        norms = np.sqrt(np.asarray(profiles.multiply(profiles).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        scores = np.asarray((sp.diags(1.0 / norms) @ profiles @ new_rows.T).todense())
        # ties (TF-IDF: no shared term) broken at random, the same for both encoders
        jitter = np.random.default_rng(seed).random(scores.shape) * 1e-9
        top = np.argsort(-(scores + jitter), axis=1)[:, :10]
        per_user[encoder] = M.recall_at_k(top, rel, 10)
        ci = mean_ci(per_user[encoder])
        print(
            f"  {encoder:6s} cold recall@10 {ci.mean:.4f} [{ci.low:.4f}, {ci.high:.4f}]"
            f"  (fit + embed {fit_s:.1f} s)"
        )
    n_rel = np.asarray(rel.sum(axis=1)).ravel()
    chance = np.minimum(10, len(new_ids)) / len(new_ids)
    print(f"  random ranking: expected recall@10 {chance:.4f} (mean relevant {n_rel.mean():.1f})")
    diff = paired_test(per_user["minilm"], per_user["tfidf"])
    print(
        f"  minilm - tfidf: {diff.mean_diff:+.4f} "
        f"[{diff.ci_low:+.4f}, {diff.ci_high:+.4f}], p = {diff.p_value:.2g}"
    )


def funnel_sasrec(spec: str, split: str, seed: int, quota: int, holdout: str) -> None:
    """The funnel against the same funnel with the SASRec session source,
    same split, same run (see the module doc)."""
    from sieve.data.split import make_splits
    from sieve.evaluate.protocol import ModelSpec, evaluate

    ds = load_data(spec).to_dataset()
    specs = []
    for h in holdout.split(","):
        ranker = {"ranker": {"holdout": h}}
        sasrec = {**ranker, "sources": {"sasrec": quota}}
        specs += [
            ModelSpec(f"funnel ({h} holdout)", "funnel", ranker),
            ModelSpec(f"funnel + sasrec ({h} holdout)", "funnel", sasrec),
        ]
    t = time.perf_counter()
    res = evaluate(ds, make_splits(ds, split, seed), specs, on_step=print)
    print(
        f"{spec}, {split}, seed {seed}: "
        f"{res.n_test_users} test users ({time.perf_counter() - t:.0f} s)"
    )
    print(
        "| model | NDCG@10 [95% CI] | Recall@10 [95% CI] | NDCG@10 − without [95% CI] (p) | fit s |"
    )
    print("|---|---|---|---|---|")
    for k, m in enumerate(res.models):
        cells = [
            f"{m.summary[key].mean:.4f} [{m.summary[key].low:.4f}, {m.summary[key].high:.4f}]"
            for key in ("ndcg@10", "recall@10")
        ]
        diff = "—"
        if k % 2:  # with SASRec: paired against the funnel before it (same ranker holdout)
            d = paired_test(m.per_user["ndcg@10"], res.models[k - 1].per_user["ndcg@10"])
            diff = f"{d.mean_diff:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}] (p={d.p_value:.2g})"
        print(f"| {m.label} | {cells[0]} | {cells[1]} | {diff} | {m.fit_seconds:.1f} |")


def table(path: str) -> None:
    """A `sieve evaluate --json` file as a markdown table: NDCG@10 and
    recall@10 with 95% intervals, the paired difference to the first model
    (Holm-corrected p), fit and predict seconds."""
    doc = json.loads(Path(path).read_text())
    base = doc["baseline"]
    print(f"| model | NDCG@10 [95% CI] | Recall@10 [95% CI] | NDCG@10 − {base} (p) | fit s |")
    print("|---|---|---|---|---|")
    for label, m in doc["models"].items():
        cells = []
        for key in ("ndcg@10", "recall@10"):
            v = m["metrics"][key]
            cells.append(f"{v['mean']:.4f} [{v['low']:.4f}, {v['high']:.4f}]")
        vs = m["vs_baseline"].get("ndcg@10")
        diff = "—" if vs is None else f"{vs['mean_diff']:+.4f} (p={vs['p_adjusted']:.2g})"
        print(f"| {label} | {cells[0]} | {cells[1]} | {diff} | {m['fit_seconds']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a data spec, as `sieve evaluate --data`")
    parser.add_argument("--table", help="print a `sieve evaluate --json` file as markdown")
    parser.add_argument("--new-share", type=float, default=0.2, help="share of items held out")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--funnel-sasrec", help="a data spec: the funnel with and without SASRec")
    parser.add_argument("--split", default="leave-last:1", help="with --funnel-sasrec")
    parser.add_argument("--quota", type=int, default=100, help="the SASRec source's quota")
    parser.add_argument(
        "--holdout", default="random", help="the rankers' holdouts, e.g. random,temporal"
    )
    args = parser.parse_args()
    if args.table:
        table(args.table)
    elif args.funnel_sasrec:
        funnel_sasrec(args.funnel_sasrec, args.split, args.seed, args.quota, args.holdout)
    elif args.data:
        run(args.data, args.new_share, args.seed)
    else:
        parser.error("give --data (the cold-item benchmark) or --table FILE")


if __name__ == "__main__":
    main()
