"""The Dataset snapshot: vocabularies, weights, ratings, timestamps, subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sieve.data.dataset import Dataset
from sieve.data.schema import EventWeights, UnknownIdError


def _events(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [str(i) for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "type": [r[2] for r in rows],
            "value": [r[3] for r in rows],
            "timestamp": [r[4] for r in rows],
        }
    )


@pytest.fixture
def ds() -> Dataset:
    ev = _events(
        [
            ("u1", "a", "view", np.nan, 1.0),
            ("u1", "a", "click", np.nan, 2.0),
            ("u1", "b", "purchase", np.nan, 3.0),
            ("u2", "a", "rating", 4.0, 4.0),
            ("u2", "a", "rating", 2.0, 5.0),  # a later rating replaces the earlier one
            ("u2", "c", "rating", 5.0, 6.0),
        ]
    )
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["A", "B", "C", "D"],
            "categories": [["x"], ["y"], ["x", "y"], []],
        }
    )
    return Dataset.from_frames(ev, items)


def test_vocabularies_cover_catalog_and_events(ds: Dataset) -> None:
    assert list(ds.user_ids) == ["u1", "u2"]
    # item "d" has no events but is in the catalog: it keeps a column
    assert list(ds.item_ids) == ["a", "b", "c", "d"]
    assert ds.matrix.shape == (2, 4)
    assert ds.items.loc[ds.item_index("d"), "title"] == "D"


def test_event_weights_are_summed(ds: Dataset) -> None:
    w = EventWeights().weights
    u1, a, b = ds.user_index("u1"), ds.item_index("a"), ds.item_index("b")
    assert ds.matrix[u1, a] == pytest.approx(w["view"] + w["click"])
    assert ds.matrix[u1, b] == pytest.approx(w["purchase"])


def test_latest_rating_and_time_are_kept(ds: Dataset) -> None:
    assert ds.ratings is not None
    u2, a, c = ds.user_index("u2"), ds.item_index("a"), ds.item_index("c")
    assert ds.ratings[u2, a] == 2.0
    assert ds.ratings[u2, c] == 5.0
    assert ds.last_time[u2, a] == 5.0
    assert ds.last_time[ds.user_index("u1"), a] == 2.0


def test_min_rating_drops_low_ratings_from_positives() -> None:
    ev = _events([("u", "a", "rating", 2.0, 1.0), ("u", "b", "rating", 5.0, 2.0)])
    ds = Dataset.from_frames(ev, weights=EventWeights(min_rating=4.0))
    assert ds.matrix[0, ds.item_index("a")] == 0
    assert ds.matrix[0, ds.item_index("b")] == 1
    assert ds.ratings is not None and ds.ratings[0, ds.item_index("a")] == 2.0


def test_unknown_ids_and_types_are_named(ds: Dataset) -> None:
    with pytest.raises(UnknownIdError, match="unknown user id 'nobody'"):
        ds.user_index("nobody")
    with pytest.raises(UnknownIdError, match="unknown item id 'zz'"):
        ds.item_index("zz")
    with pytest.raises(ValueError, match=r"unknown event type\(s\) \['like'\]"):
        Dataset.from_frames(_events([("u", "a", "like", np.nan, 1.0)]))
    with pytest.raises(UnknownIdError, match="unknown item id 'q'"):
        Dataset.from_frames(
            _events([("u1", "q", "click", np.nan, 1.0)]),
            user_ids=ds.user_ids,
            item_ids=ds.item_ids,
        )


def test_subset_keeps_vocabularies(ds: Dataset) -> None:
    sub = ds.subset(ds.events["user_id"].to_numpy() == "u2")
    assert sub.matrix.shape == ds.matrix.shape
    assert sub.matrix[ds.user_index("u1")].nnz == 0
    assert sub.matrix[ds.user_index("u2")].nnz == 2
    assert sub.item_categories()[ds.item_index("c")] == ["x", "y"]


def test_ids_are_read_only(ds: Dataset) -> None:
    with pytest.raises(ValueError):
        ds.user_ids[0] = "other"


def test_items_gone_from_the_catalog_are_kept_unavailable() -> None:
    """Events of items no longer in the catalog still train (one row each,
    unavailable, without content); `sieve train` and Spark share this."""
    import numpy as np
    import pandas as pd

    from sieve.training.snapshot import with_unlisted_items

    items = pd.DataFrame(
        {
            "item_id": ["a"],
            "title": ["A"],
            "text": [""],
            "categories": [["x"]],
            "created_at": [1.0],
            "attributes": [{}],
            "available": [True],
        }
    )
    assert with_unlisted_items(items, ["a", "a"]) is items
    out = with_unlisted_items(items, ["c", "a", "b"])
    assert list(out["item_id"]) == ["a", "b", "c"]
    assert list(out["available"]) == [True, False, False]
    assert list(out["categories"]) == [["x"], [], []]
    assert np.isnan(out["created_at"].iloc[1]) and out["title"].iloc[2] == ""
