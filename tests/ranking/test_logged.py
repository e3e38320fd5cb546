"""Training the ranker on logged impressions, and the online-counter features
at serving: known labels, a logged winner ranked up, clicks that move the
served ranking without retraining, and the same features offline and online."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.schema import EVENT_COLUMNS
from sieve.pipeline import Funnel, FunnelConfig, featurize
from sieve.pipeline.training import training_rows
from sieve.ranking.features import FEATURE_NAMES
from sieve.ranking.logged import LoggedData, logged_training_set, slot_labels
from sieve.ranking.ltr import RankerConfig
from sieve.ranking.query import UserLog
from sieve.realtime.counters import OnlineCounters, Replay
from sieve.storage.cache import MemoryCache
from sieve.types import Query

SPEC = "synthetic:users=300,items=200,seed=1"
SMALL = {
    "als": {"factors": 16, "iterations": 5, "num_threads": 1},
    "itemknn": {"num_threads": 1},
    "ranker": {"num_threads": 1, "n_estimators": 60, "min_child_samples": 20},
}
COL = {name: k for k, name in enumerate(FEATURE_NAMES)}


# ------------------------------------------------------------------ labels
def test_slot_labels_take_the_strongest_feedback_of_that_list() -> None:
    imp = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r1", "r2"],
            "item_id": ["a", "b", "c", "a"],
        }
    )
    feedback = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r1", "r2", "r9"],
            "item_id": ["a", "a", "b", "x", "c"],
            "type": ["click", "purchase", "view", "click", "click"],
        }
    )
    # a: click then purchase → 3; b: a view is no feedback; r2's click was on
    # another item; r9 is another list
    np.testing.assert_array_equal(slot_labels(imp, feedback), [3, 0, 0, 0])


# ------------------------------------------------------- a synthetic log
@cache
def world() -> tuple[Dataset, LoggedData, str, float]:
    """The synthetic snapshot followed by 500 logged lists of 10 random items
    that always include one `star` item, clicked 8× as often as the others
    at the same position (clicks fall with the position, as on a real page).
    Returns the snapshot with the clicks, the log, the star and the end time."""
    raw = load_data(SPEC)
    rng = np.random.default_rng(7)
    popularity = raw.events["item_id"].value_counts()
    star = str(popularity.index[60])  # a middling item
    others = [str(i) for i in raw.items["item_id"] if str(i) != star]
    users = sorted(raw.events["user_id"].astype(str).unique())
    t0 = float(raw.events["timestamp"].max())
    slots: list[dict[str, object]] = []
    clicks: list[dict[str, object]] = []
    for r in range(500):
        at = t0 + 600.0 + 60.0 * r
        user = str(rng.choice(users))
        shown = list(rng.choice(others, 9, replace=False))
        shown.insert(int(rng.integers(0, 10)), star)
        for pos, item in enumerate(shown):
            slots.append(
                {
                    "request_id": f"r{r}",
                    "user_id": user,
                    "item_id": item,
                    "position": pos,
                    "score": 0.0,
                    "propensity": 1.0,
                    "sources": [],
                    "model_version": "v0",
                    "experiment": None,
                    "arm": None,
                    "timestamp": at,
                }
            )
            p = (0.4 if item == star else 0.05) / (1.0 + 0.5 * pos)
            if rng.random() < p:
                clicks.append(
                    {
                        "event_id": f"c{r}-{pos}",
                        "user_id": user,
                        "item_id": item,
                        "type": "click",
                        "value": math.nan,
                        "timestamp": at + 5.0,
                        "request_id": f"r{r}",
                    }
                )
    feedback = pd.DataFrame(clicks)
    events = pd.concat([raw.events, feedback[EVENT_COLUMNS]], ignore_index=True)
    dataset = Dataset.from_frames(events, raw.items, raw.users)
    logged = LoggedData(
        pd.DataFrame(slots), feedback[["request_id", "item_id", "type", "timestamp"]]
    )
    return dataset, logged, star, t0 + 600.0 + 60.0 * 500


@cache
def fitted(train_on: str) -> Funnel:
    funnel = Funnel(
        FunnelConfig.from_dict({**SMALL, "ranker": {**SMALL["ranker"], "train_on": train_on}})
    )
    dataset, logged, _, _ = world()
    funnel.logged = logged
    return funnel.fit(dataset)


def user_query(funnel: Funnel, u: int, now: float) -> Query:
    """The request the service builds for the snapshot user `u` at `now`."""
    user_id = str(funnel.user_ids[u])
    return funnel.query(UserLog(world()[0].events).events(user_id), user_id, now=now)


def rank_of(funnel: Funnel, item: int, query: Query) -> int | None:
    """The item's rank (0 = first) by the ranker among the query's candidates."""
    engine = funnel.state.engine
    req, cands, x = featurize(engine, query, None, online=funnel.online)
    hits = np.flatnonzero(cands.items == item)
    if len(hits) == 0:
        return None
    relevance = funnel.relevance(req, cands, x)
    return int((relevance > relevance[hits[0]]).sum())


def test_logged_groups_carry_labels_positions_and_weights() -> None:
    dataset, logged, _, _ = world()
    funnel = fitted("snapshot")
    engine = funnel.state.engine
    halved = LoggedData(logged.impressions.assign(propensity=0.5), logged.feedback)
    cfg = RankerConfig(max_logged_requests=50, max_ips_weight=1.5)
    data = logged_training_set(
        engine, dataset, halved, lambda i: dataset.item_categories()[dataset.item_index(i)], cfg
    )
    assert 0 < data.n_groups <= 50 and data.groups.sum() == len(data.y) == len(data.x)
    assert data.x.shape[1] == len(FEATURE_NAMES)
    assert data.position is not None and set(np.unique(data.position)) <= set(range(1, 11))
    assert data.weight is not None and np.all(data.weight == 1.5)  # 1/0.5, capped at 1.5
    # every group has a clicked and an unclicked slot; the star's rows show the
    # star's clicks counted before each impression
    starts = np.cumsum(data.groups) - data.groups
    for lo, n in zip(starts, data.groups, strict=True):
        assert 0 < data.y[lo : lo + n].sum() < n
    assert np.nanmax(data.x[:, COL["item_clicks_1d"]]) > 0


def test_training_on_impressions_ranks_the_logged_winner_higher() -> None:
    dataset, _, star, end = world()
    snap, logged = fitted("snapshot"), fitted("impressions")
    item = dataset.item_index(star)
    seen = set(np.flatnonzero(dataset.matrix[:, item].toarray().ravel() > 0))
    before, after = [], []
    for u in range(0, dataset.n_users, 3):
        if u in seen:
            continue
        a = rank_of(snap, item, user_query(snap, u, end))
        b = rank_of(logged, item, user_query(logged, u, end))
        if a is not None and b is not None:
            before.append(a)
            after.append(b)
    assert len(after) >= 30
    assert np.median(after) < np.median(before)
    assert np.mean(np.array(after) < np.array(before)) > 0.7
    importance = logged.state.ranker.importance()  # type: ignore[union-attr]
    online = sum(v for k, v in importance.items() if k.startswith("item_"))
    assert online > 0  # it learned from the counters


def test_clicks_move_the_served_ranking_without_retraining(tmp_path: Path) -> None:
    """Candidates a third of the way down a user's list get 40 clicks in the
    last half hour, each on a fresh copy of the counters: with the same
    ranker (no retraining) they move up, some into the served list."""
    dataset, _, star, end = world()
    trained = fitted("impressions")
    saved = trained.save(tmp_path / "funnel")
    funnel = Funnel.load(saved)
    u = next(u for u in range(dataset.n_users) if 10 <= dataset.matrix[u].nnz <= 40)
    query = user_query(funnel, u, end + 3600.0)
    _, cands, _ = featurize(funnel.state.engine, query, None)
    star_idx = dataset.item_index(star)
    ranked = sorted(
        (r, int(i))
        for i in cands.items
        if i != star_idx and (r := rank_of(funnel, int(i), query)) is not None
    )
    third = len(ranked) // 3
    before, after, listed = [], [], []
    for rank, item in ranked[third : third + 8]:
        funnel = Funnel.load(saved)  # its training-time counters, a private copy
        assert funnel.online is not None
        assert item not in [r.item for r in funnel.recommend_query(query)]
        funnel.online.update_columns(
            [f"fan{k}" for k in range(40)],
            [str(funnel.item_ids[item])] * 40,
            ["click"] * 40,
            [end + 1800.0 + k for k in range(40)],
        )
        new_rank = rank_of(funnel, item, query)
        assert new_rank is not None
        before.append(rank)
        after.append(new_rank)
        listed.append(item in [r.item for r in funnel.recommend_query(query)])
        assert funnel.version == trained.version
    assert min(before) > 30
    # (clicks and CTR are monotone in the ranker, recency is not: most, not
    # necessarily all, move up)
    assert np.mean(np.array(after) < np.array(before)) >= 0.75
    # by a good margin (the ranker also reads the session now, as it is served)
    assert np.median(after) < 0.7 * np.median(before)
    assert any(listed)  # the served list changed too (after diversity re-ranking)


# ---------------------------------------------------------- train/serve parity
@pytest.mark.parametrize("holdout", ["random", "temporal"])
def test_training_features_equal_serving_features_after_the_same_events(holdout: str) -> None:
    """The training set's online features (the log replayed to each query's
    cut) equal what serving reads from live counters fed the same events in
    arrival batches — for the same user, candidates and time."""
    dataset = world()[0]
    fit = fitted("snapshot")
    engine = fit.state.engine
    funnel = Funnel(fit.config.replace(ranker=fit.config.ranker.replace(holdout=holdout)))
    cats = dataset.item_categories()

    def categories(item_id: str) -> list[str]:
        return cats[dataset.item_index(item_id)]

    users = np.array([3, 17, 42])
    replay = Replay(dataset.events, categories)
    rows = training_rows(funnel.config, engine, users, dataset, replay)
    ev = dataset.events
    for u, (items, x, _) in zip(users, rows, strict=True):
        t = dataset.last_time
        cut = engine.snapshot_time
        if holdout == "temporal":
            cut = float(t.data[t.indptr[u] : t.indptr[u + 1]].max())
        live = OnlineCounters(MemoryCache())
        arrived = ev[ev["timestamp"] <= cut]
        for start in range(0, len(arrived), 500):  # as the counting thread folds them
            part = arrived.iloc[start : start + 500]
            live.update_columns(
                part["user_id"].tolist(),
                part["item_id"].tolist(),
                part["type"].tolist(),
                part["timestamp"].tolist(),
                categories,
            )
        user_id = str(dataset.user_ids[u])
        now = cut if holdout == "temporal" else None
        query = fit.query(UserLog(ev).events(user_id, now), user_id, now=now)
        _, cands, served = featurize(engine, query, None, online=live)
        assert served is not None
        np.testing.assert_array_equal(cands.items, items)
        np.testing.assert_allclose(served, x, rtol=1e-5, atol=1e-6)
        online = [COL[n] for n in FEATURE_NAMES if n.startswith(("item_", "user_"))]
        assert np.isfinite(x[:, online]).any(axis=0).sum() >= 8  # the counters were read
