"""End to end on a real Spark cluster: a standalone master and worker on
loopback (`spark-class`), `sieve spark train` and `sieve spark batch`
submitted to spark://127.0.0.1:PORT through the command line, the version
registered and its lists written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.registry import ModelRegistry
from spark.conftest import FUNNEL_TOML

pytestmark = pytest.mark.slow  # starts a JVM master, a worker and two applications


def test_train_and_batch_on_a_standalone_cluster(
    cluster: str, lake: tuple[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "funnel.toml").write_text(FUNNEL_TOML)
    models = tmp_path / "models"
    conf = ["--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.driver.memory=1g",
            "--conf", "spark.executor.memory=1g", "--conf", "spark.cores.max=2"]  # fmt: skip
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["spark", "train", "--master", cluster, "--data", str(lake[1]), "--model-dir", str(models),
         "--funnel-config", str(tmp_path / "funnel.toml"), "--no-ranker", *conf],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    registry = ModelRegistry(models)
    version = registry.current()
    assert version is not None
    manifest = json.loads((models / version / "manifest.json").read_text())
    assert manifest["data"]["spark"]["spark.master"] == cluster
    assert manifest["data"]["engine"] == "spark"
    batch = runner.invoke(
        app,
        ["spark", "batch", "--master", cluster, "--data", str(lake[1]), "--model-dir", str(models),
         "--to", str(tmp_path / "out"), "--n", "10", *conf],
    )  # fmt: skip
    assert batch.exit_code == 0, batch.output
    lists = pd.read_parquet(tmp_path / "out" / "lists")
    assert len(lists) == len(registry.load().user_ids)  # type: ignore[attr-defined]
    assert set(lists["model_version"]) == {version}
    assert lists["items"].map(len).max() == 10


def test_a_bad_master_is_a_clear_error(lake: tuple[str, Path]) -> None:
    pytest.importorskip("pyspark")
    result = CliRunner().invoke(app, ["spark", "train", "--master", "yarn", "--data", str(lake[1])])
    assert result.exit_code == 2 and "--master must be local[N]" in " ".join(result.output.split())
