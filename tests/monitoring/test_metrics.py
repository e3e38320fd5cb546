"""ServingMetrics and the stage hook, without an app."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem
from sieve.monitoring.metrics import ServingMetrics, click_types
from sieve.monitoring.stages import StageTimer, add_stage_sink, listening, observe_stage
from sieve.settings import EventSemantics, Settings


def _samples(metrics: ServingMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _impression(request_id: str, n: int, arms: list[tuple[str, str]]) -> Impression:
    return Impression(
        request_id=request_id,
        items=[ImpressionItem(item_id=f"i{k}", position=k, score=1.0) for k in range(n)],
        experiment=arms[0][0] if arms else None,
        arm=arms[0][1] if arms else None,
        arms=[ImpressionArm(experiment=e, arm=a) for e, a in arms],
    )


def _click(event_id: str, request_id: str | None, kind: str = "click") -> Event:
    return Event(id=event_id, user_id="u", item_id="i0", type=kind, request_id=request_id)


def test_clicks_and_ctr_per_arm() -> None:
    stored = {"elsewhere": _impression("elsewhere", 4, [("exp", "b")])}
    metrics = ServingMetrics(lookup=stored.get)
    metrics.served(_impression("r1", 5, [("exp", "a"), ("layout", "wide")]))
    metrics.served(_impression("r2", 5, [("exp", "b")]))
    metrics.events_ingested(
        [
            _click("c1", "r1"),
            _click("c2", "r2"),
            _click("c3", "elsewhere"),  # served by another process: read from the store
            _click("c4", "nowhere"),  # not found anywhere
            _click("c5", None),  # cites no request: not a click on a slot
            _click("p1", "r1", kind="purchase"),  # not a click type
        ]
    )
    s = _samples(metrics)

    def value(name: str, **labels: str) -> float:
        return s.get((name, frozenset(labels.items())), 0.0)

    assert value("sieve_impressions_total", experiment="exp", arm="a") == 5
    assert value("sieve_impressions_total", experiment="layout", arm="wide") == 5
    assert value("sieve_impressions_total", experiment="exp", arm="b") == 5
    assert value("sieve_clicks_total", experiment="exp", arm="a") == 1
    assert value("sieve_clicks_total", experiment="layout", arm="wide") == 1
    assert value("sieve_clicks_total", experiment="exp", arm="b") == 2
    assert value("sieve_clicks_total", experiment="unknown", arm="unknown") == 1
    assert value("sieve_arm_ctr", experiment="exp", arm="a") == 1 / 5
    assert value("sieve_arm_ctr", experiment="exp", arm="b") == 2 / 5
    assert value("sieve_events_ingested_total", type="click") == 5
    assert value("sieve_events_ingested_total", type="purchase") == 1


def test_the_arm_map_is_bounded() -> None:
    metrics = ServingMetrics(remember=2)
    for k in range(3):
        metrics.served(_impression(f"r{k}", 1, []))
    metrics.events_ingested([_click("c0", "r0"), _click("c2", "r2")])
    s = _samples(metrics)
    assert s[("sieve_clicks_total", frozenset({("experiment", "none"), ("arm", "none")}))] == 1
    assert (
        s[("sieve_clicks_total", frozenset({("experiment", "unknown"), ("arm", "unknown")}))] == 1
    )


def test_click_types_follow_the_event_semantics() -> None:
    assert click_types(Settings()) == ("click",)
    # the attribution types say which events get a request id, not which are clicks
    assert click_types(Settings(attribution_types=("cart", "purchase"))) == ("click",)
    semantics = EventSemantics(click_types=("click", "cart"))
    assert click_types(Settings(semantics=semantics)) == ("click", "cart")


def test_unknown_methods_share_one_label() -> None:
    metrics = ServingMetrics()
    metrics.request("unmatched", "BREW", 405, 0.01)
    metrics.request("/health", "GET", 200, 0.002)
    s = _samples(metrics)
    key = frozenset({("endpoint", "unmatched"), ("method", "OTHER"), ("status", "405")})
    assert s[("sieve_http_errors_total", key)] == 1
    ok = frozenset({("endpoint", "/health"), ("method", "GET"), ("status", "2xx")})
    assert s[("sieve_http_request_duration_seconds_count", ok)] == 1
    assert s[("sieve_http_request_duration_seconds_sum", ok)] == 0.002


def test_stage_hook_is_a_noop_until_a_sink_listens() -> None:
    seen: list[tuple[str, float]] = []
    observe_stage("retrieval", 1.0)  # nobody listens: nothing happens
    remove = add_stage_sink(lambda name, seconds: seen.append((name, seconds)))
    try:
        assert listening()
        observe_stage("ranking", 0.5)
        with StageTimer("explore"):
            pass
    finally:
        remove()
    observe_stage("rerank", 0.1)
    assert [name for name, _ in seen] == ["ranking", "explore"]
    assert seen[0][1] == 0.5 and seen[1][1] >= 0
