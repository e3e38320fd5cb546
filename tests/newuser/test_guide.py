"""docs/guide-own-data.md, followed literally.

Every shell command of the guide runs, in order, in an empty folder: the
`export` lines set the environment; `sieve serve` is the CLI's own command
up to the point where it would start uvicorn (its settings then serve an
in-process app, reached from a loopback address as the guide's curl is);
`curl` lines become the same HTTP requests; other `sieve` lines run through
the CLI. The guide's data blocks (```json FILE) are the files it sends, and
each JSON block that follows a command is the answer it must get (keys
whose value is "…" are not compared).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sieve.cli import app

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-own-data.md"
BLOCK = re.compile(r"^```(\w+)(?: +(\S+))?\n(.*?)^```", re.S | re.M)
pytestmark = pytest.mark.slow
runner = CliRunner()


def steps(text: str) -> Iterator[tuple[str, str | None, str]]:
    """(language, file name or None, body) of each fenced block, in order."""
    for m in BLOCK.finditer(text):
        yield m.group(1), m.group(2), m.group(3)


def _matches(expected: Any, got: Any) -> bool:
    if expected == "…":
        return True
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(_matches(v, got.get(k)) for k, v in expected.items())
    return bool(expected == got)


class Guide:
    """The state of a reader following the guide: environment, server, last answer."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        self.monkeypatch = monkeypatch
        self.env: dict[str, str] = {}
        self.client: TestClient | None = None
        self.last: tuple[list[str], Any] | None = None

    def run(self, line: str) -> None:
        words = shlex.split(line)
        inline = {}
        while words and re.match(r"^[A-Z_]+=", words[0]):
            name, _, value = words.pop(0).partition("=")
            inline[name] = value
        if words[0] == "export":
            self.env.update(dict(w.split("=", 1) for w in words[1:]))
        elif words[:2] == ["sieve", "serve"]:
            self.serve(words[1:], {**self.env, **inline})
        elif words[0] == "sieve":
            result = runner.invoke(app, words[1:], env={**self.env, **inline})
            assert result.exit_code == 0, f"{line}\n{result.output}"
            self.last = (words, result.output)
        elif words[0] == "curl":
            self.last = (words, self.curl(words[1:]))
        else:
            raise AssertionError(f"the guide runs a command this test cannot follow: {line}")

    def serve(self, args: list[str], env: dict[str, str]) -> None:
        """`sieve serve` as the CLI runs it, keeping the settings it would serve."""
        from sieve.serve import app as app_module
        from sieve.serve import workers

        captured: list[Any] = []
        self.monkeypatch.setattr(workers, "run", lambda s, access_log: captured.append(s))
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0 and captured, result.output
        self.client = TestClient(app_module.create_app(captured[0]), client=("127.0.0.1", 50123))
        self.client.__enter__()

    def curl(self, args: list[str]) -> Any:
        assert self.client is not None, "curl before the guide started a server"
        method, headers, body, url = "GET", {}, None, ""
        it = iter(args)
        for a in it:
            if a == "-X":
                method = next(it)
            elif a == "-H":
                name, _, value = next(it).partition(":")
                headers[name.strip()] = value.strip()
            elif a in ("--data", "-d"):
                value = next(it)
                body = (self.folder / value[1:]).read_bytes() if value.startswith("@") else value
            else:
                url = a
        path = re.sub(r"^https?://[^/]+", "", url)
        response = self.client.request(method, path, headers=headers, content=body)
        # curl prints any answer; only the readiness probe answers 503 by design
        assert response.status_code < 300 or path == "/ready", f"{method} {path}: {response.text}"
        return response.json()

    def expect(self, expected: Any) -> None:
        """The last answer is the guide's; a readiness check may wait for the
        running server to pick a new model up (it polls every 2 s)."""
        assert self.last is not None
        words, got = self.last
        deadline = time.monotonic() + 60
        while not _matches(expected, got) and words[0] == "curl" and time.monotonic() < deadline:
            time.sleep(0.5)
            got = self.curl(words[1:])
        assert _matches(expected, got), (words, expected, got)

    def close(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)


def test_the_guide_works_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    guide = Guide(tmp_path, monkeypatch)
    ran: list[str] = []
    try:
        for language, name, body in steps(GUIDE.read_text()):
            if language == "json" and name:
                (tmp_path / name).write_text(body)
            elif language == "json":
                guide.expect(json.loads(body))
            elif language == "sh":
                for line in body.splitlines():
                    if line.strip():
                        guide.run(line.strip())
                        ran.append(line.strip().split()[0])
        assert guide.last is not None
        words, answer = guide.last
        assert words[-1].endswith("/recommendations/u-1?n=5")
        assert len(answer["items"]) == 5 and answer["user_id"] == "u-1"
        assert all(item["explanation"] for item in answer["items"])
    finally:
        guide.close()
    assert ran.count("curl") >= 5 and "sieve" in ran
    # the version the server picked up is the one `sieve train` registered, with its metric
    from sieve.registry import ModelRegistry

    [manifest] = ModelRegistry(tmp_path / "shop-models").list()
    assert "holdout ndcg@10" in manifest.metrics
