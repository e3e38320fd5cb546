"""Experiments of different layers in one request: interleaving composes with
A/B parameters, conflicting experiments are refused at creation (API and
CLI), a request meeting a conflicting pair stored before that check applies
and logs only the first, and shadow arms are computed after the response."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import sieve.serve.shadows
from sieve.cli import app
from sieve.experiments.online import parse_experiment
from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]
# u000 has seen the whole catalog (an empty list): left out
USERS = [f"u{k:03d}" for k in range(1, 61)]
#: Long enough that a shadow blocked in the test never times out on a loaded
#: machine; the old code (shadows on the request path) fails after this wait.
GATE_SECONDS = 60.0

INTERLEAVE = {
    "name": "inter",
    "layer": "ranking",
    "kind": "interleaving",
    "variants": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}],
}
EXPLORE = {
    "name": "explore",
    "layer": "exploration",
    "variants": [
        {"name": "control", "share": 0.5},
        {"name": "slots", "share": 0.5, "config": {"exploration_slots": 3}},
    ],
}


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _create(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/experiments", json=body)
    assert response.status_code == 201, response.text
    out: dict[str, Any] = response.json()
    return out


def _refused(client: TestClient, body: dict[str, Any], *needles: str) -> None:
    response = client.post("/experiments", json=body)
    assert response.status_code == 422, response.text
    for needle in needles:
        assert needle in response.text, response.text


def _store_directly(service: Service, specs: list[dict[str, Any]]) -> None:
    """Experiments stored as an older version would have (no conflict check),
    in this order, then read by the running service."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for k, spec in enumerate(specs):
        experiment = parse_experiment(spec)
        service.store.add_experiment(experiment.to_dict(), "running", t0 + timedelta(seconds=k))
    service.experiments.refresh(force=True)


def _logged_arms(service: Service, request_id: str) -> list[tuple[str, str]]:
    service.flush_impressions()
    logged = service.store.get_impression(request_id)
    assert logged is not None
    return [(a.experiment, a.arm) for a in logged.arms]


def test_interleaved_lists_get_the_exploration_slots_of_another_layer(serve: MakeClient) -> None:
    """Found 6: with an interleaving running, the other layer's exploration arm
    was logged as applied but served no exploration slot."""
    client = serve(exploration_policy="thompson")
    _create(client, INTERLEAVE)
    _create(client, EXPLORE)
    service = _service(client)
    full = {"control": 0, "slots": 0}
    for user in USERS:
        body = client.get(f"/recommendations/{user}", params={"n": 8}).json()
        arms = {a["experiment"]: a["arm"] for a in body["experiments"]}
        assert arms.keys() == {"inter", "explore"}  # both layers take every user
        assert sorted(_logged_arms(service, body["request_id"])) == sorted(arms.items())
        items = body["items"]
        if len(items) < 8:
            continue  # a heavy user with few unseen items: no pool to explore
        full[arms["explore"]] += 1
        explored = [i for i in items if i["slot"] == "explore"]
        drafted = [i for i in items if i["slot"] != "explore"]
        if arms["explore"] == "slots":
            assert [i["slot"] for i in items[-3:]] == ["explore"] * 3 and len(explored) == 3
            assert all(0 < i["propensity"] <= 1 for i in explored)
            # the bandit's picks are no team's: the interleaving credits only drafted slots
            assert all(i["team"] is None for i in explored)
        else:
            assert not explored
        teams = [i["team"] for i in drafted]
        assert set(teams) == {"A", "B"} and abs(teams.count("A") - teams.count("B")) <= 1
    assert min(full.values()) >= 10  # both arms were seen on full lists

    # the interleaving report reads the drafted slots only
    report = client.get("/experiments/inter/report").json()
    assert report["interleaving"]["requests"] == len(USERS)


def test_conflicting_experiments_are_refused_at_creation(serve: MakeClient, trained: Any) -> None:
    client = serve()
    _create(client, INTERLEAVE)
    # an A/B arm choosing the version, in another layer: refused, naming both
    version_ab = {
        "name": "version-ab",
        "layer": "models",
        "variants": [
            {"name": "current", "share": 0.5},
            {"name": "pinned", "share": 0.5, "model_version": trained.version},
        ],
    }
    _refused(client, version_ab, "'version-ab' chooses the model version", "'inter'", "'ranking'")
    # another interleaving in another layer: refused
    _refused(client, {**INTERLEAVE, "name": "inter2", "layer": "other"}, "chooses the model")
    # in one layer they never meet in a request: allowed
    client.post("/experiments/inter/stop")
    _create(client, {**INTERLEAVE, "name": "inter-half", "layer": "pair", "traffic": 0.5})
    _create(client, {**version_ab, "layer": "pair", "traffic": 0.5})
    # a shadow arm's model version chooses nothing: it is never served
    _create(
        client,
        {
            "name": "shadowed",
            "layer": "shadows",
            "variants": [
                {"name": "live", "share": 1.0},
                {"name": "ghost", "share": 0.0, "shadow": True, "model_version": trained.version},
            ],
        },
    )
    # parameters: exploration composes with interleaving; the same parameter twice does not
    _create(client, EXPLORE)
    _refused(
        client,
        {
            "name": "explore-more",
            "layer": "more",
            "variants": [{"name": "five", "share": 1.0, "config": {"exploration_slots": 5}}],
        },
        "'explore-more' sets exploration_slots",
        "running experiment 'explore'",
    )
    # a parameter no other layer sets composes
    _create(
        client,
        {
            "name": "policy",
            "layer": "policy",
            "variants": [{"name": "ucb", "share": 1.0, "config": {"exploration_policy": "ucb1"}}],
        },
    )
    # once the first is stopped, the second may run
    client.post("/experiments/explore/stop")
    _create(
        client,
        {
            "name": "explore-more",
            "layer": "more",
            "variants": [{"name": "five", "share": 1.0, "config": {"exploration_slots": 5}}],
        },
    )
    # config that would never be applied is refused, not silently ignored
    _refused(
        client,
        {
            "name": "ghost-config",
            "layer": "ghosts",
            "variants": [
                {"name": "live", "share": 1.0},
                {"name": "g", "share": 0.0, "shadow": True, "config": {"exploration_slots": 2}},
            ],
        },
        "a shadow arm",
        "would not be applied",
    )
    _refused(
        client,
        {
            "name": "inter-config",
            "layer": "pair",
            "kind": "interleaving",
            "traffic": 0.1,
            "variants": [
                {"name": "A", "share": 0.5, "config": {"exploration_slots": 2}},
                {"name": "B", "share": 0.5},
            ],
        },
        "an arm of an interleaving experiment",
    )
    names = {e["name"] for e in client.get("/experiments").json()}
    assert names == {
        "inter",
        "inter-half",
        "version-ab",
        "shadowed",
        "explore",
        "policy",
        "explore-more",
    }


def test_cli_refuses_a_conflicting_experiment(tmp_path: Path) -> None:
    runner = CliRunner()
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    base = ["--store", store]

    def create(spec: dict[str, Any]) -> Any:
        return runner.invoke(app, ["experiment", "create", json.dumps(spec), *base])

    assert create(INTERLEAVE).exit_code == 0
    refused = create({**INTERLEAVE, "name": "inter2", "layer": "other"})
    assert refused.exit_code == 2
    assert "'inter2' chooses the model version" in refused.output
    assert "'inter'" in refused.output
    assert create(EXPLORE).exit_code == 0  # exploration composes with interleaving
    refused = create({**EXPLORE, "name": "explore2", "layer": "elsewhere"})
    assert refused.exit_code == 2 and "sets exploration_slots" in refused.output
    listed = runner.invoke(app, ["experiment", "list", *base])
    assert "inter2" not in listed.output and "explore2" not in listed.output


def test_a_request_meeting_stored_conflicts_applies_and_logs_only_the_first(
    serve: MakeClient, trained: Any
) -> None:
    client = serve(exploration_policy="thompson")
    service = _service(client)
    _store_directly(
        service,
        [
            {  # chooses the version: applied
                "name": "pinned",
                "layer": "L1",
                "variants": [{"name": "v", "share": 1.0, "model_version": trained.version}],
            },
            {  # chooses the version too, with adaptive allocation: dropped
                "name": "adaptive",
                "layer": "L2",
                "allocation": "thompson",
                "variants": [
                    {"name": "a", "share": 0.5, "model_version": trained.version},
                    {"name": "b", "share": 0.5},
                ],
            },
            {**INTERLEAVE, "layer": "L3"},  # chooses the versions: dropped
            {  # sets exploration_slots: applied
                "name": "three",
                "layer": "L4",
                "variants": [{"name": "x", "share": 1.0, "config": {"exploration_slots": 3}}],
            },
            {  # sets it too: dropped
                "name": "one",
                "layer": "L5",
                "variants": [{"name": "y", "share": 1.0, "config": {"exploration_slots": 1}}],
            },
        ],
    )
    checked = 0
    for user in USERS[:20]:
        body = client.get(f"/recommendations/{user}", params={"n": 8}).json()
        applied = [(a["experiment"], a["arm"]) for a in body["experiments"]]
        assert applied == [("pinned", "v"), ("three", "x")]
        assert sorted(_logged_arms(service, body["request_id"])) == sorted(applied)
        assert all(i["team"] is None for i in body["items"])  # not interleaved
        if len(body["items"]) == 8:
            assert [i["slot"] for i in body["items"]].count("explore") == 3
            checked += 1
    assert checked >= 10
    # the dropped adaptive experiment counted no pull for traffic it never served
    state = service.experiments.allocation("adaptive") or {}
    assert all(arm["requests"] == 0 for arm in state.values())
    report = client.get("/experiments/adaptive/report").json()
    assert report["arms"] == [] and "No impressions" in report["verdict"]


class Gate:
    """Wraps `service.holder.funnel_for`: a shadow's version waits for `release`."""

    def __init__(self, service: Service, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()
        self.timed_out = False
        real = service.holder.funnel_for

        def gated(wanted: str | None) -> Any:
            if wanted != version:
                return real(wanted)
            self.entered.set()
            try:
                if not self.release.wait(GATE_SECONDS):
                    self.timed_out = True
                return real(wanted)
            finally:
                self.finished.set()

        monkeypatch.setattr(service.holder, "funnel_for", gated)


SHADOWED = {
    "name": "shadowed",
    "layer": "shadows",
    "variants": [
        {"name": "live", "share": 1.0},
        {"name": "slow", "share": 0.0, "shadow": True},  # model_version set per test
        {"name": "broken", "share": 0.0, "shadow": True, "model_version": "no-such-version"},
    ],
}


def _shadowed(version: str) -> dict[str, Any]:
    variants = [dict(v) for v in SHADOWED["variants"]]  # type: ignore[union-attr]
    variants[1]["model_version"] = version
    return {**SHADOWED, "variants": variants}


def test_shadows_are_computed_after_the_response_is_sent(
    serve: MakeClient, trained: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serve()
    service = _service(client)
    # "broken" names a version that was never trained (stored without the check):
    # loading it raises
    _store_directly(service, [_shadowed(trained.version)])
    gate = Gate(service, monkeypatch, trained.version)
    user = USERS[2]
    expected = [i.id for i in service.recommend_user(user, 6, log=False).items]

    body = client.get(f"/recommendations/{user}", params={"n": 6}).json()
    # the answer came back while the shadow computation was still blocked
    assert not gate.finished.is_set() and not gate.timed_out
    assert [i["id"] for i in body["items"]] == expected
    assert [(a["experiment"], a["arm"]) for a in body["experiments"]] == [("shadowed", "live")]
    service.impressions.flush()
    assert service.store.get_impression(body["request_id"]) is None  # logged with its shadows

    gate.release.set()
    report = client.get("/experiments/shadowed/report").json()  # waits for pending shadows
    assert gate.finished.is_set() and not gate.timed_out
    logged = service.store.get_impression(body["request_id"])
    assert logged is not None
    assert logged.context["shadows"] == {"shadowed/slow": expected}
    assert logged.context["shadows_failed"] == ["shadowed/broken"]
    by_key = {s["key"]: s for s in report["shadows"]}
    slow, broken = by_key["shadowed/slow"], by_key["shadowed/broken"]
    # the same version as the served arm: the same list
    assert (slow["requests"], slow["failed"], slow["skipped"]) == (1, 0, 0)
    assert slow["mean_overlap"] == 1.0 and slow["novel_share"] == 0.0
    assert (broken["requests"], broken["failed"], broken["mean_overlap"]) == (0, 1, None)
    # the CLI prints the same comparison from the store
    shown = CliRunner().invoke(
        app, ["experiment", "report", "shadowed", "--store", service.settings.store_url]
    )
    assert shown.exit_code == 0, shown.output
    assert "shadows" in shown.output and "overlap@n" in shown.output
    assert "slow" in shown.output and "100.0%" in shown.output and "broken" in shown.output


def test_shadows_behind_are_skipped_not_queued_without_bound(
    serve: MakeClient, trained: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sieve.serve.shadows, "SHADOW_BACKLOG", 1)
    client = serve()
    service = _service(client)
    _store_directly(service, [_shadowed(trained.version)])
    gate = Gate(service, monkeypatch, trained.version)
    first = client.get(f"/recommendations/{USERS[3]}", params={"n": 5}).json()
    second = client.get(f"/recommendations/{USERS[4]}", params={"n": 5}).json()
    service.impressions.flush()
    assert service.store.get_impression(first["request_id"]) is None  # its shadows pending
    logged = service.store.get_impression(second["request_id"])  # logged at once
    assert logged is not None
    assert logged.context["shadows_skipped"] == ["shadowed/slow", "shadowed/broken"]
    assert [(a.experiment, a.arm) for a in logged.arms] == [("shadowed", "live")]
    gate.release.set()
    report = client.get("/experiments/shadowed/report").json()
    slow = next(s for s in report["shadows"] if s["shadow"] == "slow")
    assert (slow["requests"], slow["skipped"]) == (1, 1)
