"""Version names and corrupt manifests in the model registry, the CLI and the service (issue 9).

`sieve models promote ../../x` used to be accepted (path traversal: `promote`
and `manifest` skipped the name check), and one corrupt `manifest.json` made
every listing fail: the models dashboard and `POST /experiments` gave 500.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.cli.evaluate import parse_sep
from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.models.popularity import Popularity
from sieve.registry import ModelRegistry, RegistryError, check_version

runner = CliRunner()
BAD_NAMES = ["../../x", "..", ".hidden", "a/b", "a\\b", "", "CURRENT", "history.jsonl", "x" * 200]


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return load_data("synthetic:users=40,items=20,seed=3").to_dataset()


@pytest.fixture
def registry(tmp_path: Path, ds: Dataset) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "models")
    for version in ("v1", "v2"):
        reg.register(Popularity().fit(ds), version=version)
    reg.promote("v1")
    return reg


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_version_names_are_refused_everywhere(registry: ModelRegistry, name: str) -> None:
    outside = registry.root.parent / "x"
    outside.mkdir()
    (outside / "manifest.json").write_text(registry.manifest("v2").to_json())
    calls = [registry.promote, registry.manifest, registry.model_path]
    for call in [*calls, registry.load] if name else calls:  # load(""): the current one
        with pytest.raises(RegistryError, match="invalid version name"):
            call(name)
    with pytest.raises(RegistryError, match="invalid version name"):
        registry.reject(name, "no")
    assert registry.current() == "v1"
    assert json.loads((outside / "manifest.json").read_text())["status"] == "candidate"


def test_valid_names_pass() -> None:
    for name in ("v1", "39b4934c5066cb2d", "20240101-120000", "model_2.1-rc"):
        assert check_version(name) == name


def test_cli_promote_refuses_a_path(registry: ModelRegistry) -> None:
    r = runner.invoke(app, ["models", "promote", "../../x", "--model-dir", str(registry.root)])
    assert r.exit_code == 2
    assert "invalid version name" in r.output
    assert registry.current() == "v1"
    ok = runner.invoke(app, ["models", "promote", "v2", "--model-dir", str(registry.root)])
    assert ok.exit_code == 0, ok.output
    assert registry.current() == "v2"


def test_a_corrupt_current_file_is_an_error_not_a_path(registry: ModelRegistry) -> None:
    (registry.root / "CURRENT").write_text("../../etc\n")
    with pytest.raises(RegistryError, match="invalid version name"):
        registry.current()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"version": "v2"}', "missing field"),
        ('{"version": "v2", "model": "p", "created_at": "yesterday"}', "created_at"),
        ('{"version": "v2", "model": "p", "created_at": 1, "metrics": {"a": "x"}}', "metrics"),
        ('{"version": "../x", "model": "p", "created_at": 1}', "version"),
        ('{"version": "v1", "model": "p", "created_at": 1}', "not its folder"),
    ],
)
def test_corrupt_manifest_is_reported_and_skipped(
    registry: ModelRegistry, text: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    (registry.root / "v2" / "manifest.json").write_text(text)
    manifests, problems = registry.scan()
    assert [m.version for m in manifests] == ["v1"]
    assert [p.version for p in problems] == ["v2"] and reason in problems[0].reason
    assert [m.version for m in registry.list()] == ["v1"]
    assert "v2" in caplog.text  # the listing logs what it skipped
    with pytest.raises(RegistryError, match="corrupt"):
        registry.promote("v2")
    r = runner.invoke(app, ["models", "list", "--model-dir", str(registry.root)])
    assert r.exit_code == 0, r.output
    assert "v1" in r.output and "skipped version 'v2'" in r.output


def test_corrupt_history_line_is_skipped(registry: ModelRegistry) -> None:
    with open(registry.root / "history.jsonl", "a") as fh:
        fh.write("{torn\n")
    assert [h["version"] for h in registry.history()] == ["v1"]


def test_sep_escapes() -> None:
    assert parse_sep("\\t") == "\t" and parse_sep("tab") == "\t" and parse_sep("\t") == "\t"
    assert parse_sep("\\x1f") == "\x1f" and parse_sep(";") == ";" and parse_sep("::") == "::"


def test_cli_reads_a_tab_separated_file_with_escaped_sep(tmp_path: Path) -> None:
    tsv = tmp_path / "events.tsv"
    lines = ["user\titem\trating\tts"]
    lines += [
        f"u{u}\ti{(u * 7 + i) % 12}\t{1 + i % 5}\t{1000 + u * 10 + i}"
        for u in range(30)
        for i in range(6)
    ]
    tsv.write_text("\n".join(lines) + "\n")
    args = ["evaluate", "--data", f"csv:{tsv}", "--sep", "\\t", "--user-col", "user"]
    args += ["--item-col", "item", "--value-col", "rating", "--time-col", "ts"]
    r = runner.invoke(app, [*args, "--models", "popular", "--k", "3"])
    assert r.exit_code == 0, r.output
    assert "skipped" not in r.output  # every line split into its four fields
