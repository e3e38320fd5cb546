"""The impression log on SQLite and PostgreSQL: idempotent logging, read-back,
attribution of a click to the latest impression within a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sieve.data.records import Impression, ImpressionItem
from sieve.storage.sql import SQLStore
from sieve.storage.sql_impressions import IMPRESSION_COLUMNS

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _imp(rid: str, user: str, items: list[str], at: datetime, arm: str | None = None) -> Impression:
    return Impression(
        request_id=rid,
        user_id=user,
        timestamp=at,
        model_version="v1",
        experiment="exp" if arm else None,
        arm=arm,
        context={"device": "mobile"},
        items=[
            ImpressionItem(
                item_id=i,
                position=p,
                score=1.0 / (p + 1),
                sources=["ann"],
                propensity=0.5 if p == 0 else 1.0,
            )
            for p, i in enumerate(items)
        ],
    )


def test_log_is_idempotent_and_reads_back(store: SQLStore) -> None:
    first = _imp("r1", "u1", ["a", "b", "c"], T0, arm="B")
    assert store.log_impressions([first, first]) == 1
    assert store.log_impressions([first]) == 0
    back = store.get_impression("r1")
    assert back is not None
    assert [(x.item_id, x.position, x.propensity) for x in back.items] == [
        ("a", 0, 0.5),
        ("b", 1, 1.0),
        ("c", 2, 1.0),
    ]
    assert [(x.score, x.sources) for x in back.items] == [
        (1.0, ["ann"]),
        (0.5, ["ann"]),
        (1 / 3, ["ann"]),
    ]
    assert back.arm == "B" and back.context == {"device": "mobile"}
    assert back.timestamp == T0
    assert store.get_impression("nope") is None
    # a batch written together: an anonymous list, a new one and one already stored
    anonymous = _imp("r2", "u2", ["d"], T0).model_copy(update={"user_id": None, "context": {}})
    assert store.log_impressions([anonymous, _imp("r3", "u3", ["e", "f"], T0), first]) == 2
    back = store.get_impression("r2")
    assert back is not None and back.user_id is None and back.context == {}
    assert [x.item_id for x in store.get_impression("r3").items] == ["e", "f"]  # type: ignore[union-attr]


def test_frame_has_one_row_per_slot(store: SQLStore) -> None:
    store.log_impressions([_imp("r1", "u1", ["a", "b"], T0), _imp("r2", "u2", ["c"], T0)])
    frame = store.impressions_frame()
    assert list(frame.columns) == IMPRESSION_COLUMNS
    assert len(frame) == 3
    assert frame["timestamp"].iloc[0] == pytest.approx(T0.timestamp())
    assert store.impressions_frame(since=T0.timestamp() + 1).empty


def test_attribution_picks_latest_impression_within_window(store: SQLStore) -> None:
    store.log_impressions(
        [
            _imp("old", "u1", ["a", "b"], T0),
            _imp("new", "u1", ["x", "a"], T0 + timedelta(minutes=10)),
            _imp("other-user", "u2", ["a"], T0 + timedelta(minutes=11)),
        ]
    )
    at = T0 + timedelta(minutes=12)
    assert store.attribute("u1", "a", at, window_seconds=3600) == "new"
    assert store.attribute("u1", "b", at, window_seconds=3600) == "old"
    # outside the window, or an item never shown to that user: no attribution
    assert store.attribute("u1", "b", at, window_seconds=60) is None
    assert store.attribute("u1", "zzz", at, window_seconds=3600) is None
    # an impression after the click cannot explain it
    assert store.attribute("u1", "x", T0 + timedelta(minutes=5), window_seconds=3600) is None


def test_a_batch_attributes_each_click_within_its_own_window(store: SQLStore) -> None:
    """One lookup for many clicks: each gets the latest impression of its item
    to its user within its own window (same pair, different times; a tie in
    time goes to the larger request id), as one `attribute` call each."""
    store.log_impressions(
        [
            _imp("r1", "u1", ["a", "b"], T0),
            _imp("r3", "u1", ["a"], T0 + timedelta(minutes=10)),
            _imp("r2", "u1", ["a"], T0 + timedelta(minutes=10)),
            _imp("r4", "u2", ["a"], T0 + timedelta(minutes=20)),
        ]
    )
    clicks = [
        ("u1", "a", T0 + timedelta(minutes=5)),  # only r1 shown yet
        ("u1", "a", T0 + timedelta(minutes=12)),  # r2 and r3 at once: r3
        ("u1", "b", T0 + timedelta(minutes=12)),
        ("u1", "b", T0 + timedelta(minutes=40)),  # r1 left the 30-minute window
        ("u2", "a", T0 + timedelta(minutes=19)),  # before u2 was shown it
        ("u2", "a", T0 + timedelta(minutes=21)),
        ("u3", "a", T0 + timedelta(minutes=21)),  # never shown
    ]
    got = store.attribute_many(clicks, window_seconds=1800)
    assert got == ["r1", "r3", "r1", None, None, "r4", None]
    assert got == [store.attribute(u, i, at, window_seconds=1800) for u, i, at in clicks]
