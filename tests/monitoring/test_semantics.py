"""One definition of click, conversion and reward (`EventSemantics`), read by
every consumer: the dashboard, experiment reports, Prometheus, drift, the
online counters and the bandits count the same events."""

from __future__ import annotations

from typing import Any

import pytest

from sieve.experiments.online import ExperimentRecord, parse_experiment
from sieve.experiments.report import experiment_report
from sieve.monitoring.drift import DriftMonitor
from sieve.monitoring.metrics import ServingMetrics
from sieve.realtime.counters import CounterEvent, OnlineCounters
from sieve.serve.routes.dashboard import kpis_from_counts
from sieve.settings import EventSemantics, Settings
from sieve.storage import MemoryCache, SQLStore
from traffic import seed_traffic

NOW = 1_800_000_000.0
EXPERIMENT = {
    "name": "exp",
    "variants": [{"name": "control", "share": 0.5}, {"name": "treatment", "share": 0.5}],
}


def _report(store: SQLStore, semantics: EventSemantics) -> dict[str, Any]:
    record = ExperimentRecord(parse_experiment(EXPERIMENT), created_at=NOW - 4000)
    return experiment_report(store, record, semantics=semantics)


def test_overall_ctr_is_the_impression_weighted_mean_of_the_arms(store: SQLStore) -> None:
    """The dashboard's overall CTR sat above both arms' CTR (it counted carts
    and purchases as clicks, the reports did not): with one definition it is
    the impression-weighted combination of the arms' CTR, between the two."""
    seed_traffic(store, now=NOW)
    semantics = Settings().semantics
    totals, _ = kpis_from_counts(store.window_counts(NOW - 3600, NOW, 600), semantics)
    arms = _report(store, semantics)["arms"]
    assert {a["arm"] for a in arms} == {"control", "treatment"}
    assert totals.impressions == sum(a["impressions"] for a in arms)
    assert totals.clicks == sum(a["clicks"] for a in arms)
    ctrs = [a["clicks"] / a["impressions"] for a in arms]
    assert [a["ctr"]["estimate"] for a in arms] == pytest.approx(ctrs)
    weighted = sum(c * a["impressions"] for c, a in zip(ctrs, arms, strict=True))
    assert totals.ctr == pytest.approx(weighted / totals.impressions)
    assert min(ctrs) < totals.ctr < max(ctrs)


@pytest.mark.parametrize(
    "semantics",
    [
        EventSemantics(),
        EventSemantics(click_types=("click", "cart"), conversion_types=("purchase", "cart")),
    ],
    ids=["default", "click+cart"],
)
def test_every_consumer_counts_the_same_events(store: SQLStore, semantics: EventSemantics) -> None:
    traffic = seed_traffic(store, now=NOW)
    settings = Settings(semantics=semantics)
    cited_clicks = [e for e in traffic.events if e.request_id and semantics.is_click(e.type)]
    conversions = [e for e in traffic.events if e.request_id and semantics.is_conversion(e.type)]
    assert len(cited_clicks) > 50 and len(conversions) > 5

    # dashboard
    totals, _ = kpis_from_counts(store.window_counts(NOW - 3600, NOW, 60), semantics)
    assert totals.clicks == len(cited_clicks)
    # experiment report
    report = _report(store, semantics)
    assert report["semantics"]["click_types"] == list(semantics.click_types)
    assert sum(a["clicks"] for a in report["arms"]) == len(cited_clicks)
    assert sum(a["conversions"] for a in report["arms"]) == len(conversions)
    # Prometheus: every cited click lands on some arm's counter
    metrics = ServingMetrics.for_settings(settings, store)
    metrics.events_ingested(traffic.events)
    counted = sum(
        s.value
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "sieve_clicks_total"
    )
    assert counted == len(cited_clicks)
    # drift: distinct clicked slots, under the same click types
    monitor = DriftMonitor(settings, store, version=lambda: "v1")
    assert set(monitor._clicks) == set(semantics.click_types)
    slots = store.shown_slots("v1", NOW - 3600, NOW, monitor._clicks, 10**6)
    assert int(slots["clicked"].sum()) == len({(e.request_id, e.item_id) for e in cited_clicks})
    # online counters: item clicks are the same event types (cited or not)
    counters = OnlineCounters(MemoryCache(), semantics=semantics)
    counters.update([CounterEvent(e.user_id, e.item_id, e.type, NOW) for e in traffic.events])
    items = sorted({e.item_id for e in traffic.events})
    features = counters.item_features(items, NOW)
    all_clicks = [e for e in traffic.events if semantics.is_click(e.type)]
    assert features["clicks@7d"].sum() == pytest.approx(len(all_clicks))
    # bandits: exactly the click types earn a reward
    for kind in ("view", "click", "cart", "purchase"):
        assert (semantics.reward(kind) > 0) == semantics.is_click(kind)


def test_reward_weights_and_bad_definitions() -> None:
    s = EventSemantics(
        click_types=("click",),
        conversion_types=("purchase",),
        reward_weights={"click": 0.5, "purchase": 1.0},
    )
    assert [s.reward(t) for t in ("click", "purchase", "cart")] == [0.5, 1.0, 0.0]
    with pytest.raises(ValueError, match="neither click nor conversion"):
        EventSemantics(reward_weights={"view": 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        EventSemantics(reward_weights={"click": 2.0})
    with pytest.raises(ValueError, match="at least one event type"):
        EventSemantics(click_types=())
    with pytest.raises(ValueError, match="not accepted event types"):
        Settings(semantics=EventSemantics(click_types=("like",)))
    with pytest.raises(ValueError, match="count only"):
        OnlineCounters(MemoryCache(), semantics=EventSemantics(click_types=("rating",)))
