"""The `sieve` command: evaluate, tune, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sieve.cli import app

runner = CliRunner()
SYNTH = "synthetic:users=200,items=100,seed=5"


def test_evaluate_writes_json_and_report(tmp_path: Path) -> None:
    out, rep = tmp_path / "out.json", tmp_path / "out.html"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            SYNTH,
            "--split",
            "random:0.75",
            "--seed",
            "42",
            "--models",
            "popular,ease,itemknn",
            "--k",
            "5",
            "--json",
            str(out),
            "--report",
            str(rep),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["baseline"] == "popular"
    for name in ("popular", "ease", "itemknn"):
        m = data["models"][name]
        ndcg = m["metrics"]["ndcg@5"]
        assert ndcg["low"] <= ndcg["mean"] <= ndcg["high"]
        assert m["fit_seconds"] >= 0 and m["predict_seconds"] >= 0
    assert "p_adjusted" in data["models"]["ease"]["vs_baseline"]["ndcg@5"]
    page = rep.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "ndcg@5" in page


def test_tune_then_evaluate_reads_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "best.toml"
    result = runner.invoke(
        app, ["tune", "--model", "ease", "--data", SYNTH, "--trials", "3", "--out", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    assert "[ease]" in cfg.read_text()
    out = tmp_path / "o.json"
    result = runner.invoke(
        app,
        ["evaluate", "--data", SYNTH, "--models", "ease", "--config", str(cfg), "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    params = json.loads(out.read_text())["settings"]["params"]["ease"]
    assert params["l2"] > 0


def test_bad_inputs_get_clear_errors(tmp_path: Path) -> None:
    cases = [
        (["--split", "random:1.5"], "1.5"),
        (["--split", "shuffle:0.5"], "shuffle"),
        (["--models", "popular,nope"], "unknown model 'nope'"),
        (["--data", "movielens-100k:/no/such/dir"], "/no/such/dir"),
        (["--data", "mystery:x"], "mystery"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["evaluate", "--data", SYNTH, *args])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output, (args, result.output)


def test_malformed_csv_rows_are_reported_and_good_rows_used(tmp_path: Path) -> None:
    csv = tmp_path / "events.csv"
    lines = ["user,item,rating,ts"]
    for u in range(30):
        for i in range(10):
            if (u + i) % 3 == 0:
                lines.append(f"u{u},i{(u % 2) * 10 + i},{1 + (u + i) % 5},{1000 + u * 10 + i}")
    lines.insert(5, "u1,i1,notanumber,1000")  # the 6th line of the file
    csv.write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            f"csv:{csv}",
            "--user-col",
            "user",
            "--item-col",
            "item",
            "--value-col",
            "rating",
            "--time-col",
            "ts",
            "--models",
            "popular",
            "--k",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "events.csv line 6" in result.output


def test_default_models_take_sparse_ease_past_the_dense_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --models, a catalog past `DENSE_MAX_ITEMS` is evaluated with
    sparse EASE in place of dense EASE (whose fit grows with the cube of the
    catalog), and the run says so; named models are run as named."""
    import sieve.models.ease as ease_module

    monkeypatch.setattr(ease_module, "DENSE_MAX_ITEMS", 50)  # SYNTH has 100 items
    out = tmp_path / "out.json"
    args = ["evaluate", "--data", SYNTH, "--k", "5", "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sparse-ease in place of ease" in " ".join(result.output.split())
    data = json.loads(out.read_text())
    assert data["settings"]["models"] == ["popular", "itemknn", "sparse-ease", "als", "bpr"]
    assert set(data["models"]) == {"popular", "itemknn", "sparse-ease", "als", "bpr"}
    result = runner.invoke(app, [*args, "--models", "popular,ease"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["models"]) == {"popular", "ease"}
    monkeypatch.setattr(ease_module, "DENSE_MAX_ITEMS", 10_000)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ease" in json.loads(out.read_text())["models"]
