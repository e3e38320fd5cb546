"""`POST /rank` and attribute features in serving, on a funnel trained with
attribute features declared: a caller's list comes back in the ranker's
order with the rest reported, the user's stored attributes change what is
served, `explain=true` returns feature contributions, request fields become
features, and every answer is logged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sieve.data.io import load_data
from sieve.pipeline import featurize
from sieve.ranking.features import feature_names
from sieve.serve.service import Service
from sieve.settings import Settings
from sieve.storage import open_store
from sieve.training.snapshot import import_data
from sieve.training.train import train

from .conftest import FUNNEL_TOML, SYNTH, Trained

MakeClient = Callable[..., TestClient]
USER = "u001"
ATTRIBUTES = """
[attributes]
matches = ["categories:favourite_categories"]
item_numeric = ["price"]
request_numeric = ["text_match"]
"""
MATCH = "attr_match_categories_in_favourite_categories"


@pytest.fixture(scope="module")
def attr_trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A store of synthetic data and a funnel trained with attribute features."""
    root = tmp_path_factory.mktemp("attr_trained")
    db = root / "seed.db"
    raw = load_data(SYNTH)
    funnel_config = root / "funnel.toml"
    funnel_config.write_text(FUNNEL_TOML + ATTRIBUTES)
    settings = Settings(
        store_url=f"sqlite:///{db}", model_dir=root / "models", funnel_config=funnel_config
    )
    with open_store(settings.store_url) as store:
        import_data(store, raw)
        funnel, _ = train(settings, store)
    return Trained(db, root / "models", funnel_config, str(funnel.version), raw)


@pytest.fixture
def client(attr_trained: Trained, tmp_path: Path, make_client: MakeClient) -> TestClient:
    db = tmp_path / "served.db"
    shutil.copy(attr_trained.db, db)
    return make_client(store_url=f"sqlite:///{db}", model_dir=attr_trained.model_dir)


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _by_category(service: Service) -> dict[str, list[str]]:
    """Single-category items of the served catalog, by category."""
    cat = service.funnel.state.engine.catalog
    out: dict[str, list[str]] = {}
    for i in range(cat.n_items):
        names = cat.categories_of(i)
        if len(names) == 1:
            out.setdefault(names[0], []).append(str(cat.item_ids[i]))
    return out


def test_the_callers_list_comes_back_in_the_rankers_order(client: TestClient) -> None:
    service = _service(client)
    assert MATCH in service.funnel.state.ranker.feature_names  # saved and loaded with it
    ids = [f"i{k:03d}" for k in range(100, 112)]
    assert client.delete(f"/items/{ids[3]}").status_code == 204  # now unavailable
    body = {"user_id": USER, "items": [{"id": i} for i in [*ids, "no-such-item"]]}
    response = client.post("/rank", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    ranked = [i["id"] for i in out["items"]]
    assert sorted(ranked) == sorted(set(ids) - {ids[3]})
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert ranked != [i for i in ids if i != ids[3]]  # re-ranked, not echoed
    assert out["unranked"] == [
        {"id": ids[3], "reason": "not available"},
        {"id": "no-such-item", "reason": "unknown item id"},
    ]
    assert all("contributions" not in i for i in out["items"])
    # the same order as the funnel's own ranker on these items
    funnel = service.funnel
    query = service.live.user_query(funnel, USER, len(ranked))
    indices = np.array([funnel.item_index(i) for i in ids if i != ids[3]])
    direct = [str(funnel.item_ids[r.item]) for r in funnel.rank_items(query, indices)]
    assert ranked == direct
    # logged like every served list
    service.flush_impressions()
    logged = service.store.get_impression(out["request_id"])
    assert logged is not None and [s.item_id for s in logged.items] == ranked
    assert logged.context.get("rank") is True


def test_the_users_favourites_change_what_is_ranked_first(client: TestClient) -> None:
    service = _service(client)
    own = set(client.get(f"/users/{USER}").json()["attributes"]["favourite_categories"])
    groups = sorted(
        ((c, i) for c, i in _by_category(service).items() if c not in own),
        key=lambda kv: -len(kv[1]),
    )
    (cat_a, items_a), (cat_b, items_b) = groups[0], groups[1]  # neither one of the user's
    mixed = [x for pair in zip(items_a[:8], items_b[:8], strict=True) for x in pair]

    def mean_position_of_a(favourite: str) -> float:
        patch = {"attributes": {"favourite_categories": [favourite]}}
        assert client.patch(f"/users/{USER}", json=patch).status_code == 200
        out = client.post("/rank", json={"user_id": USER, "items": [{"id": i} for i in mixed]})
        ranked = [i["id"] for i in out.json()["items"]]
        return float(np.mean([ranked.index(i) for i in items_a[:8]]))

    assert mean_position_of_a(cat_a) < mean_position_of_a(cat_b) - 2.0
    # and the lists served to the user follow their favourites too
    shares = {}
    for favourite in (cat_a, cat_b):
        patch = {"attributes": {"favourite_categories": [favourite]}}
        client.patch(f"/users/{USER}", json=patch)
        items = client.get(f"/recommendations/{USER}", params={"n": 10}).json()["items"]
        shares[favourite] = sum(cat_a in i["categories"] for i in items)
    assert shares[cat_a] > shares[cat_b]


def test_explain_returns_each_items_top_contributions(client: TestClient) -> None:
    body = {"user_id": USER, "items": [{"id": f"i{k:03d}"} for k in range(20, 30)], "explain": True}
    for items in (
        client.post("/rank", json=body).json()["items"],
        client.get(f"/recommendations/{USER}", params={"explain": True}).json()["items"],
    ):
        for item in items:
            contributions = item["contributions"]
            assert 1 <= len(contributions) <= 5
            values = [abs(c["value"]) for c in contributions]
            assert values == sorted(values, reverse=True)
        named = {c["feature"] for i in items for c in i["contributions"]}
        assert named <= {*feature_names(_service(client).funnel.state.attributes), "base_score"}
    plain = client.get(f"/recommendations/{USER}").json()["items"]
    assert all("contributions" not in i for i in plain)


def test_declared_request_fields_are_features_and_others_are_reported(
    client: TestClient,
) -> None:
    service = _service(client)
    items = [{"id": "i010", "fields": {"text_match": 0.9, "bm25": 3.0}}, {"id": "i011"}]
    out = client.post("/rank", json={"user_id": USER, "items": items}).json()
    assert out["ignored_fields"] == ["bm25"]
    # the feature path the ranker scored them with sees the caller's number
    funnel = service.funnel
    at = {funnel.item_index("i010"): {"text_match": 0.9}}
    query = funnel.query([("i001", "click")], USER, item_fields=at)
    wanted = np.array([funnel.item_index("i010"), funnel.item_index("i011")])
    _, cands, x = featurize(
        funnel.state.engine, query, None, attributes=funnel.state.attributes, items=wanted
    )
    assert x is not None and cands.items.tolist() == wanted.tolist()
    column = x[:, feature_names(funnel.state.attributes).index("request_text_match")]
    assert column[0] == pytest.approx(0.9) and np.isnan(column[1])


def test_the_live_query_carries_the_stored_attributes(
    client: TestClient, attr_trained: Trained
) -> None:
    """Offline queries read the snapshot's user attributes, live ones the
    store's: the same values, through the same builder."""
    service = _service(client)
    funnel = service.funnel
    live = service.live.user_query(funnel, USER, 10)
    users = attr_trained.raw.users.set_index("user_id")["attributes"]
    assert dict(live.user_attributes) == users[USER]


BAD = [
    ({"items": []}, "items"),
    ({"items": [{"id": f"x{k}"} for k in range(1001)]}, "items"),
    ({"items": [{"id": "i001"}, {"id": "i002"}, {"id": "i001"}]}, "listed twice"),
    ({"items": [{"id": "i001", "fields": {"text_match": "high"}}]}, "text_match"),
    ({"items": [{"id": "i001"}], "colour": "red"}, "colour"),
]


def test_bad_input_is_422_naming_it(client: TestClient) -> None:
    for body, where in BAD:
        response = client.post("/rank", json=body)
        assert response.status_code == 422, response.text
        assert where in response.text


def test_rank_needs_a_read_key(client: TestClient, headers: dict[str, Any]) -> None:
    body = {"items": [{"id": "i001"}]}
    assert client.post("/rank", json=body, headers={"Authorization": ""}).status_code == 401
    anonymous = client.post("/rank", json=body, headers=headers["read"])
    assert anonymous.status_code == 200 and anonymous.json()["user_id"] is None
