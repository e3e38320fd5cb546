"""Spark training and batch scoring: parity on MovieLens 100K and scale on
synthetic logs (BENCHMARKS.md, "Training and batch scoring on Spark").

    python benchmarks/bench_spark.py parity --ml100k /work/shared/data/ml-100k
    python benchmarks/bench_spark.py scale --events 1000000 --master local[2]
    python benchmarks/bench_spark.py scale --events 1000000 --master spark://127.0.0.1:7077

`parity`: the project's protocol (`sieve evaluate`: random 75/25 split, seed
42, NDCG@10 over test users) for ALS through `implicit` and ALS on Spark
(`sieve.spark.models.fit_als`), same factors, λ, alpha and iterations, in
one run; Spark ALS is also shown without the λ rescaling.

`scale`: a synthetic log written straight to an export folder, then
`sieve spark train --no-ranker` (and the ranker's part, with --ranker),
`sieve spark batch` into Redis, and the single-process funnel fit on the
same events; wall time and peak resident memory (driver JVM, executor JVMs,
Python workers, sampled every 0.25 s). Spark memory is bounded by the
session settings (driver and executors 2 GiB each unless --driver-memory,
--executor-memory or --conf say otherwise; the settings used are in the
output).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

warnings.filterwarnings("ignore")


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak RSS (MiB) of process groups, sampled from /proc: `driver` (this
    process and its Spark JVM), `executor` (CoarseGrainedExecutorBackend
    JVMs), `python_workers` (pyspark.daemon/worker processes)."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {"driver": 0.0, "executor": 0.0, "python_workers": 0.0}
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def load(self) -> dict[str, float]:
        """The machine's 1-minute load average over the samples: mean and max."""
        if not self.loads:
            return {}
        return {"mean": round(sum(self.loads) / len(self.loads), 1), "max": max(self.loads)}

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            totals = {k: 0.0 for k in self.peak}
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                rss = next(
                    (int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS")), 0
                )
                if "CoarseGrainedExecutorBackend" in cmd:
                    totals["executor"] += rss / 1024
                elif "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                    totals["python_workers"] += rss / 1024
                elif int(pid) == me or ("SparkSubmit" in cmd and "pyspark-shell" in cmd):
                    totals["driver"] += rss / 1024
            for k, v in totals.items():
                self.peak[k] = max(self.peak[k], v)
            self.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
            self._stop.wait(0.25)


# ------------------------------------------------------------------ parity
def parity(ml100k: str, seed: int) -> dict[str, Any]:
    from sieve.data.dataset import Dataset
    from sieve.data.io import load_data
    from sieve.data.split import random_split
    from sieve.evaluate.protocol import ModelSpec, evaluate
    from sieve.models.factorization import ALS, ALSConfig, MFState
    from sieve.spark.models import fit_als
    from sieve.spark.session import spark_session

    raw = load_data(f"movielens-100k:{ml100k}")
    dataset = Dataset.from_frames(raw.events, raw.items, raw.users)
    config = ALSConfig()
    with spark_session("local[2]", {"spark.sql.shuffle.partitions": "4"}) as spark:

        class SparkALS(ALS):
            """ALS whose factors Spark learns (`fit_als`), scored like ALS."""

            rescale = True

            def _fit(self, ds: Dataset) -> MFState:
                import pandas as pd

                coo = ds.matrix.tocoo()
                pairs = spark.createDataFrame(
                    pd.DataFrame(
                        {
                            "u": coo.row.astype(np.int64),
                            "i": coo.col.astype(np.int64),
                            "x": coo.data.astype(np.float64),
                        }
                    )
                )
                users, items = fit_als(
                    pairs, ds.n_users, ds.n_items, self.config, rescale=self.rescale
                )
                return MFState(users, items)

        class RawSparkALS(SparkALS):
            rescale = False

        class Spec(ModelSpec):
            def build(self) -> Any:
                return {"spark-als": SparkALS, "spark-als-raw": RawSparkALS}[self.name](config)

        started = time.perf_counter()
        result = evaluate(
            dataset,
            [random_split(dataset, 0.75, seed)],
            [
                ModelSpec("implicit-als", "als", {}),
                Spec("spark-als", "spark-als"),
                Spec("spark-als-raw", "spark-als-raw"),
            ],
            k=10,
        )
        seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "config": vars(config) if hasattr(config, "__dict__") else str(config),
    }
    for m in result.models:
        out[m.label] = {
            "ndcg@10": round(m.summary["ndcg@10"].mean, 4),
            "fit_s": round(m.fit_seconds, 2),
        }
    base = out["implicit-als"]["ndcg@10"]
    for label in ("spark-als", "spark-als-raw"):
        out[label]["vs_implicit"] = round(out[label]["ndcg@10"] / base - 1.0, 4)
    return out


# ------------------------------------------------------------------- scale
def synthetic_lake(root: Path, events: int, seed: int = 7) -> dict[str, int]:
    """A synthetic log in the export layout: users = events/50, items = events/200
    (at least 2,000), Zipf-like item popularity, views/clicks/purchases over 60 days."""
    from sieve.training.export import EVENT_SCHEMA, ITEM_SCHEMA, ExportRecord, _write_manifest

    rng = np.random.default_rng(seed)
    n_users = max(events // 50, 100)
    n_items = max(events // 200, 2000)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    start = 1_780_000_000.0
    folder = root / "events" / "day=all"
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 1_000_000
    with pq.ParquetWriter(folder / "part-000000000000-0000.parquet", EVENT_SCHEMA) as writer:
        for lo in range(0, events, chunk):
            m = min(chunk, events - lo)
            users = rng.integers(0, n_users, m)
            # half of each user's events near their "taste" offset, half from the head
            taste = (users * 7919) % n_items
            near = (taste + rng.integers(0, 200, m)) % n_items
            head = rng.choice(n_items, m, p=popularity)
            items = np.where(rng.random(m) < 0.5, near, head)
            kinds = rng.choice(np.array(["view", "click", "purchase"]), m, p=[0.8, 0.17, 0.03])
            seq = np.arange(lo + 1, lo + m + 1)
            writer.write_table(
                pa.table(
                    {
                        "event_id": pa.array([f"e{s}" for s in seq]),
                        "user_id": pa.array([f"u{u:07d}" for u in users]),
                        "item_id": pa.array([f"i{i:06d}" for i in items]),
                        "type": pa.array(kinds),
                        "value": pa.array(np.full(m, np.nan)),
                        "timestamp": pa.array(start + rng.random(m) * 60 * 86_400.0),
                        "seq": pa.array(seq.astype(np.int64)),
                    },
                    schema=EVENT_SCHEMA,
                )
            )
    catalog = f"catalog/seq={events:012d}"
    (root / catalog).mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "item_id": [f"i{i:06d}" for i in range(n_items)],
                "title": [f"item {i}" for i in range(n_items)],
                "text": ["" for _ in range(n_items)],
                "categories": [[f"c{i % 20}"] for i in range(n_items)],
                "created_at": [math.nan] * n_items,
                "attributes": ["{}"] * n_items,
                "available": [True] * n_items,
            },
            schema=ITEM_SCHEMA,
        ),
        root / catalog / "items.parquet",
    )
    _write_manifest(root, [ExportRecord(0, events, events, ["all"], catalog, n_items, time.time())])
    return {"events": events, "users": n_users, "items": n_items}


def scale(args: argparse.Namespace) -> dict[str, Any]:
    from sieve.settings import Settings
    from sieve.spark.batch import batch_on_spark
    from sieve.spark.session import spark_session
    from sieve.spark.train import train_on_spark

    work = Path(args.work)
    lake = work / f"lake-{args.events}"
    shape = (
        json.loads((lake / "shape.json").read_text()) if (lake / "shape.json").exists() else None
    )
    if shape is None:
        t0 = time.perf_counter()
        shape = synthetic_lake(lake, args.events)
        shape["generate_s"] = round(time.perf_counter() - t0, 1)
        (lake / "shape.json").write_text(json.dumps(shape))
    funnel_toml = work / "funnel.toml"
    funnel_toml.write_text("[als]\nfactors = 32\niterations = 10\n[ranker]\nmax_users = 1000\n")
    out: dict[str, Any] = {"data": shape, "master": args.master}
    conf = {
        "spark.sql.shuffle.partitions": str(args.partitions),
        "spark.driver.memory": args.driver_memory,
        "spark.executor.memory": args.executor_memory,
        **dict(kv.split("=", 1) for kv in args.conf),
    }
    out["conf"] = conf
    settings = Settings(
        model_dir=work / f"models-{args.events}",
        funnel_config=funnel_toml,
        cache_url=f"redis://127.0.0.1:6379/15?prefix=bench_spark_{os.getpid()}:",
        event_weights={"view": 1.0, "click": 2.0, "purchase": 8.0},
    )
    if args.single_only:
        out["single_process"] = single_process(lake, settings, args.ranker)
        return out
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        with spark_session(args.master, conf) as spark:
            funnel, _ = train_on_spark(spark, lake, settings, ranker=args.ranker)
            out["train_s"] = round(time.perf_counter() - t0, 1)
            t1 = time.perf_counter()
            result = batch_on_spark(spark, lake, settings, work / f"lists-{args.events}", n=50)
            out["batch_s"] = round(time.perf_counter() - t1, 1)
        out["batch_users"] = result.users
        out["batch_cached"] = result.cached
        out["batch_users_per_s"] = round(result.users / out["batch_s"], 1)
    out["spark_peak_mib"] = {k: round(v) for k, v in mem.peak.items()}
    out["load_average"] = mem.load
    manifest = json.loads((settings.model_dir / funnel.version / "manifest.json").read_text())
    out["train_timings"] = manifest["data"].get("timings")
    _clear_redis(settings.cache_url)
    if args.single:
        out["single_process"] = single_process(lake, settings, args.ranker)
    return out


def single_process(lake: Path, settings: Any, ranker: bool) -> dict[str, Any]:
    """The funnel's own fit on the same events (one process), with its peak RSS."""
    import pandas as pd
    import pyarrow.dataset as ds

    from sieve.data.dataset import Dataset
    from sieve.data.schema import EventWeights
    from sieve.pipeline import Funnel, load_funnel_config
    from sieve.spark.assemble import spark_config, without_ranker

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        events = (
            ds.dataset(lake / "events", format="parquet", partitioning="hive")
            .to_table()
            .to_pandas()
        )
        items = pd.read_parquet(next(lake.glob("catalog/*/items.parquet")))
        items["attributes"] = [{} for _ in range(len(items))]
        items["categories"] = [list(c) for c in items["categories"]]
        dataset = Dataset.from_frames(
            events.drop(columns=["day"]),
            items,
            weights=EventWeights(weights=settings.event_weights),
        )
        load_s = time.perf_counter() - t0
        config = spark_config(load_funnel_config(settings.funnel_config))
        if not ranker:
            config = without_ranker(config)
        t1 = time.perf_counter()
        Funnel(config).fit(dataset)
        fit_s = time.perf_counter() - t1
    return {
        "load_s": round(load_s, 1),
        "fit_s": round(fit_s, 1),
        "peak_mib": round(mem.peak["driver"]),
        "load_average": mem.load,
    }


def _clear_redis(url: str) -> None:
    import redis

    base, _, prefix = url.partition("?prefix=")
    client = redis.Redis.from_url(base)
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        client.delete(key)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("parity")
    p.add_argument("--ml100k", default="/work/shared/data/ml-100k")
    p.add_argument("--seed", type=int, default=42)
    s = sub.add_parser("scale")
    s.add_argument("--events", type=int, default=1_000_000)
    s.add_argument("--master", default="local[2]")
    s.add_argument("--partitions", type=int, default=8)
    s.add_argument("--work", default="/tmp/sieve-bench-spark")
    s.add_argument("--driver-memory", default="2g", help="spark.driver.memory")
    s.add_argument(
        "--executor-memory", default="2g", help="spark.executor.memory (≤ the worker's memory)"
    )
    s.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="other Spark settings"
    )
    s.add_argument("--ranker", action="store_true", help="also train the ranker on Spark")
    s.add_argument("--single", action="store_true", help="also fit the single-process funnel")
    s.add_argument(
        "--single-only",
        action="store_true",
        help="fit the single-process funnel only (its own process: no Spark heap in its RSS)",
    )
    args = parser.parse_args()
    result = parity(args.ml100k, args.seed) if args.what == "parity" else scale(args)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
