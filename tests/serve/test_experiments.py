"""Experiments in the serving path: the API, sticky arms, exploration slots
with propensities, shadows, interleaving, adaptive allocation and reports
computed from what was really served and clicked."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]
# u000 has seen the whole catalog (an empty list): left out
USERS = [f"u{k:03d}" for k in range(1, 121)]


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


def _create(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/experiments", json=body)
    assert response.status_code == 201, response.text
    out: dict[str, Any] = response.json()
    return out


def _click(client: TestClient, user: str, item: str, request_id: str) -> None:
    event = {
        "id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "type": "click",
        "request_id": request_id,
    }
    assert client.post("/events", json={"events": [event]}).status_code == 200


EXPLORE = {
    "name": "explore-test",
    "variants": [
        {"name": "control", "share": 0.5},
        {"name": "explore", "share": 0.5, "config": {"exploration_slots": 3}},
    ],
}


def test_create_list_get_stop_and_errors(serve: MakeClient, headers: dict[str, Any]) -> None:
    client = serve()
    created = _create(client, EXPLORE)
    assert created["status"] == "running" and created["kind"] == "ab"
    assert created["salt"] == "exp:explore-test" and created["layer"] == "default"
    assert [e["name"] for e in client.get("/experiments").json()] == ["explore-test"]
    assert client.get("/experiments/explore-test").json()["variants"][1]["config"] == {
        "exploration_slots": 3
    }
    assert client.post("/experiments", json=EXPLORE).status_code == 409
    assert client.get("/experiments/nope").status_code == 404
    assert client.post("/experiments/nope/stop").status_code == 404
    cases = [
        ({**EXPLORE, "name": "x1", "variants": [{"name": "a", "share": 0.7}]}, "sum to 1"),
        (
            {
                **EXPLORE,
                "name": "x2",
                "variants": [{"name": "a", "share": 1, "model_version": "zz"}],
            },
            "not registered",
        ),
        (
            {**EXPLORE, "name": "x3", "variants": [{"name": "a", "share": 1, "config": {"k": 1}}]},
            "unknown key 'k'",
        ),
        ({**EXPLORE, "name": "x4"}, "over-allocated"),  # the default layer is full
        ({**EXPLORE, "name": "bad name!"}, "pattern"),
    ]
    for body, needle in cases:
        response = client.post("/experiments", json=body)
        assert response.status_code == 422, body
        assert needle in response.text, response.text
    assert client.post("/experiments", json=EXPLORE, headers=headers["read"]).status_code == 403
    stopped = client.post("/experiments/explore-test/stop").json()
    assert stopped["status"] == "stopped" and stopped["stopped_at"] >= stopped["created_at"]
    body = client.get(f"/recommendations/{USERS[0]}").json()
    assert body["experiments"] == []


def test_arms_are_sticky_and_exploration_slots_carry_propensities(serve: MakeClient) -> None:
    client = serve(exploration_policy="thompson")
    _create(client, EXPLORE)
    arms: dict[str, str] = {}
    served: dict[str, list[dict[str, Any]]] = {}
    for user in USERS:
        body = client.get(f"/recommendations/{user}", params={"n": 8}).json()
        again = client.get(f"/recommendations/{user}", params={"n": 8}).json()
        (arm,) = body["experiments"]
        assert arm["experiment"] == "explore-test"
        assert again["experiments"][0]["arm"] == arm["arm"]  # sticky
        arms[user] = arm["arm"]
        served[user] = body["items"]
        explored = [i for i in body["items"] if i["slot"] == "explore"]
        if len(body["items"]) < 8:
            continue  # a heavy user with few unseen items: no pool to explore
        if arm["arm"] == "explore":
            assert len(explored) == 3 and [i["slot"] for i in body["items"][-3:]] == ["explore"] * 3
            assert all(0 < i["propensity"] <= 1 for i in explored)
            assert any(i["propensity"] < 1 for i in explored)
        else:
            assert not explored and all(i["propensity"] == 1.0 for i in body["items"])
    counts = Counter(arms.values())
    assert 40 <= counts["explore"] <= 80  # 120 users split 50/50 (±3.7 sd)
    engine = _engine(client)
    engine.impressions.flush()
    user = next(u for u, a in arms.items() if a == "explore" and len(served[u]) == 8)
    body = client.get(f"/recommendations/{user}", params={"n": 8}).json()
    engine.impressions.flush()
    logged = engine.store.get_impression(body["request_id"])
    assert logged is not None
    assert [(a.experiment, a.arm) for a in logged.arms] == [("explore-test", "explore")]
    assert [round(i.propensity, 6) for i in logged.items] == [
        round(i["propensity"], 6) for i in body["items"]
    ]
    assert ["explore" in i.sources for i in logged.items] == [False] * 5 + [True] * 3

    # a click on an explored item credits the bandit at once
    item = body["items"][-1]["id"]
    before = engine.explorer.policy("thompson").counts([item])[1][0]
    _click(client, user, item, body["request_id"])
    assert engine.explorer.policy("thompson").counts([item])[1][0] == before + 1


def test_report_counts_what_was_served_and_clicked(serve: MakeClient) -> None:
    client = serve()
    _create(client, EXPLORE)
    clicks = Counter[str]()
    shown = Counter[str]()
    for k, user in enumerate(USERS):
        body = client.get(f"/recommendations/{user}", params={"n": 5}).json()
        arm = body["experiments"][0]["arm"]
        shown[arm] += len(body["items"])
        if k % 3 == 0:  # every third user clicks the first item
            _click(client, user, body["items"][0]["id"], body["request_id"])
            clicks[arm] += 1
    report = client.get("/experiments/explore-test/report").json()
    by_arm = {a["arm"]: a for a in report["arms"]}
    assert {a: by_arm[a]["impressions"] for a in by_arm} == dict(shown)
    assert {a: by_arm[a]["clicks"] for a in by_arm} == dict(clicks)
    for a, row in by_arm.items():
        ctr = row["ctr"]
        assert ctr["estimate"] == pytest.approx(clicks[a] / shown[a])
        assert ctr["low"] <= ctr["estimate"] <= ctr["high"]
        assert row["coverage"] == pytest.approx(row["distinct_items"] / 150)
    primary = next(c for c in report["comparisons"] if c["metric"] == "ctr")
    assert primary["control"] == "control" and primary["treatment"] == "explore"
    assert 0 <= primary["p_value"] <= 1 and 0 <= primary["always_valid_p"] <= 1
    assert report["srm"]["ok"] is True
    assert "CTR" in report["verdict"]


def test_shadow_arm_is_logged_but_never_shown(serve: MakeClient) -> None:
    client = serve()
    _create(
        client,
        {
            "name": "shadowed",
            "variants": [
                {"name": "live", "share": 1.0},
                {"name": "ghost", "share": 0.0, "shadow": True, "config": {}},
            ],
        },
    )
    body = client.get(f"/recommendations/{USERS[1]}", params={"n": 6}).json()
    assert [a["arm"] for a in body["experiments"]] == ["live"]
    engine = _engine(client)
    engine.flush_impressions()  # logged once its shadows are computed, off the request path
    logged = engine.store.get_impression(body["request_id"])
    assert logged is not None
    assert logged.context["shadows"]["shadowed/ghost"] == [i["id"] for i in body["items"]]


def test_interleaving_credits_clicks_to_teams(serve: MakeClient) -> None:
    client = serve()
    _create(
        client,
        {
            "name": "inter",
            "kind": "interleaving",
            "variants": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}],
        },
    )
    requests = 0
    for user in USERS[:60]:
        body = client.get(f"/recommendations/{user}", params={"n": 6}).json()
        teams = [i["team"] for i in body["items"]]
        assert set(teams) == {"A", "B"} and abs(teams.count("A") - teams.count("B")) <= 1
        first_b = next(i["id"] for i in body["items"] if i["team"] == "B")
        _click(client, user, first_b, body["request_id"])  # users prefer team B's items
        requests += 1
    report = client.get("/experiments/inter/report").json()
    summary = report["interleaving"]
    assert summary["wins"] == {"A": 0, "B": requests} and summary["ties"] == 0
    assert summary["winner"] == "B" and summary["p_value"] < 1e-6
    assert report["verdict"].startswith("B wins the interleaving")


def test_adaptive_allocation_logs_propensities_and_learns(serve: MakeClient) -> None:
    client = serve()
    _create(
        client,
        {
            "name": "adaptive",
            "allocation": "thompson",
            "variants": [{"name": "good", "share": 0.5}, {"name": "bad", "share": 0.5}],
        },
    )
    picks = Counter[str]()
    clicked = 0
    for round_ in range(200):
        user = USERS[round_ % len(USERS)]
        body = client.get(f"/recommendations/{user}", params={"n": 3}).json()
        (arm,) = body["experiments"]
        assert 0 < arm["propensity"] <= 1
        picks[arm["arm"]] += 1
        if arm["arm"] == "good" and body["items"]:  # only the good arm's lists get clicks
            _click(client, user, body["items"][0]["id"], body["request_id"])
            clicked += 1
    assert picks["good"] > 150  # Thompson sampling moves traffic to the arm that pays
    report = client.get("/experiments/adaptive/report").json()
    assert report["srm"] is None and "adaptively" in report["verdict"]
    state = report["allocation_state"]
    assert state["good"]["clicks"] == clicked and state["bad"]["clicks"] == 0
    assert state["good"]["requests"] == picks["good"]
