"""The store's commands: `sieve migrate` (bring the schema up to date) and
`sieve import` (load a data set, or a table of items, users or events, into
the store), the steps of a deployment's one-shot set-up job before any
server or worker starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sieve.cli.common import (
    ConfigOpt,
    StoreOpt,
    UsageError,
    _clean_errors,
    _service_settings,
    app,
    console,
    out,
)
from sieve.cli.ingest import MapOpt, import_file_command, parse_pairs


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
def import_(
    what: Annotated[
        str | None,
        typer.Argument(
            help="What to import: items, users or events (then FILE: CSV, Parquet or JSON "
            "Lines), or a data spec, as --data."
        ),
    ] = None,
    file: Annotated[Path | None, typer.Argument(help="The table to import.")] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="A data spec (as for `evaluate`) to load whole."),
    ] = None,
    map_: MapOpt = None,
    format: Annotated[
        str | None,
        typer.Option("--format", help="The format: csv, parquet or jsonl (default: the suffix)."),
    ] = None,
    sep: Annotated[str | None, typer.Option("--sep", help="The CSV field separator.")] = None,
    categories_sep: Annotated[
        str | None,
        typer.Option("--categories-sep", help="The separator of categories in a CSV cell."),
    ] = None,
    time_unit: Annotated[
        str | None, typer.Option("--time-unit", help="The unit of numeric times: s, ms or us.")
    ] = None,
    time_format: Annotated[
        str | None, typer.Option("--time-format", help="The strftime pattern of date strings.")
    ] = None,
    default_type: Annotated[
        str | None, typer.Option("--default-type", help="The type of events without one.")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Rows per transaction.")] = 50_000,
    allow_unknown_items: Annotated[
        bool,
        typer.Option("--allow-unknown-items", help="Accept events of items not in the catalog."),
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore the file's checkpoint: start at line 1.")
    ] = False,
    rejects: Annotated[
        Path | None,
        typer.Option(
            "--rejects",
            help="Where to write every rejected row as CSV (default: FILE.rejected.csv).",
        ),
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Load data into the store; a second run adds nothing twice.

    `sieve import items|users|events FILE`: one table, its columns named by
    `--map FIELD=COLUMN`; every rejected row is reported with its line and
    reason; the good ones are committed in batches, and an interrupted import
    run again resumes after the last committed line. `sieve import --data
    SPEC` loads a whole data set (items, users, events). Then `sieve train`."""
    with _clean_errors():
        settings = _service_settings(config, store_url=store)
        if what in ("items", "users", "events"):
            if file is None:
                raise UsageError(f"sieve import {what} needs a FILE (CSV, Parquet or JSON Lines)")
            if data is not None:
                raise UsageError("give either --data or KIND FILE, not both")
            options = {
                "sep": sep,
                "categories_sep": categories_sep,
                "time_unit": time_unit,
                "time_format": time_format,
                "default_type": default_type,
            }
            import_file_command(
                what,
                file,
                settings=settings,
                pairs=parse_pairs(map_),
                options=options,
                fmt=format,
                batch=batch,
                allow_unknown_items=allow_unknown_items,
                restart=restart,
                rejects=rejects,
            )
            return
        if what is not None and data is not None:
            raise UsageError(f"give either --data or a data spec, not both (got {what!r})")
        if file is not None:
            raise UsageError(
                f"unexpected {str(file)!r}: use `sieve import items|users|events FILE`"
            )
        spec = data or what
        if spec is None:
            raise UsageError(
                "nothing to import: give `sieve import items|users|events FILE` "
                "or `sieve import --data SPEC`"
            )
        _import_spec(spec, settings)


def _import_spec(data: str, settings: Any) -> None:
    """Load a whole data set named by a spec (items, users, events)."""
    from sieve.data.io import load_data
    from sieve.storage import open_store
    from sieve.training.snapshot import import_data

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
