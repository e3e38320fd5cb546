"""Behaviours that change what is served, each checked against the same
request without it: continuation (a cart comes back, a bought item does
not), user-to-user candidates (similar users' recent items), leaderboards
(configured lists, computed once per interval and shared by every process)."""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.pipeline import Funnel, FunnelConfig
from sieve.settings import Settings
from sieve.storage import open_store
from sieve.training.snapshot import import_data
from sieve.training.train import train
from sieve.types import Query

from .conftest import SYNTH, MakeClient

#: The service tests' funnel with continuation on (ranker off: the blend's
#: weights make the promise testable), and a weight that puts a comeback first.
CONTINUATION_TOML = """
[als]
factors = 16
iterations = 5
num_threads = 1

[sources]
continuation = 10
continuation_decay = 0.9
continuation_stop = ["purchase"]

[sources.continuation_weights]
view = 0.3
cart = 1.0

[ranker]
enabled = false

[blend]
continuation = 5.0
"""


@dataclass(frozen=True)
class Served:
    db: Path
    model_dir: Path


@pytest.fixture(scope="module")
def continuation(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("continuation")
    url = f"sqlite:///{root / 'seed.db'}"
    config = root / "funnel.toml"
    config.write_text(CONTINUATION_TOML)
    settings = Settings(store_url=url, model_dir=root / "models", funnel_config=config)
    with open_store(url) as store:
        import_data(store, load_data(SYNTH))
        train(settings, store)
    return Served(db=root / "seed.db", model_dir=root / "models")


def _ids(client: Any, user: str, n: int = 10) -> list[str]:
    r = client.get(f"/recommendations/{user}", params={"n": n})
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def _send(client: Any, user: str, events: list[tuple[str, str]]) -> None:
    t0 = time.time() - 60
    body = [
        {
            "id": uuid.uuid4().hex,
            "user_id": user,
            "item_id": item,
            "type": kind,
            "timestamp": datetime.fromtimestamp(t0 + k, UTC).isoformat(),
        }
        for k, (item, kind) in enumerate(events)
    ]
    r = client.post("/events", json={"events": body})
    assert r.status_code == 200, r.text


def test_a_cart_comes_back_and_a_bought_item_does_not(
    continuation: Served, serve: MakeClient, make_client: MakeClient, tmp_path: Path
) -> None:
    db = tmp_path / "continuation.db"
    shutil.copy(continuation.db, db)
    on = make_client(store_url=f"sqlite:///{db}", model_dir=continuation.model_dir)
    off = serve()  # the same data and events; the funnel without continuation
    service = on.app.state.service  # type: ignore[attr-defined]
    counts = service.store.events_frame()["user_id"].value_counts()
    user = str(counts[(counts >= 10) & (counts < 60)].index[0])
    before = _ids(on, user, 20)
    # items the user never touched and that are not listed now
    catalog = sorted(service.store.items_frame()["item_id"].astype(str))
    fresh = [i for i in catalog if i not in before]
    history = {e.item_id for e in service.store.user_events(user, 1000)}
    carted, viewed, bought = [i for i in fresh if i not in history][:3]
    events = [(viewed, "view"), (carted, "view"), (carted, "cart"), (bought, "cart")]
    events.append((bought, "purchase"))
    for client in (on, off):
        _send(client, user, events)
    got = on.get(f"/recommendations/{user}", params={"n": 10}).json()["items"]
    ids = [i["id"] for i in got]
    assert carted in ids and viewed in ids, ids
    assert bought not in ids  # bought: never back
    why = {i["id"]: i["explanation"] for i in got}
    assert why[carted] == "still in your cart"
    assert ids.index(carted) < ids.index(viewed)  # a cart outweighs a view
    # without continuation the seen filter keeps all three out
    assert not {carted, viewed, bought} & set(_ids(off, user, 10))


def _grouped() -> Dataset:
    """Two taste groups with disjoint items (a: i0-i19, b: i20-i39); every
    user of group a touched i19 last (their hit) and group b i39."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        group = u % 2
        base = 20 * group
        picks = rng.choice(19, size=8, replace=False) + base
        for k, item in enumerate(picks):
            rows.append((f"u{u}", f"i{item}", 1000.0 + k))
        if u < 40:
            rows.append((f"u{u}", f"i{base + 19}", 5000.0))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    events["event_id"] = [f"e{k}" for k in range(len(events))]
    events["type"] = "click"
    events["value"] = np.nan
    return Dataset.from_frames(events)


def _funnel(user_to_user: int) -> Funnel:
    none = dict.fromkeys(("ann", "item_to_item", "content", "ease", "popular", "trending"), 0)
    config = FunnelConfig.from_dict(
        {
            "sources": {
                **none,
                "fresh": 0,
                "min_candidates": 0,
                "user_to_user": user_to_user,
                "user_neighbours": 10,
                "user_recent_items": 3,
            },
            "als": {"factors": 8, "iterations": 10, "num_threads": 1, "random_state": 0},
            "ranker": {"enabled": False},
        }
    )
    return Funnel(config).fit(_grouped())


def test_user_to_user_proposes_what_similar_users_took_last() -> None:
    on, off = _funnel(user_to_user=20), _funnel(user_to_user=0)
    data = _grouped()
    taken = [int(data.item_index(f"i{k}")) for k in (0, 1, 2, 3)]
    query = Query(
        user_id="new",
        user=-1,
        history=np.array(sorted(taken)),
        history_weights=np.ones(4, np.float32),
        n=10,
    )
    listed = on.recommend_query(query)
    names = [str(data.item_ids[r.item]) for r in listed]
    assert names, "the source proposed nothing"
    assert "i19" in names  # group a's latest hit, from the neighbours' recent items
    assert all(int(n[1:]) < 20 for n in names), names  # only the similar group's items
    assert not {"i0", "i1", "i2", "i3"} & set(names)  # seen stays filtered
    assert all("user_to_user" in r.sources for r in listed)
    # the source off: no candidate at all, the list is the popular backfill
    assert all(not r.sources for r in off.recommend_query(query))


BOARDS = {
    "bought": {"kind": "most_bought", "days": 1},
    "bought_shoes": {"kind": "most_bought", "days": 1, "category": "shoes"},
    "rated": {"kind": "top_rated", "days": 0, "prior_ratings": 5},
    "newest_shoes": {"kind": "newest", "category": "shoes", "n": 2},
}


def _catalog(client: Any) -> None:
    items = [
        {
            "id": f"s{k}",
            "title": f"shoe {k}",
            "categories": ["shoes"] if k < 3 else ["hats"],
            "created_at": datetime.fromtimestamp(1_700_000_000 + 1000 * k, UTC).isoformat(),
        }
        for k in range(5)
    ]
    assert client.post("/items/bulk", json={"items": items}).status_code == 200


def _events(client: Any, rows: list[tuple[str, str, float | None, float]]) -> None:
    body = [
        {
            "id": uuid.uuid4().hex,
            "user_id": f"buyer{k}",
            "item_id": item,
            "type": kind,
            **({"value": value} if value is not None else {}),
            "timestamp": datetime.fromtimestamp(t, UTC).isoformat(),
        }
        for k, (item, kind, value, t) in enumerate(rows)
    ]
    r = client.post("/events", json={"events": body})
    assert r.status_code == 200, r.text


def test_leaderboards_are_configured_lists_computed_once_per_interval(
    make_client: MakeClient,
) -> None:
    client = make_client(leaderboards=BOARDS, leaderboard_refresh_seconds=60)
    _catalog(client)
    now = time.time()
    old = now - 3 * 86400  # outside the one-day window
    _events(
        client,
        [("s3", "purchase", None, now - 60)] * 3
        + [("s1", "purchase", None, now - 60)] * 2
        + [("s0", "purchase", None, now - 60)]
        + [("s0", "purchase", None, old)] * 5
        # s0: two 5s; s1: twenty 4.5s (mean 4.12 overall, prior 5): the many beat
        # the few, where a plain mean would put s0 first
        + [("s0", "rating", 5.0, old)] * 2
        + [("s1", "rating", 4.5, old)] * 20
        + [("s2", "rating", 1.0, old)] * 3,
    )

    def board(name: str, **params: Any) -> dict[str, Any]:
        r = client.get(f"/leaderboards/{name}", params=params)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    assert [(i["id"], i["count"]) for i in board("bought")["items"]] == [
        ("s3", 3),
        ("s1", 2),
        ("s0", 1),
    ]
    assert [i["id"] for i in board("bought_shoes")["items"]] == ["s1", "s0"]
    rated = board("rated")["items"]
    assert [i["id"] for i in rated] == ["s1", "s0", "s2"]
    mean = (10 + 90 + 3) / 25
    assert rated[1]["score"] == pytest.approx((5 * mean + 10) / 7)
    newest = board("newest_shoes")
    assert [i["id"] for i in newest["items"]] == ["s2", "s1"] and newest["items"][0]["title"]
    assert [i["id"] for i in board("bought", n=1)["items"]] == ["s3"]

    # cached: new purchases show once the refresh interval has passed
    first = board("bought")
    _events(client, [("s0", "purchase", None, now - 30)] * 4)
    assert board("bought") == first
    service = client.app.state.service  # type: ignore[attr-defined]
    service.leaderboards.clock = lambda: now + 61
    assert board("bought")["items"][0]["id"] == "s0"

    missing = client.get("/leaderboards/nope")
    assert missing.status_code == 404 and "bought_shoes" in missing.text
    assert client.get("/leaderboards/bought", params={"n": 5000}).status_code == 422
    assert set(client.get("/leaderboards").json()) == set(BOARDS)


def test_a_leaderboard_is_shared_by_every_server_process(
    make_client: MakeClient, tmp_path: Path, redis_url: str
) -> None:
    """Two processes on one store and one Redis: the second serves the board
    the first computed (same computation time), not one of its own."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    a = make_client(store_url=db, cache_url=redis_url, leaderboards=BOARDS)
    b = make_client(store_url=db, cache_url=redis_url, leaderboards=BOARDS)
    _catalog(a)
    _events(a, [("s4", "purchase", None, time.time() - 10)])
    first = a.get("/leaderboards/bought").json()
    assert [i["id"] for i in first["items"]] == ["s4"]
    assert b.get("/leaderboards/bought").json()["computed_at"] == first["computed_at"]


def test_leaderboard_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        Settings(leaderboards={"x": {"kind": "loudest"}})
    with pytest.raises(ValueError, match="names must be"):
        Settings(leaderboards={"Bad Name": {"kind": "newest"}})
