"""One cold-start path: a user the funnel knows but who has no events is
served exactly as an unknown user (the charts), and offline evaluation lists
for a cold test user what the live path lists for them."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.split import temporal_split
from sieve.evaluate.protocol import _SplitContext
from sieve.pipeline import Funnel, FunnelConfig
from sieve.types import Query

SPEC = "synthetic:users=300,items=200,seed=1"
SINGLE_THREADED = {
    "als": {"num_threads": 1},
    "itemknn": {"num_threads": 1},
    "ranker": {"num_threads": 1},
}
#: the user whose events are removed: known to the model, no training row
EMPTY_USER = 7
#: the sources that read a user's interactions (never in a cold answer)
PERSONAL = {"ann", "item_to_item", "content", "ease"}


@cache
def data() -> Dataset:
    ds = load_data(SPEC).to_dataset()
    return ds.subset((ds.events["user_idx"] != EMPTY_USER).to_numpy())


@cache
def fitted() -> Funnel:
    return Funnel(FunnelConfig.from_dict(SINGLE_THREADED)).fit(data())


def listed(funnel: Funnel, query: Query) -> list[int]:
    return [r.item for r in funnel.recommend_query(query)]


def test_a_known_user_without_events_gets_the_unknown_users_list() -> None:
    funnel = fitted()
    user_id = str(data().user_ids[EMPTY_USER])
    assert funnel.user_index(user_id) == EMPTY_USER  # known to the model…
    assert data().matrix[EMPTY_USER].nnz == 0  # …with nothing to go on
    known = funnel.recommend_query(Query(user_id=user_id, user=EMPTY_USER, n=10))
    unknown = listed(funnel, Query(user_id="a-new-user", user=-1, n=10))
    assert [r.item for r in known] == unknown
    assert len(unknown) == 10
    for rec in known:  # no arbitrary ANN answer from a zero user vector
        assert not PERSONAL & set(rec.sources), rec
    assert Funnel.is_cold(Query(user_id=user_id, user=EMPTY_USER, n=10))


def test_a_known_user_with_an_empty_history_at_request_time_is_cold_too() -> None:
    funnel = fitted()
    u = 3
    assert data().matrix[u].nnz > 0  # trained on events the store no longer holds
    known = listed(funnel, Query(user_id=str(data().user_ids[u]), user=u, n=10))
    assert known == listed(funnel, Query(user=-1, n=10))


def test_the_cold_list_is_the_trending_chart() -> None:
    """With only the trending chart as a source and the re-ranking stages
    off, the cold answer is the chart itself, in its order."""
    config = FunnelConfig.from_dict(
        {
            **SINGLE_THREADED,
            "sources": {"popular": 0, "fresh": 0, "min_candidates": 0},
            "rerank": {
                "mmr": {"enabled": False},
                "category_cap": {"enabled": False},
                "long_tail": {"enabled": False},
                "freshness": {"enabled": False},
                "calibration": {"enabled": False},
            },
        }
    )
    funnel = Funnel(config).fit(data())
    chart = [r.item for r in funnel.popular(10)]
    assert all(funnel.state.engine.catalog.trending[chart] > 0)  # a real trending chart
    known = listed(funnel, Query(user_id=str(data().user_ids[EMPTY_USER]), user=EMPTY_USER, n=10))
    assert known == chart
    assert listed(funnel, Query(user=-1, n=10)) == chart


def _with_late_users(ds: Dataset, share: float, seed: int) -> tuple[Dataset, set[str]]:
    """The snapshot with a share of its users moved after everybody else:
    on a temporal split they are cold test users (no training events)."""
    rng = np.random.default_rng(seed)
    users = ds.user_ids[rng.random(ds.n_users) < share]
    late = set(str(u) for u in users)
    ev = ds.events[["event_id", "user_id", "item_id", "type", "value", "timestamp"]].copy()
    moved = ev["user_id"].astype(str).isin(late).to_numpy()
    span = float(ev["timestamp"].max() - ev["timestamp"].min())
    ev.loc[moved, "timestamp"] = ev.loc[moved, "timestamp"] + span + 1.0
    items = ds.items.copy()
    return Dataset.from_frames(ev, items, ds.users.copy(), weights=ds.weights), late


def test_offline_evaluation_lists_for_a_cold_user_what_the_live_path_lists() -> None:
    ds, late = _with_late_users(load_data(SPEC).to_dataset(), 0.3, seed=2)
    split = temporal_split(ds, 0.7)
    funnel = Funnel(FunnelConfig.from_dict(SINGLE_THREADED)).fit(split.train)
    ctx = _SplitContext.build(split)  # exactly what `sieve evaluate` hands the model
    cold = np.flatnonzero(np.diff(ctx.history.indptr) == 0)  # no training events
    assert len(cold) >= 10
    assert {str(ds.user_ids[u]) for u in ctx.users[cold]} <= late
    offline = funnel.recommend_batch(ctx.model_users[cold], ctx.history[cold], 10)
    snapshot = funnel.state.engine.snapshot_time
    new_user = listed(funnel, Query(user_id="a-new-user", user=-1, n=10, now=snapshot))
    for r, u in enumerate(ctx.users[cold][:10]):
        user_id = str(ds.user_ids[u])
        # what the service asks for a user with no stored events and no session
        query = Query(user_id=user_id, user=funnel.user_index(user_id), n=10, now=snapshot)
        live = listed(funnel, query)
        assert offline.items[r].tolist() == live == new_user, user_id


def test_cold_rows_of_a_batch_do_not_disturb_the_warm_ones() -> None:
    funnel = fitted()
    m = data().matrix
    users = np.array([EMPTY_USER, 5, -1], dtype=np.int64)
    rows = m[[EMPTY_USER, 5, EMPTY_USER]]
    top = funnel.recommend_batch(users, rows, 10)
    alone = funnel.recommend_batch(np.array([5], dtype=np.int64), m[[5]], 10)
    assert top.items[1].tolist() == alone.items[0].tolist()  # as if asked on its own
    assert top.items[0].tolist() == top.items[2].tolist() == listed(funnel, Query(n=10))
    assert pd.Series(top.items[1]).isin(top.items[0]).sum() < 10  # personal, not the charts
