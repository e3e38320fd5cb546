"""No lost run: a model that fails is reported with its reason and the others' results are kept.

Three ways to fail in one evaluation: an exception (an invalid parameter), a
fit refused by the memory budget (EASE), and a worker process that dies of a
segmentation fault. Each model's work runs in its own worker process.
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.split import make_splits
from sieve.evaluate.isolate import run_guarded
from sieve.evaluate.protocol import EvaluationResult, ModelSpec, evaluate
from sieve.evaluate.report import table, to_json, write_json
from sieve.models.base import Recommender, create_model
from sieve.models.ease import EASE
from sieve.models.memory import MemoryBudgetError, ModelNotice, memory_budget, parse_bytes


class _Segfaulting(ModelSpec):
    """A spec whose model kills its own process with SIGSEGV, as the threaded
    Cholesky did on ~16K items."""

    def build(self) -> Recommender[Any, Any]:
        os.kill(os.getpid(), signal.SIGSEGV)
        return create_model(self.name, self.params)  # pragma: no cover


def _kill_self(sig: int) -> None:
    """Runs in the worker: the worker kills itself (as the OOM killer would)."""
    os.kill(os.getpid(), sig)


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_data("synthetic:users=200,items=120,seed=3").to_dataset()


def test_failed_models_are_reported_and_the_others_kept(synthetic: Dataset, tmp_path: Path) -> None:
    splits = make_splits(synthetic, "random:0.8", 1)
    specs = [
        ModelSpec("popular", "popular"),
        _Segfaulting("crashes", "popular"),
        ModelSpec("ease", "ease"),
        ModelSpec("bad-knn", "itemknn", {"k": 0}),
        ModelSpec("itemknn", "itemknn"),
    ]
    path = tmp_path / "run.json"
    written: list[dict[str, Any]] = []

    def on_result(so_far: EvaluationResult) -> None:
        write_json(so_far, path, status="running")
        written.append(json.loads(path.read_text()))

    # 120 items: EASE needs ~0.4 MiB; a 100 KiB budget refuses it, not the others
    res = evaluate(
        synthetic, splits, specs, isolate=True, memory_budget=100 * 1024, on_result=on_result
    )
    assert [m.label for m in res.models] == ["popular", "itemknn"]
    assert res.models[1].summary["ndcg@10"].mean > res.models[0].summary["ndcg@10"].mean
    assert res.models[1].vs_baseline["ndcg@10"].p_adjusted is not None
    assert "SIGSEGV" in res.failures["crashes"]
    assert "MemoryBudgetError" in res.failures["ease"]
    assert "over the memory budget of 100.0 KiB" in res.failures["ease"]
    assert "ConfigError" in res.failures["bad-knn"] and "k must be >= 1" in res.failures["bad-knn"]
    # the file was rewritten after every model: the first model's results were on
    # disk before the crash, and every later state kept them
    assert written[0]["models"]["popular"]["status"] == "ok"
    assert all("popular" in w["models"] for w in written)
    assert written[1]["models"]["crashes"]["status"] == "failed"
    final = to_json(res)
    assert final["status"] == "complete"
    assert final["models"]["ease"] == {
        "status": "failed",
        "reason": res.failures["ease"],
        "notices": [],
    }
    # the terminal table names the failures
    assert "FAILED: crashes, ease, bad-knn" in str(table(res).title)


def test_in_process_failures_are_caught_too(synthetic: Dataset) -> None:
    splits = make_splits(synthetic, "random:0.8", 1)
    res = evaluate(
        synthetic,
        splits,
        [ModelSpec("bad", "ease", {"l2": -1.0}), ModelSpec("ease", "ease")],
    )
    # the first model failed: the next one is the baseline
    assert res.baseline == "ease" and "l2 must be > 0" in res.failures["bad"]


def test_a_dead_worker_is_reported_with_its_signal() -> None:
    out = run_guarded(_kill_self, signal.SIGKILL, isolate=True)
    assert not out.ok and "SIGKILL" in str(out.error) and "out of memory" in str(out.error)
    assert run_guarded(int, "7", isolate=True).value == 7


def test_ease_refuses_with_estimate_and_budget_or_switches_to_float32() -> None:
    ds = load_data("synthetic:users=100,items=300,seed=1").to_dataset()
    n = ds.n_items
    f64, f32 = EASE.peak_bytes(n, "float64"), EASE.peak_bytes(n, "float32")
    with memory_budget(f32 - 1), pytest.raises(MemoryBudgetError) as err:
        EASE().fit(ds)
    assert err.value.estimate == f32 and err.value.budget == f32 - 1
    assert "sparse-ease" in str(err.value)
    with memory_budget(f64 - 1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low = EASE().fit(ds)
    assert any(issubclass(w.category, ModelNotice) and "float32" in str(w.message) for w in caught)
    with memory_budget(f64 + 1):
        full = EASE().fit(ds)
    assert np.allclose(low.state.weights, full.state.weights, atol=1e-4)
    assert parse_bytes("4G") == 4 * 2**30 and parse_bytes("512m") == 512 * 2**20
