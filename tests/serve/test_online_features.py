"""The served ranker reads the service's live online counters, seeded once from
the stored log (so they agree with the log replayed, as training computes
them), and a retrain can learn from the impressions the service logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sieve.data.schema import UnknownIdError
from sieve.ranking.logged import LoggedData, slot_labels
from sieve.realtime.counters import OnlineCounters
from sieve.serve.service import Service
from sieve.settings import Settings
from sieve.training.worker import Retrainer, RetrainPolicy

MakeClient = Callable[..., TestClient]
USERS = ("u001", "u002", "u150")


def _engine(client: TestClient) -> Service:
    engine: Service = client.app.state.service  # type: ignore[attr-defined]
    return engine


@pytest.mark.parametrize("cache", ["memory", "redis"])
def test_live_counters_are_the_log_replayed_and_the_ranker_reads_them(
    serve: MakeClient, request: pytest.FixtureRequest, cache: str
) -> None:
    overrides: dict[str, Any] = {}
    if cache == "redis":
        overrides["cache_url"] = request.getfixturevalue("redis_url")
    engine = _engine(serve(**overrides))
    engine.flush_counters()  # seeding runs on the counters' thread
    funnel = engine.funnel
    assert funnel.online is engine.counters

    def categories(item_id: str) -> list[str]:
        try:
            return funnel.item_categories(funnel.item_index(item_id))
        except UnknownIdError:
            return []

    replayed = OnlineCounters.replay(engine.store.events_frame(), categories)
    now = time.time()
    items = [str(i) for i in funnel.item_ids]
    live, offline = engine.counters.item_features(items, now), replayed.item_features(items, now)
    for key in live:
        np.testing.assert_allclose(live[key], offline[key], rtol=1e-9, err_msg=key)
    assert (live["view@7d"] > 0).any() or np.isfinite(live["recency_hours"]).all()
    for user in USERS:
        assert engine.counters.user_features(user, now) == pytest.approx(
            replayed.user_features(user, now)
        )
    if cache == "redis":  # a second service on the same Redis does not fold the log again
        other = _engine(serve(**overrides))
        other.flush_counters()
        for user in USERS:
            assert other.counters.user_features(user, now) == pytest.approx(
                replayed.user_features(user, now)
            )


def _count_logged_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of query groups of every logged training set built."""
    import sieve.pipeline.training

    built: list[int] = []
    real = sieve.pipeline.training.logged_training_set

    def spy(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        built.append(data.n_groups)
        return data

    monkeypatch.setattr(sieve.pipeline.training, "logged_training_set", spy)
    return built


def test_a_retrain_learns_from_logged_impressions(
    serve: MakeClient, trained: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lists served and clicked become query groups of the candidate's ranker
    (`train_on = "both"`) when `sieve worker` retrains."""
    # later traffic is stamped an hour ahead of the clock: allow it
    client = serve(max_future_skew_seconds=7200.0)
    engine = _engine(client)
    users = [f"u{n:03d}" for n in range(1, 60)]
    clicks = []
    for k, user in enumerate(users):
        listed = client.get(f"/recommendations/{user}", params={"n": 5}).json()
        clicks.append(
            {
                "id": f"oc{k}",
                "user_id": user,
                "item_id": listed["items"][k % 5]["id"],
                "type": "click",
                "request_id": listed["request_id"],
            }
        )
    assert client.post("/events", json={"events": clicks}).status_code in (200, 201)
    engine.impressions.flush()
    logged = LoggedData.from_store(engine.store)
    assert slot_labels(logged.impressions, logged.feedback).sum() == len(clicks)
    # later traffic: the worker's holdout (its newest tenth), so the lists are in training
    later = time.time() + 3600.0
    items = [str(i) for i in trained.raw.items["item_id"]]
    views = [
        {
            "id": f"later{k}",
            "user_id": users[k % len(users)],
            "item_id": items[(7 * k) % len(items)],
            "type": "view",
            "timestamp": later + k,
        }
        for k in range(1500)
    ]
    assert client.post("/events", json={"events": views}).status_code in (200, 201)

    built = _count_logged_groups(monkeypatch)
    config = tmp_path / "funnel.toml"
    config.write_text(
        trained.funnel_config.read_text().replace("[ranker]", '[ranker]\ntrain_on = "both"')
    )
    settings = Settings(
        store_url=engine.settings.store_url, model_dir=tmp_path / "models", funnel_config=config
    )
    decision = Retrainer(settings, RetrainPolicy(max_users=100)).run_once("test")
    assert built and built[0] >= 40  # the clicked lists (users with earlier events)
    assert decision.candidate_score > 0


def test_sieve_train_learns_from_logged_impressions(
    serve: MakeClient, trained: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sieve train` (engine.train) hands the store's logged lists and their
    clicks to a ranker configured with `train_on = "impressions"`."""
    client = serve()
    engine = _engine(client)
    clicks = []
    for k, user in enumerate(f"u{n:03d}" for n in range(1, 40)):
        listed = client.get(f"/recommendations/{user}", params={"n": 5}).json()
        clicks.append(
            {
                "id": f"tc{k}",
                "user_id": user,
                "item_id": listed["items"][0]["id"],
                "type": "click",
                "request_id": listed["request_id"],
            }
        )
    assert client.post("/events", json={"events": clicks}).status_code == 200
    engine.impressions.flush()

    from sieve.training.train import train

    built = _count_logged_groups(monkeypatch)
    config = tmp_path / "funnel.toml"
    config.write_text(
        trained.funnel_config.read_text().replace("[ranker]", '[ranker]\ntrain_on = "impressions"')
    )
    settings = Settings(
        store_url=engine.settings.store_url, model_dir=tmp_path / "models", funnel_config=config
    )
    funnel, _ = train(settings, promote=False)
    assert built and built[0] >= 30  # the clicked lists became query groups
    assert funnel.state.ranker is not None
