"""Fixtures of the Spark tests: a store of synthetic data, its export (the
data lake), one local SparkSession per module, and a standalone cluster on
loopback for the end-to-end test.

Every test here skips, saying why, when pyspark (the `spark` extra) or a
Java runtime is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from sieve.data.io import load_data
from sieve.storage import open_store
from sieve.training.export import export_log
from sieve.training.snapshot import import_data

SYNTH = "synthetic:users=120,items=80,seed=3"
#: A small funnel, quick to fit: what the Spark tests train.
FUNNEL_TOML = """
[als]
factors = 8
iterations = 5
num_threads = 1

[ranker]
n_estimators = 10
max_users = 40
num_threads = 1
"""
#: Small, bounded sessions: the tests share the machine.
SPARK_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.driver.memory": "1g",
    "spark.executor.memory": "1g",
}


def spark_problem() -> str | None:
    """Why Spark cannot run here (None when it can)."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'sieve[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (java on the PATH or JAVA_HOME): Spark needs Java 17+"
    return None


@pytest.fixture(scope="session")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(store URL, export folder) of the synthetic data."""
    root = tmp_path_factory.mktemp("spark-lake")
    url = f"sqlite:///{root / 'sieve.db'}"
    with open_store(url) as store:
        import_data(store, load_data(SYNTH))
        export_log(store, root / "lake")
    return url, root / "lake"


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    """One local[2] SparkSession per test module."""
    problem = spark_problem()
    if problem:
        pytest.skip(problem)
    from sieve.spark.session import spark_session

    warnings.filterwarnings("ignore", message=".*pandas >= 3.0.0.*")
    with spark_session("local[2]", SPARK_CONF) as session:
        yield session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Spark process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone Spark cluster on loopback (a master and one worker with
    2 cores and 1 GiB, started by `spark-class` from the pyspark package),
    stopped afterwards; yields its spark:// URL."""
    problem = spark_problem()
    if problem:
        pytest.skip(problem)
    import pyspark

    home = Path(pyspark.__file__).parent
    spark_class = home / "bin" / "spark-class"
    logs = tmp_path_factory.mktemp("spark-cluster")
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_WORKER_DIR": str(logs / "work"),
    }
    port, web, worker_web = _free_port(), _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    master_log, worker_log = open(logs / "master.log", "wb"), open(logs / "worker.log", "wb")  # noqa: SIM115
    try:
        master = subprocess.Popen(
            [str(spark_class), "org.apache.spark.deploy.master.Master",
             "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web)],
            env=env, stdout=master_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(master)
        _wait_port(port, master, 90)
        worker = subprocess.Popen(
            [str(spark_class), "org.apache.spark.deploy.worker.Worker",
             "--host", "127.0.0.1", "--cores", "2", "--memory", "1g",
             "--webui-port", str(worker_web), url],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(worker)
        _wait_port(worker_web, worker, 90)
        yield url
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        master_log.close()
        worker_log.close()
