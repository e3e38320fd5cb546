"""The stages of `bench_scale.py`, each run in its own child process.

A child reads the run's parameters (JSON) and writes its figures (JSON) to
the work directory; the parent measures its wall time and its peak resident
memory (`os.wait4`'s `ru_maxrss` of that one child), so every stage's peak is
its own and no stage inherits another's heap.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from sieve.settings import Settings


def settings_of(p: dict[str, Any]) -> Settings:
    """The run's settings: its store, its model folder, its private Redis prefix."""
    return Settings(
        store_url=p["store_url"],
        model_dir=Path(p["workdir"]) / "models",
        cache_url=p["cache_url"],
        open_read=True,
    )


def dir_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stage_generate(p: dict[str, Any]) -> dict[str, Any]:
    """Draw the synthetic world and pickle its frames for the import stage."""
    from sieve.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        n_users=p["users"],
        n_items=p["items"],
        events_per_user=p["events_per_user"],
        seed=p["seed"],
    )
    t = time.perf_counter()
    raw, _ = generate(cfg)
    gen_s = time.perf_counter() - t
    path = Path(p["workdir"]) / "raw.pkl"
    t = time.perf_counter()
    with path.open("wb") as f:
        pickle.dump(raw, f, protocol=5)
    return {
        "generate_s": gen_s,
        "save_s": time.perf_counter() - t,
        "events": len(raw.events),
        "users": len(raw.users),
        "items": len(raw.items),
        "distinct_event_items": int(raw.events["item_id"].nunique()),
        "event_types": {str(k): int(v) for k, v in raw.events["type"].value_counts().items()},
        "pickle_bytes": path.stat().st_size,
    }


def stage_import(p: dict[str, Any]) -> dict[str, Any]:
    """Bulk import (`import_data`) of the pickled frames into a fresh store."""
    from sieve.storage import open_store
    from sieve.training.snapshot import import_data

    t = time.perf_counter()
    with (Path(p["workdir"]) / "raw.pkl").open("rb") as f:
        raw = pickle.load(f)
    load_s = time.perf_counter() - t
    with open_store(p["store_url"]) as store:
        t = time.perf_counter()
        n_items, n_users, inserted = import_data(store, raw, chunk=p["chunk"])
        import_s = time.perf_counter() - t
        out: dict[str, Any] = {
            "load_pickle_s": load_s,
            "import_s": import_s,
            "items": n_items,
            "users": n_users,
            "events": inserted,
            "events_per_s": inserted / import_s,
        }
        if p["store"] == "postgres":
            from sqlalchemy import text

            with store.engine.connect() as conn:
                for table in ("events", "items", "users"):
                    size = conn.execute(
                        text("SELECT pg_total_relation_size(:t)"), {"t": f"{p['schema']}.{table}"}
                    ).scalar_one()
                    out[f"pg_{table}_bytes"] = int(size)
        else:
            db = Path(p["workdir"]) / "sieve.db"
            out["sqlite_bytes"] = db.stat().st_size + sum(
                f.stat().st_size for f in db.parent.glob("sieve.db-*")
            )
    return out


def stage_train(p: dict[str, Any]) -> dict[str, Any]:
    """`sieve.training.train.train` on the store; which sources were fitted."""
    from sieve.storage import open_store
    from sieve.training.train import train

    settings = settings_of(p)
    with open_store(p["store_url"]) as store:
        t = time.perf_counter()
        funnel, saved = train(settings, store)
        train_s = time.perf_counter() - t
    engine = funnel.state.engine
    cfg = funnel.config
    fitted = {
        "als": engine.als is not None,
        "ann_hnsw": engine.ann is not None and not engine.ann.exact,
        "itemknn": engine.itemknn is not None,
        "ease": engine.ease is not None,
        "content": engine.content is not None,
        "ranker": funnel.state.ranker is not None,
    }
    parts = {d.name: dir_bytes(d) for d in saved.iterdir() if d.is_dir()}
    parts.update({f.name: f.stat().st_size for f in saved.iterdir() if f.is_file()})
    return {
        "train_s": train_s,
        "version": str(funnel.version),
        "fitted": fitted,
        "ease_max_items": cfg.sources.ease_max_items,
        "ann_exact_max_items": cfg.ann.exact_max_items,
        "ranker_max_users": cfg.ranker.max_users,
        "model_bytes": dir_bytes(saved),
        "model_parts_bytes": parts,
        "model_path": str(saved),
    }


def stage_recall(p: dict[str, Any]) -> dict[str, Any]:
    """Recall@k of the served HNSW index against exact inner-product search,
    queried with the trained ALS vectors of a sample of users."""
    import faiss

    from sieve.models.factorization import ALS
    from sieve.retrieval.ann import AnnIndex

    saved = Path(p["model_path"])
    k = p["recall_k"]
    ann = AnnIndex.load(saved / "ann")
    als = ALS.load(saved / "als")
    items = np.ascontiguousarray(als.state.item_factors, dtype=np.float32)
    users = np.asarray(als.state.user_factors, dtype=np.float32)
    rng = np.random.default_rng(p["seed"])
    sample = rng.choice(len(users), size=min(p["recall_users"], len(users)), replace=False)
    queries = np.ascontiguousarray(users[sample])
    faiss.omp_set_num_threads(1)
    exact = faiss.IndexFlatIP(items.shape[1])
    exact.add(items)
    t = time.perf_counter()
    truth = exact.search(queries, k)[1]
    exact_ms = (time.perf_counter() - t) * 1000 / len(queries)
    times = np.empty(len(queries))
    found = np.empty((len(queries), k), np.int64)
    for r, q in enumerate(queries):
        t = time.perf_counter()
        found[r] = ann.search(q, k)[0][0]
        times[r] = (time.perf_counter() - t) * 1000
    hits = [len(np.intersect1d(f, t_)) / k for f, t_ in zip(found, truth, strict=True)]
    index_file = saved / "ann" / "index.faiss"
    return {
        "k": k,
        "queries": len(queries),
        "recall": float(np.mean(hits)),
        "recall_p10": float(np.percentile(hits, 10)),
        "hnsw": not ann.exact,
        "ef_search": ann.config.ef_search,
        "hnsw_m": ann.config.hnsw_m,
        "ann_p50_ms": float(np.percentile(times, 50)),
        "ann_p99_ms": float(np.percentile(times, 99)),
        "exact_ms_per_query": exact_ms,
        "index_bytes": index_file.stat().st_size,
        "item_factor_bytes": int(items.nbytes),
        "user_factor_bytes": int(users.nbytes),
    }


def stage_precompute(p: dict[str, Any]) -> dict[str, Any]:
    """Precomputed lists of a sample of users into Redis (`recs:{user}`), each
    from the user's own stored events (not `Service.precompute`, which reads the
    whole log first: see BENCHMARKS.md)."""
    from sieve.serve import answers
    from sieve.serve.listing import listed
    from sieve.serve.service import Service

    svc = Service.open(settings_of(p))
    try:
        funnel = svc.funnel
        users = [str(u) for u in p["precompute_users"]]

        def answer(user_id: str, computed_at: float) -> Any:
            query = svc.live.user_query(funnel, user_id, p["list_n"], now=computed_at)
            return listed(funnel, funnel.recommend_query(query))

        t = time.perf_counter()
        written = answers.precompute(svc.cache, funnel, users, answer)
        return {"precomputed": written, "precompute_s": time.perf_counter() - t}
    finally:
        svc.close()


STAGES = {
    "generate": stage_generate,
    "import": stage_import,
    "train": stage_train,
    "recall": stage_recall,
    "precompute": stage_precompute,
}


def run_child(name: str, params_file: Path) -> None:
    """Entry point of a child: run stage `name`, write `stage-NAME.json`."""
    p = json.loads(params_file.read_text())
    workdir = Path(p["workdir"])
    logging.basicConfig(
        filename=workdir / f"stage-{name}.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    result = STAGES[name](p)
    (workdir / f"stage-{name}.json").write_text(json.dumps(result, indent=1))
