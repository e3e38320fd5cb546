"""The set-up job's commands on a real store (SQLite and PostgreSQL):
`sieve migrate` brings an empty database to the schema's version and is a
no-op the second time; `sieve import` loads a data set once (a second run adds
no event), after which `sieve train` has something to train on."""

from __future__ import annotations

from typer.testing import CliRunner

from sieve.cli import app
from sieve.storage.migrations import MIGRATIONS
from storage.conftest import StoreTarget, target  # noqa: F401  (fixture: a store on each backend)

runner = CliRunner()
DATA = "synthetic:users=40,items=30,seed=3"


def url_of(t: StoreTarget) -> str:
    """The target as one store URL, its PostgreSQL schema included."""
    return t.url if t.schema is None else f"{t.url}?schema={t.schema}"


def test_migrate_then_import_once(target: StoreTarget) -> None:  # noqa: F811
    url = url_of(target)
    for _ in range(2):
        result = runner.invoke(app, ["migrate", "--store", url])
        assert result.exit_code == 0, result.output
        assert f"schema version {MIGRATIONS[-1].version}" in result.stdout

    first = runner.invoke(app, ["import", "--data", DATA, "--store", url])
    assert first.exit_code == 0, first.output
    assert "30 items, 40 users" in first.stdout
    again = runner.invoke(app, ["import", "--data", DATA, "--store", url])
    assert again.exit_code == 0, again.output
    assert "0 new events" in again.stdout

    store = target.open()
    assert (store.count_items(), store.count_users()) == (30, 40)
    assert store.count_events() > 0


def test_import_needs_data_and_names_a_bad_spec(target: StoreTarget) -> None:  # noqa: F811
    url = url_of(target)
    missing = runner.invoke(app, ["import", "--store", url])
    assert missing.exit_code == 2
    bad = runner.invoke(app, ["import", "--data", "nosuch:thing", "--store", url])
    assert bad.exit_code == 2, bad.output
