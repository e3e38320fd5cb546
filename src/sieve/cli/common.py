"""What every `sieve` command shares: the app, the consoles, the clean
error exit and the options of the data and of the service."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="sieve, a recommender engine with offline evaluation you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)
out = Console()


class UsageError(Exception):
    """Bad input from the command line: printed without a traceback."""


def _fail(message: str) -> None:
    # one logical line (the terminal wraps it), so a log keeps it whole; the
    # message is plain text: brackets in it (`sieve[spark]`) are not markup
    console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn input errors into one clear line and exit code 2."""
    from sieve.config import ConfigError
    from sieve.data.schema import UnknownIdError

    try:
        yield
    except (UsageError, ValueError, KeyError, FileNotFoundError, ConfigError, UnknownIdError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        _fail(str(msg))


def columns(table: Any, *names: str, ids: tuple[str, ...] = ()) -> None:
    """Add columns that never cut what a user must copy: a column named in
    `ids` keeps its values whole on one line (it is squeezed last, and folds
    rather than ends in '…' on a terminal too narrow even for it); the others
    wrap, and fold a long word instead of cutting it."""
    for name in names:
        if name in ids:
            table.add_column(name, no_wrap=True, overflow="fold")
        else:
            table.add_column(name, overflow="fold")


def show_records(
    title: str, names: tuple[str, ...], rows: Sequence[tuple[str, ...]], ids: tuple[str, ...]
) -> None:
    """Rows as a table where it fits the terminal unfolded; on a narrower one,
    one block per row: its id columns whole on the first line (what a user
    copies into the next command), each other column indented below."""
    from rich.cells import cell_len
    from rich.table import Table

    widths = [
        max([cell_len(name)] + [cell_len(line) for row in rows for line in row[k].split("\n")])
        for k, name in enumerate(names)
    ]
    if sum(widths) + 3 * len(names) + 1 <= out.width:  # each cell padded by 1, plus borders
        table = Table(title=title, title_justify="left")
        for name in names:
            table.add_column(name, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    out.print(title, overflow="fold", highlight=False)
    first = [names.index(n) for n in ids]
    for row in rows:
        out.print("\n[bold]" + "  ".join(row[i] for i in first) + "[/bold]", highlight=False)
        for name, value in zip(names, row, strict=True):
            if name not in ids and value:
                text = value.replace("\n", ", ")
                out.print(f"  {name}: {text}", highlight=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and "pytest" in sys.modules,
    )


DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="The data: movielens-100k:PATH, movielens-1m:PATH, movielens-10m:PATH, "
        "movielens-latest:PATH, csv:PATH, parquet:PATH or synthetic[:users=N,items=M,seed=S].",
    ),
]


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Settings TOML file (default: $SIEVE_CONFIG, if set)."),
]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store URL (sqlite:///PATH or postgresql://…).")
]
CacheOpt = Annotated[
    str | None, typer.Option("--cache", help="Cache URL (memory:// or redis://…).")
]
ModelDirOpt = Annotated[
    str | None,
    typer.Option(
        "--model-dir", help="Folder of trained funnels (and CURRENT): a path or a file:// URL."
    ),
]


def _service_settings(config: Path | None, **overrides: Any) -> Any:
    """Settings from flags over $SIEVE_* over the TOML file; bad ones exit with code 2."""
    from sieve.settings import load_settings

    return load_settings(config, **overrides)
