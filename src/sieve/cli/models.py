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
    show_records,
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
    """List every registered version with its status, data and metrics."""
    with _clean_errors():
        registry = _registry(model_dir, config)
        current = registry.current()
        manifests, problems = registry.scan()
        where = Path(registry.root).resolve()
        if not manifests:
            out.print(
                f"no model registered in {where}: train one with `sieve train --model-dir "
                f"{registry.root}`, or point --model-dir (SIEVE_MODEL_DIR) at the folder "
                "that holds your models",
                soft_wrap=True,
            )
        else:
            rows = [(*_cells(m, current), "; ".join(m.notes)) for m in manifests]
            names = ("version", "status", "created", "metrics", "data", "notes")
            show_records(f"models in {where}", names, rows, ids=("version", "status", "created"))
        for problem in problems:
            console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)


def _cells(m: Any, current: str | None) -> tuple[str, str, str, str, str]:
    """Version, status, creation time, metrics and data of a manifest, as text."""
    return (
        m.version,
        "serving" if m.version == current else m.status,
        time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created_at)),
        ", ".join(f"{k}={v:.4f}" for k, v in m.metrics.items()) or "none recorded",
        ", ".join(f"{k}={v}" for k, v in m.data.items() if k != "store"),
    )


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="The version to serve.", callback=_version_arg)],
    model_dir: ModelDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve VERSION (a running service swaps to it at once).

    The swap drops no request."""
    with _clean_errors():
        _registry(model_dir, config).promote(version, "promoted with `sieve models promote`")
        out.print(f"serving {version}")


@models_app.command("rollback")
def models_rollback(model_dir: ModelDirOpt = None, config: ConfigOpt = None) -> None:
    """Serve the version that served before the current one."""
    with _clean_errors():
        manifest = _registry(model_dir, config).rollback()
        out.print(f"serving {manifest.version}")
