"""Drift checks: PSI known answers, popularity drift after training, CTR drop."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sieve.data.records import Event, Impression, ImpressionItem
from sieve.monitoring.drift import (
    DriftMonitor,
    PopularityBins,
    binned_psi,
    categorical_psi,
    popularity_psi,
    psi,
    quantile_edges,
    relative_drop,
)
from sieve.registry import Manifest
from sieve.settings import Settings
from sieve.storage import Store, open_store

EPS = 1e-4


# ------------------------------------------------------------------ PSI
def test_identical_distributions_have_zero_psi() -> None:
    assert psi([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    ref = np.arange(100.0)
    assert binned_psi(ref, ref, bins=10) == pytest.approx(0.0, abs=1e-12)
    assert categorical_psi(["a", "b", "b"], ["b", "a", "b"]) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_a_planted_shift() -> None:
    # 50/50 → 25/75: (0.25 − 0.5)·ln(0.25/0.5) + (0.75 − 0.5)·ln(0.75/0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5), rel=1e-12
    )
    # an emptied bin takes the share eps (no renormalisation)
    assert psi([1, 1], [1, 0]) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (EPS - 0.5) * math.log(EPS / 0.5), rel=1e-12
    )


def test_binned_psi_uses_the_reference_quantiles() -> None:
    ref = np.arange(100.0)  # 4 quantile bins: edges 24.75, 49.5, 74.25 → 25 values each
    assert list(quantile_edges(ref, 4)) == pytest.approx([24.75, 49.5, 74.25])
    recent = np.r_[np.arange(25.0), np.arange(75.0, 100.0)]  # the middle bins emptied
    expected = 2 * (0.5 - 0.25) * math.log(0.5 / 0.25) + 2 * (EPS - 0.25) * math.log(EPS / 0.25)
    assert binned_psi(ref, recent, bins=4) == pytest.approx(expected, rel=1e-12)
    # the outer bins are open: values beyond the reference's range still count
    assert binned_psi(ref, [-5.0, 500.0], bins=4) == pytest.approx(expected, rel=1e-12)
    # ties merge edges: a constant reference has one edge, so two bins (below
    # it, from it on), the reference all in the second
    assert list(quantile_edges([3.0] * 10)) == [3.0]
    assert binned_psi([3.0] * 10, [3.0, 9.0]) == pytest.approx(0.0, abs=1e-12)
    assert binned_psi([3.0] * 10, [1.0, 9.0]) == pytest.approx(
        (0.5 - EPS) * math.log(0.5 / EPS) + (0.5 - 1) * math.log(0.5), rel=1e-12
    )


def test_popularity_bins_by_reference_mass() -> None:
    reference = ["a"] * 40 + ["b"] * 30 + ["c"] * 20 + ["d"] * 10
    bins = PopularityBins.fit(reference, bins=4)
    assert bins.bin_of.to_dict() == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert list(bins.expected) == [40, 30, 20, 10]
    # the popularity order reversed: shares .1 .2 .3 .4 against .4 .3 .2 .1
    reversed_ = ["d"] * 40 + ["c"] * 30 + ["b"] * 20 + ["a"] * 10
    by_hand = 2 * 0.3 * math.log(4) + 2 * 0.1 * math.log(1.5)
    assert popularity_psi(reference, reversed_, bins=4) == pytest.approx(by_hand, rel=1e-12)
    # an item the reference never saw counts in the tail bin
    with_new = ["a"] * 40 + ["b"] * 30 + ["c"] * 20 + ["new"] * 10
    assert popularity_psi(reference, with_new, bins=4) == pytest.approx(0.0, abs=1e-12)
    # two bins: the cut falls where the mass before an item crosses 1/2
    assert PopularityBins.fit(reference, bins=2).expected.tolist() == [70, 30]


def test_relative_drop() -> None:
    assert relative_drop(0.2, 0.05) == pytest.approx(0.75)
    assert relative_drop(0.1, 0.12) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        relative_drop(0.0, 0.1)


def test_psi_rejects_empty_or_mismatched_counts() -> None:
    with pytest.raises(ValueError):
        psi([0, 0], [1, 1])
    with pytest.raises(ValueError):
        psi([1, 1], [1, 1, 1])


# ------------------------------------------------------------------ monitor
VERSION = "v1"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store_url": f"sqlite:///{tmp_path / 'drift.db'}",
        "model_dir": tmp_path / "models",
        "drift_min_impressions": 500,
        **overrides,
    }
    return Settings(**values)


def _register(settings: Settings, max_seq: int, created_at: float) -> None:
    """A manifest saying the serving model saw the events up to `max_seq`."""
    folder = Path(settings.model_dir) / VERSION
    folder.mkdir(parents=True)
    manifest = Manifest(VERSION, "funnel", created_at, data={"max_seq": max_seq})
    (folder / "manifest.json").write_text(manifest.to_json())


def _events(store: Store, items: list[str], prefix: str, types: list[str] | None = None) -> None:
    store.append_events(
        [
            Event(
                id=f"{prefix}{k}",
                user_id=f"u{k % 97}",
                item_id=item,
                type=types[k] if types else "view",
                timestamp=datetime.now(UTC),
            )
            for k, item in enumerate(items)
        ]
    )


def _draws(n: int, order: list[str], seed: int) -> list[str]:
    """`n` items drawn with Zipf-like popularity (1/rank) in `order`."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(order) + 1)
    return [order[k] for k in rng.choice(len(order), size=n, p=p / p.sum())]


ITEMS = [f"i{k:02d}" for k in range(50)]


@pytest.mark.parametrize("shifted", [False, True])
def test_popularity_shift_after_training_fires_the_trigger(tmp_path: Path, shifted: bool) -> None:
    settings = _settings(tmp_path)
    with open_store(settings.store_url) as store:
        _events(store, _draws(3000, ITEMS, seed=1), "ref")
        _register(settings, store.max_seq(), time.time())
        # after training: the same tastes, or the popularity order reversed
        _events(store, _draws(2000, ITEMS[::-1] if shifted else ITEMS, seed=2), "new")
        monitor = DriftMonitor(settings, store, version=lambda: VERSION)
        results = {r.check: r for r in monitor.check()}
    popularity = results["item_popularity"]
    trigger = Path(settings.model_dir) / "RETRAIN"
    assert popularity.value is not None and popularity.threshold == 0.2
    assert not results["event_types"].fired  # views only, before and after
    assert results["event_types"].value == pytest.approx(0.0, abs=1e-12)
    assert results["ctr_drop"].value is None and not results["ctr_drop"].fired  # no impressions
    if not shifted:
        assert popularity.value < 0.05 and not popularity.fired
        assert not trigger.exists()
        return
    assert popularity.value > 1.0 and popularity.fired
    reason = trigger.read_text()
    assert reason.count("\n") == 1 and f"drift on model {VERSION}" in reason
    assert "item_popularity" in reason and "event_types" not in reason
    # the worker reads the reason
    from sieve.training.worker import Retrainer

    assert Retrainer(settings).due() == f"trigger: {reason.strip()}"
    # asked once per serving version and check: a rejected retrain is not re-asked
    trigger.unlink()
    with open_store(settings.store_url) as store:
        again = DriftMonitor(settings, store, version=lambda: VERSION)
        again._triggered.add((VERSION, "item_popularity"))
        assert {r.check: r for r in again.check()}["item_popularity"].fired
    assert not trigger.exists()


def test_too_few_recent_events_do_not_fire(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with open_store(settings.store_url) as store:
        _events(store, _draws(1000, ITEMS, seed=1), "ref")
        _register(settings, store.max_seq(), time.time())
        _events(store, ["i49"] * 100, "new")  # all on one tail item, but only 100
        results = DriftMonitor(settings, store, version=lambda: VERSION).check()
    assert all(r.value is None and not r.fired for r in results)
    assert "100 events since the training snapshot" in results[0].detail
    assert not (Path(settings.model_dir) / "RETRAIN").exists()


def test_no_serving_model_is_reported_not_fired(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with open_store(settings.store_url) as store:
        monitor = DriftMonitor(settings, store, version=lambda: None)
        assert monitor.latest() == []
        monitor.check()
    latest = monitor.latest()
    assert [r["check"] for r in latest] == [
        "item_popularity",
        "event_types",
        "served_scores",
        "ctr_drop",
    ]
    assert all(r["detail"] == "no serving model" and r["value"] is None for r in latest)


# ------------------------------------------------------------------ CTR
def _impressions(
    store: Store, prefix: str, at: float, requests: int, clicks: int, version: str = VERSION
) -> None:
    """`requests` lists of 5 slots served at `at`; `clicks` of the slots clicked
    (one click event citing the request and item)."""
    when = datetime.fromtimestamp(at, UTC)
    store.log_impressions(
        [
            Impression(
                request_id=f"{prefix}{r}",
                user_id=f"u{r}",
                timestamp=when,
                model_version=version,
                items=[
                    ImpressionItem(item_id=f"i{p}", position=p, score=float(5 - p))
                    for p in range(5)
                ],
            )
            for r in range(requests)
        ]
    )
    slots = [(f"{prefix}{r}", f"i{p}") for r in range(requests) for p in range(5)]
    store.append_events(
        [
            Event(
                id=f"click-{request_id}-{item}",
                user_id="u",
                item_id=item,
                type="click",
                request_id=request_id,
                timestamp=when,
            )
            for request_id, item in slots[:clicks]
        ]
    )


@pytest.mark.parametrize(("recent_clicks", "fires"), [(60, True), (285, False)])
def test_ctr_drop_fires_over_the_threshold(tmp_path: Path, recent_clicks: int, fires: bool) -> None:
    settings = _settings(tmp_path, drift_min_impressions=1000)
    now = time.time()
    with open_store(settings.store_url) as store:
        _events(store, ITEMS, "ref")  # the training snapshot
        _register(settings, store.max_seq(), now - 10 * 86400)
        # reference: 1500 slots 2-3 hours ago with CTR 0.2; another version's
        # slots (CTR 1) are not compared
        _impressions(store, "old", now - 2.5 * 3600, requests=300, clicks=300)
        _impressions(store, "other", now - 1800, requests=100, clicks=500, version="v0")
        # the last hour: 1500 slots with CTR 0.04 (or 0.19); the last minute is
        # too fresh for its clicks and left out
        _impressions(store, "new", now - 1800, requests=300, clicks=recent_clicks)
        _impressions(store, "fresh", now - 10, requests=300, clicks=0)
        monitor = DriftMonitor(
            settings, store, version=lambda: VERSION, clock=lambda: now, window_seconds=3600
        )
        results = {r.check: r for r in monitor.check()}
    ctr = results["ctr_drop"]
    assert ctr.threshold == 0.3
    assert ctr.value == pytest.approx(1 - (recent_clicks / 1500) / 0.2)
    assert ctr.fired is fires
    assert "1500 slots" in ctr.detail and "0.2000" in ctr.detail
    # the same scores were served before and in the window
    assert results["served_scores"].value == pytest.approx(0.0, abs=1e-12)
    assert not results["served_scores"].fired
    # (the clicks are new events on a few items: the popularity check may fire too)
    trigger = Path(settings.model_dir) / "RETRAIN"
    reason = trigger.read_text() if trigger.exists() else ""
    assert ("ctr_drop 0.8000 > 0.3" in reason) is fires
    assert ("ctr_drop" in reason) is fires


def test_ctr_needs_enough_slots(tmp_path: Path) -> None:
    settings = _settings(tmp_path, drift_min_impressions=1000)
    now = time.time()
    with open_store(settings.store_url) as store:
        _events(store, ITEMS, "ref")
        _register(settings, store.max_seq(), now - 86400)
        _impressions(store, "old", now - 2.5 * 3600, requests=300, clicks=300)
        _impressions(store, "new", now - 1800, requests=100, clicks=0)  # 500 slots
        monitor = DriftMonitor(settings, store, version=lambda: VERSION, clock=lambda: now)
        ctr = {r.check: r for r in monitor.check()}["ctr_drop"]
    assert ctr.value is None and not ctr.fired
    assert "500 slots" in ctr.detail and "1000 of each needed" in ctr.detail


def test_background_checks_start_and_stop(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with open_store(settings.store_url) as store:
        monitor = DriftMonitor(settings, store, version=lambda: None)
        assert monitor.start(0) is None  # 0: never
        assert monitor.start(0.01) is not None
        deadline = time.time() + 5
        while not monitor.latest() and time.time() < deadline:
            time.sleep(0.01)
        monitor.stop()
    assert len(monitor.latest()) == 4


def test_replicas_on_one_cache_check_and_ask_as_one(tmp_path: Path) -> None:
    """Two server processes' monitors on one cache: the results one ran are
    every replica's latest, one claims each interval's run, and a drift asks
    for one retrain, not one per replica."""
    from sieve.storage import MemoryCache

    settings = _settings(tmp_path)
    cache = MemoryCache()
    trigger = Path(settings.model_dir) / "RETRAIN"
    with open_store(settings.store_url) as store:
        _events(store, _draws(3000, ITEMS, seed=1), "ref")
        _register(settings, store.max_seq(), time.time())
        _events(store, _draws(2000, ITEMS[::-1], seed=2), "new")
        first, second = (
            DriftMonitor(settings, store, version=lambda: VERSION, cache=cache) for _ in range(2)
        )
        assert second.last() == []
        results = first.check()
        assert {r.check: r for r in results}["item_popularity"].fired and trigger.exists()
        assert second.last() == results  # read from the cache
        assert first._claim(60.0) and not second._claim(60.0)  # one run per interval
        trigger.unlink()  # the worker took it; the second replica checks the same drift
        assert {r.check: r for r in second.check()}["item_popularity"].fired
    assert not trigger.exists()  # asked once, by the first replica
