"""Experiments in the store, on SQLite and PostgreSQL: definitions, status,
and the per-experiment join of impressions, arms and the events citing them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy.exc

from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem, Item
from sieve.experiments.assignment import Experiment
from sieve.experiments.online import ExperimentRecord
from sieve.experiments.report import experiment_report, unit_frame
from sieve.storage import StoreError
from sieve.storage.sql import SQLStore

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _definition(name: str) -> dict[str, object]:
    return {
        "name": name,
        "layer": "default",
        "salt": f"exp:{name}",
        "variants": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}],
    }


def test_definitions_keep_order_and_status(store: SQLStore) -> None:
    store.add_experiment(_definition("first"), "running", T0)
    store.add_experiment(_definition("second"), "running", T0 + timedelta(seconds=1))
    with pytest.raises((StoreError, sqlalchemy.exc.IntegrityError)):
        store.add_experiment(_definition("first"), "running", T0)
    assert store.set_experiment_status("first", "stopped", T0 + timedelta(hours=1))
    assert not store.set_experiment_status("missing", "stopped", T0)
    rows = store.experiments()
    assert [r["definition"]["name"] for r in rows] == ["first", "second"]
    assert rows[0]["status"] == "stopped"
    assert rows[0]["stopped_at"] == pytest.approx((T0 + timedelta(hours=1)).timestamp())
    assert rows[1]["status"] == "running" and rows[1]["stopped_at"] is None
    assert rows[1]["definition"]["variants"][1] == {"name": "B", "share": 0.5}


def test_experiment_frames_join_arms_slots_and_citing_events(store: SQLStore) -> None:
    store.upsert_items([Item(id=i) for i in "abcd"])

    def imp(rid: str, user: str, items: str, arms: list[tuple[str, str]]) -> Impression:
        return Impression(
            request_id=rid,
            user_id=user,
            timestamp=T0,
            model_version="v1",
            experiment=arms[0][0] if arms else None,
            arm=arms[0][1] if arms else None,
            items=[
                ImpressionItem(item_id=i, position=p, score=1.0, propensity=0.5 if p else 1.0)
                for p, i in enumerate(items)
            ],
            arms=[ImpressionArm(experiment=e, arm=a, propensity=0.8) for e, a in arms],
        )

    store.log_impressions(
        [
            imp("r1", "u1", "ab", [("exp", "A"), ("other", "X")]),
            imp("r2", "u2", "cd", [("exp", "B")]),
            imp("r3", "u3", "ad", []),  # in no experiment
            imp("r4", "u4", "", [("exp", "B")]),  # an empty list still counts
        ]
    )
    back = store.get_impression("r1")
    assert back is not None
    assert [(a.experiment, a.arm, a.propensity) for a in back.arms] == [
        ("exp", "A", 0.8),
        ("other", "X", 0.8),
    ]
    store.append_events(
        [
            Event(id="e1", user_id="u1", item_id="b", type="click", request_id="r1"),
            Event(id="e2", user_id="u2", item_id="c", type="purchase", value=9.5, request_id="r2"),
            Event(id="e3", user_id="u3", item_id="a", type="click", request_id="r3"),
        ]
    )
    slots, events = store.experiment_frames("exp")
    items = [None if pd.isna(i) else i for i in slots["item_id"]]
    assert list(zip(slots["request_id"], slots["arm"], items, strict=True)) == [
        ("r1", "A", "a"),
        ("r1", "A", "b"),
        ("r2", "B", "c"),
        ("r2", "B", "d"),
        ("r4", "B", None),
    ]
    assert slots["arm_propensity"].tolist() == [0.8] * 5
    assert slots["propensity"].tolist()[:4] == [1.0, 0.5, 1.0, 0.5]
    units = unit_frame(slots, events).set_index("unit")
    assert units.loc["u4", ["impressions", "requests", "clicks"]].tolist() == [0, 1, 0]
    assert units.loc["u2", ["impressions", "requests", "conversions", "revenue"]].tolist() == [
        2,
        1,
        1,
        9.5,
    ]
    assert sorted(events["request_id"]) == ["r1", "r2"]  # r3 was in no experiment
    assert events.set_index("request_id").loc["r2", "value"] == 9.5
    other, _ = store.experiment_frames("other")
    assert other["request_id"].unique().tolist() == ["r1"]


def test_report_compares_each_shadow_with_the_served_list(store: SQLStore) -> None:
    """Known answers: requests compared, overlap@n, the shadow's unshown items and
    the served list's CTR on the items both showed vs the rest, read from the
    experiment's own impressions (`experiment_contexts`)."""
    store.upsert_items([Item(id=i) for i in "abcdef"])
    exp = Experiment.from_dict(
        {
            "name": "shadowed",
            "layer": "default",
            "salt": "exp:shadowed",
            "variants": [
                {"name": "live", "share": 0.5},
                {"name": "other", "share": 0.5},
                {"name": "ghost", "share": 0.0, "shadow": True, "model_version": "v2"},
            ],
        }
    )
    key = "shadowed/ghost"

    def imp(rid: str, arm: str, items: str, context: dict[str, object]) -> Impression:
        return Impression(
            request_id=rid,
            user_id=f"user-{rid}",
            timestamp=T0,
            model_version="v1",
            experiment="shadowed",
            arm=arm,
            context=context,
            items=[ImpressionItem(item_id=i, position=p, score=1.0) for p, i in enumerate(items)],
            arms=[ImpressionArm(experiment="shadowed", arm=arm)],
        )

    store.log_impressions(
        [
            imp("r1", "live", "abcd", {"shadows": {key: list("abef")}}),  # overlap 2/4
            imp("r2", "live", "ab", {"shadows": {key: list("ba")}}),  # overlap 1 (any order)
            imp("r3", "live", "cd", {"shadows": {}, "shadows_failed": [key]}),
            imp("r4", "live", "cd", {"shadows_skipped": [key]}),
            imp("r5", "live", "", {"shadows": {key: ["a"]}}),  # nothing served: not compared
            imp("r6", "other", "a", {"shadows": {key: ["a"]}}),  # overlap 1
            imp("r7", "live", "ab", {"hour": 3}),  # logged without shadows
        ]
    )
    store.append_events(
        [
            Event(id="e1", user_id="user-r1", item_id="a", type="click", request_id="r1"),
            Event(id="e2", user_id="user-r1", item_id="a", type="click", request_id="r1"),
            Event(id="e3", user_id="user-r1", item_id="c", type="click", request_id="r1"),
            Event(id="e4", user_id="user-r1", item_id="d", type="purchase", request_id="r1"),
            Event(id="e5", user_id="user-r1", item_id="e", type="click", request_id="r1"),
        ]
    )
    contexts = store.experiment_contexts("shadowed")
    assert contexts["request_id"].tolist() == [f"r{k}" for k in range(1, 8)]
    assert contexts.set_index("request_id").loc["r7", "context"] == {"hour": 3}
    assert store.experiment_contexts("nope").empty

    record = ExperimentRecord(exp, created_at=T0.timestamp())
    (ghost,) = experiment_report(store, record)["shadows"]
    assert ghost["shadow"] == "ghost" and ghost["key"] == key and ghost["model_version"] == "v2"
    assert (ghost["requests"], ghost["failed"], ghost["skipped"]) == (3, 1, 1)
    assert ghost["mean_overlap"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert ghost["novel_share"] == pytest.approx(2 / 7)  # e and f of r1's 4, r2's 2, r6's 1
    # shared slots r1:a,b r2:a,b r6:a (one clicked: r1 a, twice); served only r1:c,d (c clicked)
    assert (ghost["shared_slots"], ghost["served_only_slots"]) == (5, 2)
    assert ghost["ctr_shared"] == pytest.approx(1 / 5)
    assert ghost["ctr_served_only"] == pytest.approx(1 / 2)
    assert ghost["by_arm"] == {
        "live": {"requests": 2, "mean_overlap": pytest.approx(0.75)},
        "other": {"requests": 1, "mean_overlap": pytest.approx(1.0)},
    }
