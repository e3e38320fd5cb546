"""Every message a new user met on the way, saying what was wrong and what to do.

(`--sep '\\t'` read as a tab is tested in tests/test_registry_input.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serve.conftest import KEYS, bearer
from sieve.cli import app

runner = CliRunner()
MakeClient = Callable[..., TestClient]


def one_line_error(result: Any) -> str:
    """The CLI failed with exit code 2 and a single `error:` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_bad_split_is_rejected_before_the_data_loads(tmp_path: Path) -> None:
    missing = tmp_path / "absent.csv"  # loading it would fail with "no such file"
    result = runner.invoke(app, ["evaluate", "--data", f"csv:{missing}", "--split", "random:1.5"])
    line = one_line_error(result)
    assert "--split random:1.5: random ratio must be in (0,1), got 1.5" in line
    assert "e.g. random:0.8" in line and "loading" not in result.output
    result = runner.invoke(app, ["tune", "--model", "ease", "--validation", "sideways"])
    assert "--validation sideways: unknown split spec" in one_line_error(result)


def test_a_one_row_file_says_there_is_no_test_user(tmp_path: Path) -> None:
    data = tmp_path / "one.csv"
    data.write_text("user,item\n1,2\n")
    result = runner.invoke(
        app,
        ["evaluate", "--data", f"csv:{data}", "--user-col", "user", "--item-col", "item",
         "--models", "popular"],
    )  # fmt: skip
    line = one_line_error(result)
    assert "values is empty" not in line
    assert "left no test user with a held-out interaction (1 users, 1 events)" in line
    assert "use more data" in line


def test_an_experiment_definition_that_is_not_an_object(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    line = one_line_error(runner.invoke(app, ["experiment", "create", "[1,2]", "--store", store]))
    assert "the inline definition is a JSON list, not an object" in line
    assert '{"name": "x", "variants"' in line
    line = one_line_error(runner.invoke(app, ["experiment", "create", "nope", "--store", store]))
    assert "neither inline JSON" in line and "nor a file that exists" in line


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--store", "bogus://x"], "cannot open the store at bogus://x: unsupported store URL"),
        (
            ["--cache", "redis://127.0.0.1:1/0"],
            "cannot open the cache at redis://127.0.0.1:1/0: Redis not reachable",
        ),
        (["--cache", "memcached://x"], "cannot open the cache at memcached://x: unsupported"),
    ],
)
def test_serve_with_a_bad_store_or_cache_url_is_one_line(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    args = ["serve", "--store", f"sqlite:///{tmp_path / 's.db'}", *flags]
    line = one_line_error(runner.invoke(app, args))
    assert says in line
    assert "check --store or SIEVE_STORE_URL" in line or "check --cache or SIEVE_CACHE_URL" in line


def test_a_missing_admin_scope_names_what_would_do(make_client: MakeClient) -> None:
    client = make_client(headers=bearer("read"))
    detail = client.post("/admin/reload").json()["detail"]
    assert "or 'admin'" not in detail
    assert "lacks the 'admin' scope" in detail and "send a key with the 'admin' scope" in detail
    item = {"id": "sku-1", "title": "A shoe"}
    detail = client.post("/items", json=item).json()["detail"]
    assert "lacks the 'write' scope" in detail and "the 'write' or 'admin' scope" in detail


def test_an_authorization_header_without_bearer_is_named(make_client: MakeClient) -> None:
    client = make_client(headers={"Authorization": KEYS["admin"]}, open_read=True)
    response = client.get("/popular")
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert "does not start with 'Bearer '" in detail and "missing API key" not in detail
    ok = make_client(headers={"Authorization": f"Bearer {KEYS['admin']}"})
    assert ok.get("/items").status_code == 200


def test_experiment_report_asks_the_running_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--url` reads the service's report (no analysis code loaded here)."""
    report = {
        "experiment": "e1", "kind": "ab", "status": "running", "interleaving": None,
        "arms": [{"arm": "control-with-a-long-name", "units": 3, "impressions": 30,
                  "clicks": 3, "ctr": None, "conversion_rate": None}],
        "comparisons": [], "shadows": [], "verdict": "Keep running.",
    }  # fmt: skip
    seen: list[str] = []

    def get(url: str, **kwargs: Any) -> httpx.Response:
        seen.append(url)
        return httpx.Response(200, json=report)

    monkeypatch.setattr(httpx, "get", get)
    result = runner.invoke(app, ["experiment", "report", "e1", "--url", "http://svc:8000/"])
    assert result.exit_code == 0, result.output
    assert seen == ["http://svc:8000/experiments/e1/report"]
    assert "control-with-a-long-name" in result.output and "Keep running." in result.output


def test_experiment_report_names_an_unreachable_service() -> None:
    result = runner.invoke(app, ["experiment", "report", "e1", "--url", "http://127.0.0.1:1"])
    line = one_line_error(result)
    assert "cannot reach the service at http://127.0.0.1:1" in line and "leave out --url" in line
