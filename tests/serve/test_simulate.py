"""`sieve simulate` drives a real running service: synthetic users with known
click probabilities run an A/B test with exploration slots and then an
interleaving test end to end, and the service's reports count exactly what
the simulator saw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.serve.launch import running_server

pytestmark = pytest.mark.slow

runner = CliRunner()
SYNTH = "synthetic:users=200,items=150,seed=1"  # the world of the `trained` fixture


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_ab_and_interleaving_end_to_end(trained: Any, tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    shutil.copy(trained.db, db)
    store = f"sqlite:///{db}"
    env = {
        "SIEVE_OPEN_READ": "true",
        "SIEVE_OPEN_WRITE": "true",
        "SIEVE_MODEL_POLL_SECONDS": "0.2",
    }
    args = ["--store", store, "--model-dir", str(trained.model_dir), "--no-access-log"]
    ab = {
        "name": "explore-ab",
        "variants": [
            {"name": "control", "share": 0.5},
            {"name": "explore", "share": 0.5, "config": {"exploration_slots": 3}},
        ],
    }
    _cli("experiment", "create", json.dumps(ab), "--store", store)
    with running_server(args, env=env, ready_path="/ready", timeout=60) as url:
        out = tmp_path / "ab.json"
        _cli(
            "simulate", "--data", SYNTH, "--url", url, "--requests", "300", "--seconds", "120",
            "--n", "8", "--experiment", "explore-ab", "--json", str(out),
        )  # fmt: skip
        payload = json.loads(out.read_text())
        tallies, report = payload["simulation"]["arms"], payload["report"]
        assert payload["simulation"]["requests"] == 300 and payload["simulation"]["errors"] == 0
        by_arm = {a["arm"]: a for a in report["arms"]}
        for arm in ("control", "explore"):
            seen = tallies[f"explore-ab/{arm}"]
            assert by_arm[arm]["impressions"] == seen["impressions"]
            assert by_arm[arm]["clicks"] == seen["clicks"]
            assert by_arm[arm]["conversions"] == seen["purchases"]
            assert by_arm[arm]["ctr"]["low"] <= by_arm[arm]["ctr"]["high"]
        assert tallies["explore-ab/explore"]["explore_impressions"] > 0
        assert tallies["explore-ab/control"]["explore_impressions"] == 0
        assert report["srm"]["ok"] and report["verdict"]

        # the CLI reads the same report from the store
        text = _cli("experiment", "report", "explore-ab", "--store", store)
        assert "explore-ab" in text and "CTR" in text

        # stop it; an interleaving test in a layer of its own takes over
        _cli("experiment", "stop", "explore-ab", "--store", store)
        inter = {
            "name": "inter",
            "layer": "ranking",
            "kind": "interleaving",
            "variants": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}],
        }
        _cli("experiment", "create", json.dumps(inter), "--store", store)
        assert "inter" in _cli("experiment", "list", "--store", store)
        listed = {e["name"]: e for e in httpx.get(f"{url}/experiments").json()}
        assert listed["explore-ab"]["status"] == "stopped"
        assert listed["inter"]["kind"] == "interleaving"
        out = tmp_path / "inter.json"
        _cli(
            "simulate", "--data", SYNTH, "--url", url, "--requests", "200", "--seconds", "120",
            "--experiment", "inter", "--json", str(out), "--seed", "1",
        )  # fmt: skip
        payload = json.loads(out.read_text())
        summary = payload["report"]["interleaving"]
        # the experiment may take a poll interval to reach the server: every
        # request it served is counted, and identical arms rarely differ
        assert 0 < summary["requests"] <= 200
        assert summary["wins"]["A"] + summary["wins"]["B"] + summary["ties"] == summary["requests"]
        assert summary["p_value"] > 0.001


def test_simulate_reports_bad_input_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--data", "movielens-100k:/x", "--requests", "1"])
    assert result.exit_code == 2 and "synthetic" in result.output
    result = runner.invoke(
        app, ["simulate", "--url", "http://127.0.0.1:9", "--requests", "1", "--seconds", "5"]
    )
    assert result.exit_code == 2 and "cannot reach the service" in result.output
    result = runner.invoke(
        app, ["experiment", "create", "{not json", "--store", f"sqlite:///{tmp_path / 'x.db'}"]
    )
    assert result.exit_code == 2 and "not valid JSON" in result.output
