"""The Dockerfile: hadolint passes it at every level, and what it says agrees
with the code — the default command parses as `sieve serve`, its SIEVE_*
variables are settings, the HEALTHCHECK asks a route that exists on the port
the image exposes, the user is not root, the extras are a build argument, and
what it copies is in the build context. (No image is built here: nothing can
pull a base image.)"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from .files import (
    DOCKERFILE,
    ROOT,
    dockerfile_stages,
    dockerignored,
    env_pairs,
    hadolint,
    parse_cli,
    probe_statuses,
    run,
    settings_from,
    unknown_variables,
)

#: The image's user; the Kubernetes manifests run as the same uid.
IMAGE_UID = 10001


def test_hadolint_passes_at_every_level() -> None:
    result = run([hadolint(), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_is_not_a_stand_in() -> None:
    """The linter in use does find faults (a stand-in that passes everything would not)."""
    result = run([hadolint(), "--no-color", "-"], input="FROM debian\nUSER root\n")
    assert result.returncode != 0 and "DL3002" in result.stdout, result.stdout


def test_final_stage_runs_as_an_unprivileged_numeric_user() -> None:
    final = dockerfile_stages()[-1]
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid == str(IMAGE_UID) and gid in ("", str(IMAGE_UID)), user
    assert f"--uid {IMAGE_UID}" in " ".join(final.all("RUN")), "the user is created with it"


def test_build_stage_is_separate_and_only_its_virtualenv_is_copied() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build, then runtime"
    final = stages[-1]
    copies = final.all("COPY")
    assert copies and all(c.startswith(f"--from={stages[0].name} ") for c in copies), copies


def test_extras_are_a_build_argument_naming_real_extras() -> None:
    build = dockerfile_stages()[0]
    args = dict(a.partition("=")[::2] for a in build.all("ARG"))
    assert "EXTRAS" in args, "ARG EXTRAS= in the build stage"
    assert any("${EXTRAS" in r for r in build.all("RUN")), "the pip install uses it"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    default = [e for e in args["EXTRAS"].split(",") if e]
    assert set(default) <= set(extras), f"EXTRAS default {default}; extras: {sorted(extras)}"


def test_default_command_is_sieve_serve_and_parses() -> None:
    final = dockerfile_stages()[-1]
    argv = json.loads(final.last("ENTRYPOINT")) + json.loads(final.last("CMD"))
    assert argv[0] == "sieve", argv
    name, _ = parse_cli(argv[1:])
    assert name == "serve"


def test_environment_is_settings_the_service_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    for args in dockerfile_stages()[-1].all("ENV"):
        env.update(env_pairs(args))
    assert not unknown_variables(env), f"not settings: {unknown_variables(env)}"
    settings = settings_from(env, monkeypatch)
    assert settings.host == "0.0.0.0", "listens beyond the container's loopback"
    assert str(settings.model_dir) in " ".join(dockerfile_stages()[-1].all("RUN")), (
        "the model folder is created (and owned by the user) in the image"
    )


def test_healthcheck_asks_health_on_the_exposed_port(tmp_path: Path) -> None:
    final = dockerfile_stages()[-1]
    check = final.last("HEALTHCHECK")
    env: dict[str, str] = {}
    for args in final.all("ENV"):
        env.update(env_pairs(args))
    assert "/health" in check
    assert probe_statuses(["/health"], tmp_path) == {"/health": 200}
    # the port: SIEVE_PORT when set, else the same default the image sets
    assert "SIEVE_PORT" in check
    defaults = re.findall(r"'SIEVE_PORT', '(\d+)'", check)
    assert defaults == [env["SIEVE_PORT"]], check
    assert final.last("EXPOSE").split() == [env["SIEVE_PORT"]]


def test_what_the_build_copies_is_in_the_build_context() -> None:
    build = dockerfile_stages()[0]
    sources = []
    for args in build.all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")][:50]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not dockerignored(rel), f"{rel} is copied but .dockerignore leaves it out"
    for kept_out in (".git/HEAD", "tests/conftest.py", "benchmarks", "sieve.db"):
        assert dockerignored(kept_out), f"{kept_out} would be sent to the build"
