"""Through the real app: /metrics after traffic, the drift endpoints, the trigger."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sieve.monitoring.stages import listening

MakeClient = Callable[..., TestClient]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(client: TestClient) -> Samples:
    """Every sample of GET /metrics (sent without a key), by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_after_traffic(
    serve: MakeClient, trained: Any, headers: dict[str, dict[str, str]]
) -> None:
    client = serve(headers=None)
    admin, read = headers["admin"], headers["read"]
    assert listening()  # the app's stage sink is registered for its lifespan

    # a live answer (nothing precomputed: a cache miss) …
    live = client.get("/recommendations/u001", params={"n": 5}, headers=read).json()
    precomputed = client.post("/admin/precompute", params={"n": 10}, headers=admin).json()
    # … and one from the precomputed cache
    cached = client.get("/recommendations/u002", params={"n": 5}, headers=read).json()
    assert not live["cached"] and cached["cached"]
    assert client.get("/items/no-such-item", headers=read).status_code == 404
    assert client.get("/no/such/path").status_code == 404

    events = [
        {"id": "v1", "user_id": "u001", "item_id": live["items"][1]["id"], "type": "view"},
        {"id": "v2", "user_id": "u002", "item_id": cached["items"][1]["id"], "type": "view"},
        # citing its request, and attributed to the cached answer's request
        {
            "id": "c1",
            "user_id": "u001",
            "item_id": live["items"][0]["id"],
            "type": "click",
            "request_id": live["request_id"],
        },
        {"id": "c2", "user_id": "u002", "item_id": cached["items"][0]["id"], "type": "click"},
    ]
    for _ in range(2):  # the second time all are duplicates: not ingested again
        r = client.post("/events", json={"events": events}, headers=admin)
        assert r.status_code in (200, 201), r.text

    m = _scrape(client)
    latency = "sieve_http_request_duration_seconds_count"
    assert (
        _value(m, latency, endpoint="/recommendations/{user_id}", method="GET", status="2xx") == 2
    )
    assert _value(m, latency, endpoint="/admin/precompute", method="POST", status="2xx") == 1
    assert _value(m, latency, endpoint="/events", method="POST", status="2xx") == 2
    assert _value(m, latency, endpoint="/items/{item_id}", method="GET", status="4xx") == 1
    errors = "sieve_http_errors_total"
    assert _value(m, errors, endpoint="/items/{item_id}", method="GET", status="404") == 1
    assert _value(m, errors, endpoint="unmatched", method="GET", status="404") == 1
    assert not any(name == errors and ("status", "200") in labels for name, labels in m)

    assert _value(m, "sieve_cache_lookups_total", result="hit") == 1
    assert _value(m, "sieve_cache_lookups_total", result="miss") == 1
    assert _value(m, "sieve_model_info", version=trained.version) == 1
    assert _value(m, "sieve_model_loaded_timestamp_seconds") > 0
    assert _value(m, "sieve_events_ingested_total", type="view") == 2
    assert _value(m, "sieve_events_ingested_total", type="click") == 2

    arm = {"experiment": "none", "arm": "none"}
    assert _value(m, "sieve_served_lists_total", **arm) == 2
    assert _value(m, "sieve_impressions_total", **arm) == 10
    assert _value(m, "sieve_clicks_total", **arm) == 2
    assert _value(m, "sieve_arm_ctr", **arm) == 2 / 10

    # the live answer and every precomputed list went through the funnel
    funnel_calls = 1 + precomputed["users"]
    assert _value(m, "sieve_stage_duration_seconds_count", stage="retrieval") == funnel_calls
    # (a request without candidates skips ranking and rerank and is backfilled)
    ranked = _value(m, "sieve_stage_duration_seconds_count", stage="ranking")
    assert 0 < ranked <= funnel_calls
    assert _value(m, "sieve_stage_duration_seconds_count", stage="rerank") == ranked
    assert _value(m, "sieve_stage_duration_seconds_sum", stage="rerank") > 0

    # the scrape itself is counted by the next one
    again = _scrape(client)
    assert _value(again, latency, endpoint="/metrics", method="GET", status="2xx") == 1


def test_drift_endpoints(serve: MakeClient, headers: dict[str, dict[str, str]]) -> None:
    client = serve(headers=None)
    assert client.get("/monitoring/drift", headers=headers["read"]).json() == []
    assert client.get("/monitoring/drift").status_code == 401
    assert client.post("/admin/drift-check", headers=headers["read"]).status_code == 403

    ran = client.post("/admin/drift-check", headers=headers["admin"])
    assert ran.status_code == 200, ran.text
    checks = ran.json()
    assert [c["check"] for c in checks] == [
        "item_popularity",
        "event_types",
        "served_scores",
        "ctr_drop",
    ]
    # nothing happened since training: too little to compare, nothing fires
    assert all(c["value"] is None and not c["fired"] for c in checks)
    assert client.get("/monitoring/drift", headers=headers["read"]).json() == checks
    m = _scrape(client)
    assert _value(m, "sieve_drift_fired", check="item_popularity") == 0
    assert _value(m, "sieve_drift_last_check_timestamp_seconds") == checks[0]["checked_at"]


def test_shifted_traffic_fires_the_trigger(
    serve: MakeClient, trained: Any, tmp_path: Path, headers: dict[str, dict[str, str]]
) -> None:
    models = tmp_path / "models-copy"  # the trigger must not reach the shared registry
    shutil.copytree(trained.model_dir, models)
    client = serve(model_dir=models, drift_min_impressions=200, drift_check_seconds=0)
    # after training, all the traffic goes to the least popular items
    counts = trained.raw.events["item_id"].value_counts(ascending=True)
    tail = list(counts.index[:5])
    events = [
        {"id": f"tail{k}", "user_id": f"u{k % 50:03d}", "item_id": tail[k % 5], "type": "view"}
        for k in range(300)
    ]
    assert client.post("/events", json={"events": events}).status_code in (200, 201)
    checks = {c["check"]: c for c in client.post("/admin/drift-check").json()}
    assert checks["item_popularity"]["fired"]
    assert checks["item_popularity"]["value"] > 0.2
    trigger = models / "RETRAIN"
    assert "item_popularity" in trigger.read_text()
    m = _scrape(client)
    assert _value(m, "sieve_drift_fired", check="item_popularity") == 1
    assert (
        _value(m, "sieve_drift_psi", check="item_popularity") == checks["item_popularity"]["value"]
    )
