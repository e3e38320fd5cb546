"""A SparkSession for a master, with bounded memory, stopped on exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sieve

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Settings unless the caller gives others: small, bounded memory (the
#: figures in BENCHMARKS.md were measured with these), loopback networking, no
#: UI, Arrow for the pandas exchanges.
DEFAULTS: dict[str, str] = {
    "spark.driver.memory": "2g",
    "spark.executor.memory": "2g",
    "spark.driver.maxResultSize": "1g",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
}
#: Settings recorded in a trained version's manifest.
RECORDED = (
    "spark.master",
    "spark.app.name",
    "spark.driver.memory",
    "spark.executor.memory",
    "spark.executor.cores",
    "spark.cores.max",
    "spark.sql.shuffle.partitions",
    "spark.default.parallelism",
)


def session_conf(master: str, conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of a session on `master`: the defaults, loopback addresses
    for a local master or cluster, this interpreter and this `sieve` for the
    Python workers (a real cluster installs sieve on its nodes instead), then
    the caller's `conf` over all of them."""
    if not (master.startswith("local") or master.startswith("spark://")):
        raise ValueError(
            f"--master must be local[N], local[*] or spark://HOST:PORT, not {master!r}"
        )
    src = str(Path(sieve.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    out = {
        **DEFAULTS,
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.executorEnv.PYTHONPATH": path,
    }
    if master.startswith("spark://") and ("127.0.0.1" in master or "localhost" in master):
        out["spark.driver.host"] = "127.0.0.1"
        out["spark.driver.bindAddress"] = "127.0.0.1"
    out.update(conf or {})
    return out


@contextmanager
def spark_session(
    master: str, conf: Mapping[str, str] | None = None, app_name: str = "sieve"
) -> Iterator[SparkSession]:
    """A SparkSession on `master` (see `session_conf`), stopped on exit."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in session_conf(master, conf).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()


def recorded_conf(spark: SparkSession) -> dict[str, Any]:
    """The Spark version and the settings that shaped a run (for manifests)."""
    conf = dict(spark.sparkContext.getConf().getAll())
    out: dict[str, Any] = {k: conf[k] for k in RECORDED if k in conf}
    out["spark.version"] = spark.version
    out["defaultParallelism"] = spark.sparkContext.defaultParallelism
    return out


__all__ = ["DEFAULTS", "recorded_conf", "session_conf", "spark_session"]
