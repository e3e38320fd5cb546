"""`sieve models`: the model registry (list, promote, roll back)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sieve.cli.common import (
    ConfigOpt,
    ModelDirOpt,
    _clean_errors,
    _service_settings,
    app,
    console,
    out,
)

models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version_arg(value: str) -> str:
    """A version name on the command line, checked before any file is touched."""
    from sieve.registry import RegistryError, check_version

    try:
        return check_version(value)
    except RegistryError as e:
        raise typer.BadParameter(str(e)) from None


def _registry(model_dir: str | None, config: Path | None) -> Any:
    from sieve.registry import ModelRegistry

    return ModelRegistry(_service_settings(config, model_dir=model_dir).model_dir)


@models_app.command("list")
def models_list(model_dir: ModelDirOpt = None, config: ConfigOpt = None) -> None:
    """Every registered version with its status, data and metrics."""
    from rich.table import Table

    with _clean_errors():
        registry = _registry(model_dir, config)
        current = registry.current()
        table = Table(title=f"models in {registry.root}")
        for col in ("version", "status", "created", "data", "metrics", "notes"):
            table.add_column(col)
        manifests, problems = registry.scan()
        for m in manifests:
            mark = " ◀ serving" if m.version == current else ""
            table.add_row(
                m.version + mark,
                m.status,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at)),
                ", ".join(f"{k}={v}" for k, v in m.data.items() if k != "store"),
                ", ".join(f"{k}={v:.4f}" for k, v in m.metrics.items()),
                "; ".join(m.notes),
            )
        out.print(table)
        for problem in problems:
            console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="the version to serve", callback=_version_arg)],
    model_dir: ModelDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve VERSION (a running service swaps to it without dropping requests)."""
    with _clean_errors():
        _registry(model_dir, config).promote(version, "promoted with `sieve models promote`")
        out.print(f"serving {version}")


@models_app.command("rollback")
def models_rollback(model_dir: ModelDirOpt = None, config: ConfigOpt = None) -> None:
    """Serve the version that served before the current one."""
    with _clean_errors():
        manifest = _registry(model_dir, config).rollback()
        out.print(f"serving {manifest.version}")
