"""Cold and warm test users reported apart, and a fallback model for the
cold users of plain models (`sieve evaluate --fallback trending`)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.split import Split, temporal_split
from sieve.evaluate import metrics as M
from sieve.evaluate.protocol import EvaluationResult, ModelSpec, evaluate
from sieve.evaluate.report import table, to_json, write_html
from sieve.models.base import create_model

SPEC = "synthetic:users=240,items=120,seed=4"
ALS = {"num_threads": 1, "factors": 16, "iterations": 5}
runner = CliRunner()


def _late_events(share: float, seed: int) -> tuple[Dataset, set[str]]:
    """The synthetic snapshot with a share of its users moved after all the
    others: on a temporal split they are cold test users."""
    ds = load_data(SPEC).to_dataset()
    rng = np.random.default_rng(seed)
    late = {str(u) for u in ds.user_ids[rng.random(ds.n_users) < share]}
    ev = ds.events[["event_id", "user_id", "item_id", "type", "value", "timestamp"]].copy()
    moved = ev["user_id"].astype(str).isin(late).to_numpy()
    span = float(ev["timestamp"].max() - ev["timestamp"].min())
    ev.loc[moved, "timestamp"] = ev.loc[moved, "timestamp"] + span + 1.0
    return Dataset.from_frames(ev, ds.items.copy(), ds.users.copy(), weights=ds.weights), late


@cache
def split() -> tuple[Dataset, Split, set[str]]:
    ds, late = _late_events(0.3, seed=1)
    return ds, temporal_split(ds, 0.75), late


@cache
def result() -> EvaluationResult:
    ds, sp, _ = split()
    specs = [
        ModelSpec("trending", "trending"),
        ModelSpec("als", "als", ALS),
        ModelSpec("ease", "ease"),
    ]
    return evaluate(ds, [sp], specs, k=10, fallback=ModelSpec("trending", "trending"))


@cache
def plain() -> EvaluationResult:
    ds, sp, _ = split()
    return evaluate(ds, [sp], [ModelSpec("trending", "trending"), ModelSpec("als", "als", ALS)])


def _cold_mask() -> np.ndarray:
    """Per test user (in evaluation order): no training interaction at all."""
    _, sp, _ = split()
    return sp.train.matrix.getnnz(axis=1)[sp.test_users] == 0


def test_cold_and_warm_users_are_counted_and_reported_apart() -> None:
    ds, sp, late = split()
    res = plain()
    cold = _cold_mask()
    assert 0 < cold.sum() < len(cold)
    assert {str(ds.user_ids[u]) for u in sp.test_users[cold]} <= late
    assert res.n_segment_users == {"cold": int(cold.sum()), "warm": int((~cold).sum())}
    for r in res.models:
        per_user = r.per_user["ndcg@10"]
        assert r.segments["cold"]["ndcg@10"].mean == pytest.approx(per_user[cold].mean())
        assert r.segments["warm"]["ndcg@10"].mean == pytest.approx(per_user[~cold].mean())
    # without a fallback ALS has nothing to say to a cold user: no items, not arbitrary ones
    als = res.models[1]
    assert als.fallback is None
    assert als.segments["cold"]["hitrate@10"].mean == 0.0
    assert res.models[0].segments["cold"]["hitrate@10"].mean > 0.0


def test_the_fallback_answers_the_cold_users_of_plain_models_only() -> None:
    res, base = result(), plain()
    trending, als, ease = res.models
    own = base.models[1]  # ALS without a fallback
    assert (trending.fallback, als.fallback, ease.fallback) == (None, "trending", "trending")
    for m in ("ndcg@10", "recall@10", "hitrate@10"):
        # cold users: the fallback's lists; warm users: the model's own
        assert als.segments["cold"][m].mean == pytest.approx(trending.segments["cold"][m].mean)
        assert ease.segments["cold"][m].mean == pytest.approx(trending.segments["cold"][m].mean)
        assert als.segments["warm"][m].mean == pytest.approx(own.segments["warm"][m].mean)
    assert als.summary["ndcg@10"].mean > own.summary["ndcg@10"].mean


def test_the_fallback_lists_are_the_fallback_models_lists() -> None:
    _, sp, _ = split()
    cold = _cold_mask()
    model = create_model("trending").fit(sp.train)
    users = sp.test_users[cold]
    top = model.recommend_batch(users, sp.history[users], 50)
    relevant = (sp.test.matrix[users] > 0).astype(np.float64).tocsr()
    expected = M.ndcg_at_k(top.items, relevant, 10).mean()
    assert result().models[1].segments["cold"]["ndcg@10"].mean == pytest.approx(expected)


def test_json_table_and_html_say_how_many_users_of_each_and_who_answered() -> None:
    res = result()
    data = to_json(res)
    assert data["n_cold_users"] == res.n_segment_users["cold"]
    assert data["n_warm_users"] == res.n_segment_users["warm"]
    assert data["n_cold_users"] + data["n_warm_users"] == data["n_test_users"]
    als = data["models"]["als"]
    assert als["fallback"] == "trending"
    assert als["segments"]["cold"]["answered_by"] == "trending"
    assert als["segments"]["warm"]["answered_by"] == "als"
    assert als["segments"]["cold"]["n_users"] == data["n_cold_users"]
    assert set(als["segments"]["cold"]["metrics"]) >= {"ndcg@10", "recall@10"}
    assert data["models"]["trending"]["fallback"] is None
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(table(res))
    text = console.export_text()
    n = res.n_segment_users
    assert f"({n['cold']} cold, {n['warm']} warm)" in text
    assert "ndcg@10 · cold" in text and "ndcg@10 · warm" in text
    assert "als (+trending for cold)" in text


def test_html_report_has_the_segments(tmp_path: Path) -> None:
    page = write_html(result(), tmp_path / "r.html").read_text()
    assert 'id="segments"' in page
    assert "cold (answered by trending)" in page


def test_an_unknown_fallback_is_rejected_before_any_data_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    out = runner.invoke(
        app, ["evaluate", "--data", f"csv:{missing}", "--models", "als", "--fallback", "trendy"]
    )
    assert out.exit_code == 2, out.output
    assert "--fallback" in out.output and "trendy" in out.output
    assert "trending" in out.output  # the known names are listed
    assert "loading" not in out.output
    with pytest.raises(KeyError, match="trendy"):
        evaluate(
            load_data("synthetic:users=20,items=10,seed=1").to_dataset(),
            [],
            [ModelSpec("popular", "popular")],
            fallback=ModelSpec("trendy", "trendy"),
        )


def test_cli_reports_cold_and_warm_with_the_fallback(tmp_path: Path) -> None:
    ds, _, _ = split()
    csv = tmp_path / "events.csv"
    ds.events[["user_id", "item_id", "type", "timestamp"]].to_csv(csv, index=False)
    out_json = tmp_path / "out.json"
    out = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            f"csv:{csv}",
            "--split",
            "temporal:0.75",
            "--models",
            "trending,ease",
            "--fallback",
            "trending",
            "--json",
            str(out_json),
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out_json.read_text())
    assert data["settings"]["fallback"] == "trending"
    assert data["n_cold_users"] == plain().n_segment_users["cold"]
    assert data["models"]["ease"]["fallback"] == "trending"
    assert data["models"]["trending"]["fallback"] is None
    assert "cold" in out.output and "warm" in out.output
