"""CLI output at 80 columns, help as sentences, `sieve train`'s holdout metric,
and a quickstart whose printed hints work as printed."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sieve.cli import app, common
from sieve.registry import ModelRegistry

runner = CliRunner()
SYNTH = "synthetic:users=120,items=80,seed=4"
SMALL_FUNNEL = """
[als]
factors = 8
iterations = 3
num_threads = 1

[ranker]
n_estimators = 10
max_users = 60
num_threads = 1
"""


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's consoles 80 columns wide, as a default terminal."""
    for console in (common.out, common.console):
        monkeypatch.setattr(console, "_width", 80)
    yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A store with synthetic data and a model trained by `sieve train`."""
    root = tmp_path_factory.mktemp("trained")
    store, models = f"sqlite:///{root / 's.db'}", root / "models"
    (root / "funnel.toml").write_text(SMALL_FUNNEL)
    assert runner.invoke(app, ["import", "--data", SYNTH, "--store", store]).exit_code == 0
    result = runner.invoke(
        app,
        ["train", "--store", store, "--model-dir", str(models),
         "--funnel-config", str(root / "funnel.toml")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"holdout ndcg@10 = 0\.\d{4} \(newest events", result.output), result.output
    return store, models


@pytest.mark.slow
def test_train_records_the_holdout_metric_of_the_version_it_registers(
    trained: tuple[str, Path],
) -> None:
    _, models = trained
    [manifest] = ModelRegistry(models).list()
    assert 0.0 <= manifest.metrics["holdout ndcg@10"] <= 1.0
    assert manifest.data["holdout_events"] > 0
    assert manifest.data["events"] + manifest.data["holdout_events"] == manifest.data["max_seq"]


@pytest.mark.slow
def test_models_list_keeps_the_version_whole_at_80_columns(
    trained: tuple[str, Path], narrow: None
) -> None:
    _, models = trained
    version = ModelRegistry(models).current()
    assert version is not None
    result = runner.invoke(app, ["models", "list", "--model-dir", str(models)])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert re.search(rf"^{version}  serving", result.output, re.M), result.output
    assert "holdout ndcg@10=" in result.output and "…" not in result.output


def test_models_list_on_an_empty_registry_says_where_it_looked(tmp_path: Path) -> None:
    folder = tmp_path / "nothing-here"
    result = runner.invoke(app, ["models", "list", "--model-dir", str(folder)])
    assert result.exit_code == 0
    assert f"no model registered in {folder}" in result.output.replace("\n", "")
    assert "sieve train" in result.output
    assert not folder.exists()  # reading the registry creates no folder


def test_experiment_list_keeps_arm_names_whole_at_80_columns(tmp_path: Path, narrow: None) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    arms = [{"name": f"arm-with-a-rather-long-name-{k}", "share": 0.5} for k in range(2)]
    spec = json.dumps({"name": "a-long-experiment-name-to-copy", "variants": arms})
    env = {"SIEVE_MODEL_DIR": str(tmp_path / "models")}
    assert (
        runner.invoke(app, ["experiment", "create", spec, "--store", store], env=env).exit_code == 0
    )
    result = runner.invoke(app, ["experiment", "list", "--store", store])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in ("a-long-experiment-name-to-copy", *(a["name"] for a in arms)):
        assert name in result.output, result.output
    assert not (tmp_path / "models").exists()


def _commands(group: typer.Typer) -> Iterator[tuple[str, object]]:
    root = typer.main.get_command(group)
    context = root.context_class(root)  # type: ignore[attr-defined]
    stack = [("sieve", root)]
    while stack:
        path, command = stack.pop()
        if hasattr(command, "list_commands"):
            for name in command.list_commands(context):
                stack.append((f"{path} {name}", command.get_command(context, name)))
        yield path, command


def test_help_texts_read_as_sentences() -> None:
    for path, command in _commands(app):
        summary = (getattr(command, "help", None) or "").strip().split("\n\n")[0]
        if path != "sieve":
            assert "\n" not in summary and len(summary) <= 66, (path, summary)
            assert summary[0].isupper() and summary.endswith("."), (path, summary)
        for param in getattr(command, "params", []):
            text = getattr(param, "help", None)
            if text and param.name != "help":
                assert text[0].isupper() or text[0] in "'`", (path, param.name, text)
                assert text.rstrip().endswith((".", ")")), (path, param.name, text)


@pytest.mark.slow
def test_quickstart_hints_work_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sieve.cli.service import quickstart_settings
    from sieve.serve.app import create_app
    from sieve.serve.auth import hash_key

    monkeypatch.chdir(tmp_path)
    small = "synthetic:users=60,items=40,seed=4"
    Path("funnel.toml").write_text(SMALL_FUNNEL)  # the settings read SIEVE_* (a quick fit)
    result = runner.invoke(
        app,
        ["quickstart", "--no-serve", "--data", small],
        env={"SIEVE_FUNNEL_CONFIG": "funnel.toml"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("holdout ndcg@10 = " in line for line in lines), result.output
    key_file = Path("sieve-quickstart/admin-key")
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    settings = quickstart_settings(Path("sieve-quickstart"), 8000, hash_key(key))
    export = next(line for line in lines if line.strip().startswith("export "))
    env = dict(w.split("=", 1) for w in shlex.split(export)[1:])
    assert env["SIEVE_MODEL_DIR"] == "sieve-quickstart/models"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert export.strip() in readme  # the README's experiment commands set the same

    with TestClient(create_app(settings), client=("127.0.0.1", 50321)) as client:
        for line in lines:
            words = line.strip().split()
            if words[:1] == ["curl"]:
                command = line.strip().replace("$(cat sieve-quickstart/admin-key)", key)
                parts = shlex.split(command)[1:]
                headers = dict(
                    parts[i + 1].split(": ", 1) for i, p in enumerate(parts) if p == "-H"
                )
                path = re.sub(r"^http://127\.0\.0\.1:8000", "", parts[-1])
                response = client.get(path, headers=headers)
                assert response.status_code == 200, (line, response.text)
        version = ModelRegistry(env["SIEVE_MODEL_DIR"]).current()
        # the README's experiment flow, with the variables the quickstart printed
        spec = json.dumps(
            {"name": "new-model", "variants": [
                {"name": "control", "share": 0.5},
                {"name": "same", "share": 0.5, "model_version": version}]}
        )  # fmt: skip
        created = runner.invoke(app, ["experiment", "create", spec], env=env)
        assert created.exit_code == 0, created.output
        listed = runner.invoke(app, ["models", "list"], env=env)
        assert version is not None and version in listed.output
        headers = {"Authorization": f"Bearer {key}"}
        body = {
            "name": "via-api",
            "layer": "api",
            "variants": [
                {"name": "a", "share": 0.5},
                {"name": "b", "share": 0.5, "config": {"exploration_slots": 1}},
            ],
        }
        made = client.post("/experiments", json=body, headers=headers)
        assert made.status_code in (200, 201), made.text
    assert not Path("sieve-models").exists()
