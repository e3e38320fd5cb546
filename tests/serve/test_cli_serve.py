"""`sieve train`, `sieve batch`, `sieve serve` (its settings checks) and `sieve keys`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.pipeline import Funnel
from sieve.registry import CURRENT, ModelRegistry
from sieve.serve.auth import hash_key
from sieve.storage import open_cache

runner = CliRunner()


def test_train_saves_a_current_model(trained: Any, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(trained.db, db)
    models = tmp_path / "models"
    args = ["train", "--store", f"sqlite:///{db}", "--model-dir", str(models)]
    result = runner.invoke(app, [*args, "--funnel-config", str(trained.funnel_config)])
    assert result.exit_code == 0, result.output
    name = (models / CURRENT).read_text().strip()
    assert (models / name / "model").exists()
    assert name in result.output
    manifest = ModelRegistry(models).manifest(name)
    assert manifest.status == "promoted" and manifest.data["events"] > 0


def test_train_with_an_auto_budget_records_the_chosen_als(trained: Any, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(trained.db, db)
    models = tmp_path / "models"
    args = ["train", "--store", f"sqlite:///{db}", "--model-dir", str(models)]
    args += ["--funnel-config", str(trained.funnel_config), "--auto-budget", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(models)
    name = str(registry.current())
    chosen = registry.manifest(name).data["auto"]
    assert chosen.startswith("als:auto chose ")
    # the served funnel holds what was chosen
    factors = int(chosen.split("factors=")[1].split(",")[0].split(" ")[0])
    assert Funnel.load(registry.model_path(name)).config.als.factors == factors
    assert runner.invoke(app, [*args[:-2], "--auto-budget", "-1"]).exit_code != 0


def test_models_list_promote_rollback(trained: Any, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(trained.db, db)
    models = tmp_path / "models"
    base = [
        "--store",
        f"sqlite:///{db}",
        "--model-dir",
        str(models),
        "--funnel-config",
        str(trained.funnel_config),
    ]
    assert runner.invoke(app, ["train", *base]).exit_code == 0
    first = ModelRegistry(models).current()
    result = runner.invoke(app, ["train", *base, "--no-promote"])
    assert result.exit_code == 0, result.output
    reg = ModelRegistry(models)
    assert reg.current() == first  # a candidate does not serve until promoted
    listed = runner.invoke(app, ["models", "list", "--model-dir", str(models)])
    assert listed.exit_code == 0 and "candidate" in listed.output, listed.output
    second = next(m.version for m in reg.list() if m.status == "candidate")
    assert (
        runner.invoke(app, ["models", "promote", second, "--model-dir", str(models)]).exit_code == 0
    )
    assert reg.current() == second
    back = runner.invoke(app, ["models", "rollback", "--model-dir", str(models)])
    assert back.exit_code == 0, back.output
    assert reg.current() == first
    bad = runner.invoke(app, ["models", "promote", "nope", "--model-dir", str(models)])
    assert bad.exit_code == 2 and "unknown model version 'nope'" in bad.output


def test_train_on_an_empty_store_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = runner.invoke(app, ["train", "--store", url, "--model-dir", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "no events" in " ".join(result.output.split())


def test_batch_fills_the_cache(trained: Any, tmp_path: Path, redis_url: str) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(trained.db, db)
    args = [
        "batch",
        "--n",
        "7",
        "--store",
        f"sqlite:///{db}",
        "--model-dir",
        str(trained.model_dir),
    ]
    result = runner.invoke(app, [*args, "--cache", redis_url])
    assert result.exit_code == 0, result.output
    assert "200 lists of 7" in " ".join(result.output.split())
    with open_cache(redis_url) as cache:
        entry = cache.get_json("recs:u001")
    assert entry["model_version"] == trained.version and len(entry["items"]) == 7


def test_batch_warns_about_a_memory_cache_and_needs_a_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = runner.invoke(app, ["batch", "--store", url, "--model-dir", str(tmp_path / "m")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "memory://" in text and "sieve train" in text


def test_serve_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEVE_OPEN_WRITE", "true")
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "loopback" in " ".join(result.output.split())


def test_serve_refuses_several_workers_on_a_per_process_cache(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 's.db'}"
    result = runner.invoke(app, ["serve", "--workers", "2", "--store", db])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "--workers 2 needs a cache every process shares" in said and "redis://" in said
    memory_store = ["serve", "--workers", "3", "--store", "sqlite://", "--cache", "redis://x:1/0"]
    result = runner.invoke(app, memory_store)
    assert result.exit_code == 2 and "in-memory SQLite" in " ".join(result.output.split())


def test_worker_processes_get_the_settings_the_command_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `--workers N` hands its processes: the settings as resolved, not
    re-read from an environment that may differ."""
    from sieve.serve.auth import hash_key
    from sieve.serve.workers import SETTINGS_ENV, app_from_environment
    from sieve.settings import ApiKey, EventSemantics, Settings

    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 's.db'}",
        cache_url="redis://127.0.0.1:6379/15?prefix=never-used:",
        model_dir=f"file://{tmp_path}/models",
        workers=2,
        api_keys=(ApiKey(name="k", key_hash=hash_key("secret"), scopes=("admin",)),),
        semantics=EventSemantics(click_types=("click", "cart")),
        model_poll_seconds=0.25,
    )
    assert settings.model_dir == tmp_path / "models"
    monkeypatch.setenv(SETTINGS_ENV, settings.model_dump_json())
    monkeypatch.setenv("SIEVE_MODEL_POLL_SECONDS", "99")  # not read again
    built = app_from_environment()
    assert built.state.settings == settings


def test_keys_hash_and_new() -> None:
    result = runner.invoke(app, ["keys", "hash", "secret"])
    assert result.output.strip() == hash_key("secret")
    from_stdin = runner.invoke(app, ["keys", "hash"], input="secret\n")
    assert from_stdin.output.strip() == hash_key("secret")
    made = runner.invoke(app, ["keys", "new", "--name", "web", "--scopes", "read,write"])
    assert made.exit_code == 0, made.output
    key = made.output.split("shown once, give it to the client): ")[1].split()[0]
    assert hash_key(key) in made.output and 'scopes = ["read", "write"]' in made.output
    bad = runner.invoke(app, ["keys", "new", "--name", "x", "--scopes", "root"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_quickstart_loads_and_trains(tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    data = "synthetic:users=60,items=50,seed=1"
    result = runner.invoke(app, ["quickstart", "--no-serve", "--dir", str(folder), "--data", data])
    assert result.exit_code == 0, result.output
    assert (folder / "models" / CURRENT).is_file()
    assert "curl http://127.0.0.1:8000/popular" in result.output


@pytest.mark.slow
def test_quickstart_on_movielens(tmp_path: Path, ml100k_path: Path) -> None:
    folder = tmp_path / "qs-ml"
    result = runner.invoke(
        app, ["quickstart", "--no-serve", "--dir", str(folder), "--movielens", str(ml100k_path)]
    )
    assert result.exit_code == 0, result.output
    assert "1682 items, 943 users, 100000 new events" in result.output
    assert ModelRegistry(folder / "models").current() is not None
