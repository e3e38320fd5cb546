"""`sieve keys`: hash an API key for the settings, or make a new one."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sieve.cli.common import UsageError, _clean_errors, app

keys_app = typer.Typer(
    help="API keys: hash a key for the settings, or make a new one.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


@keys_app.command("hash")
def keys_hash(
    key: Annotated[
        str | None,
        typer.Argument(help="The key; omit (or '-') to read it from stdin, out of shell history."),
    ] = None,
) -> None:
    """Print the SHA-256 digest of a key, for the settings.

    The digest is what `api_keys[].key_hash` holds."""
    from sieve.serve.auth import hash_key

    with _clean_errors():
        if key is None or key == "-":
            key = sys.stdin.readline().strip()
        if not key:
            raise UsageError("no key given")
        typer.echo(hash_key(key))


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option("--name", help="The key's name (it appears in logs).")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: read, write, admin.")
    ] = "read",
) -> None:
    """Make a random key; print it once, and its settings entry.

    The settings entry holds the key's digest, never the key."""
    from sieve.serve.auth import hash_key, new_key
    from sieve.settings import ApiKey

    with _clean_errors():
        wanted = [s.strip() for s in scopes.split(",") if s.strip()]
        key = new_key()
        entry = ApiKey(name=name, key_hash=hash_key(key), scopes=tuple(wanted))  # type: ignore[arg-type]
        typer.echo(f"key (shown once, give it to the client): {key}")
        typer.echo("settings entry:")
        typer.echo(
            f'[[api_keys]]\nname = "{entry.name}"\nkey_hash = "{entry.key_hash}"\n'
            f"scopes = {list(entry.scopes)}".replace("'", '"')
        )
