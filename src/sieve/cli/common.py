"""What every `sieve` command shares: the app, the consoles, the clean
error exit and the options of the data and of the service."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="sieve: a recommender engine with offline evaluation you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


class UsageError(Exception):
    """Bad input from the command line: printed without a traceback."""


def _fail(message: str) -> None:
    # the message is plain text: brackets in it (`sieve[spark]`) are not markup
    console.print(f"[bold red]error:[/bold red] {escape(message)}")
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
        help="movielens-100k:PATH, movielens-1m:PATH, movielens-10m:PATH, "
        "movielens-latest:PATH, csv:PATH, parquet:PATH or synthetic[:users=N,items=M,seed=S]",
    ),
]


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="settings TOML file (default: $SIEVE_CONFIG, if set)"),
]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="store URL (sqlite:///PATH or postgresql://…)")
]
CacheOpt = Annotated[str | None, typer.Option("--cache", help="cache URL (memory:// or redis://…)")]
ModelDirOpt = Annotated[
    str | None,
    typer.Option(
        "--model-dir", help="folder of trained funnels (and CURRENT): a path or a file:// URL"
    ),
]


def _service_settings(config: Path | None, **overrides: Any) -> Any:
    """Settings from flags over $SIEVE_* over the TOML file; bad ones exit with code 2."""
    from sieve.settings import load_settings

    return load_settings(config, **overrides)
