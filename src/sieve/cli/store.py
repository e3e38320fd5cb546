"""The store's commands: `sieve migrate` (bring the schema up to date) and
`sieve import` (load a data set into the store), the steps of a deployment's
one-shot set-up job before any server or worker starts."""

from __future__ import annotations

from sieve.cli.common import (
    ConfigOpt,
    DataOpt,
    StoreOpt,
    _clean_errors,
    _service_settings,
    app,
    console,
    out,
)


@app.command()
def migrate(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Apply pending schema migrations; print the schema version.

    Every process that opens the store does the same under a database lock, so
    this is optional; run it once before a rollout so that new replicas start on
    a schema already migrated, and a failing migration stops the rollout."""
    from sieve.storage import open_store

    with _clean_errors():
        settings = _service_settings(config, store_url=store)
        with open_store(settings.store_url, migrate=False) as opened:
            version = opened.migrate()
        out.print(f"schema version {version} at {settings.store_url}", soft_wrap=True)


@app.command("import")
def import_(data: DataOpt, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Load a data set into the store; then `sieve train` trains on it.

    `--data` is read as for `evaluate`: items and users are upserted, events
    inserted once by id, so running it again adds nothing twice."""
    from sieve.data.io import load_data
    from sieve.storage import open_store
    from sieve.training.snapshot import import_data

    with _clean_errors():
        settings = _service_settings(config, store_url=store)
        console.print(f"loading [bold]{data}[/bold] into {settings.store_url}", soft_wrap=True)
        raw = load_data(data)
        for problem in raw.problems[:20]:
            console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)
        if len(raw.problems) > 20:
            console.print(f"[yellow]… and {len(raw.problems) - 20} more rows skipped[/yellow]")
        with open_store(settings.store_url) as opened:
            n_items, n_users, n_events = import_data(opened, raw)
        out.print(f"{n_items} items, {n_users} users, {n_events} new events", soft_wrap=True)


__all__ = ["import_", "migrate"]
