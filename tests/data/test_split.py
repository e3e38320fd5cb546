"""Splits: per-user ratios, pair integrity, time order, holdout users, MovieLens folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sieve.data.dataset import Dataset
from sieve.data.movielens import load_movielens_100k
from sieve.data.split import (
    Split,
    folds_split,
    leave_last_split,
    make_splits,
    movielens_folds,
    random_split,
    temporal_split,
    user_holdout_split,
)
from sieve.data.synthetic import SyntheticConfig, generate


def _events(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [str(k) for k in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "type": "click",
            "value": np.nan,
            "timestamp": [r[2] for r in rows],
        }
    )


@pytest.fixture(scope="module")
def ds() -> Dataset:
    """Synthetic clicks, plus repeated events of some pairs (at later times)."""
    raw, _ = generate(SyntheticConfig(n_users=150, n_items=80, events_per_user=12.0, seed=3))
    repeats = raw.events.iloc[::7].copy()
    repeats["event_id"] = "r" + repeats["event_id"]
    repeats["timestamp"] += 3600.0
    events = pd.concat([raw.events, repeats], ignore_index=True)
    return Dataset.from_frames(events, raw.items, raw.users)


def _pairs(d: Dataset) -> set[tuple[int, int]]:
    return set(zip(d.events["user_idx"], d.events["item_idx"], strict=True))


def _check_partition(ds: Dataset, split: Split) -> None:
    """Same vocabularies; every event on exactly one side (fold-in aside)."""
    for part in (split.train, split.test):
        assert list(part.user_ids) == list(ds.user_ids)
        assert list(part.item_ids) == list(ds.item_ids)
    assert not _pairs(split.train) & _pairs(split.test)


# ----------------------------------------------------------------- random
def test_random_split_ratio_per_user_and_pairs_kept_together(ds: Dataset) -> None:
    split = random_split(ds, 0.75, seed=0)
    _check_partition(ds, split)
    assert split.name == "random:0.75"
    assert len(split.train.events) + len(split.test.events) == len(ds.events)
    n = ds.matrix.getnnz(axis=1)
    n_train = split.train.matrix.getnnz(axis=1)
    np.testing.assert_array_equal(n_train, np.floor(n * 0.75 + 0.5))
    np.testing.assert_array_equal(split.test.matrix.getnnz(axis=1), n - n_train)
    assert (split.history != split.train.matrix).nnz == 0
    assert not split.holdout_users.any()
    np.testing.assert_array_equal(split.test_users, np.flatnonzero(n - n_train > 0))


def test_random_split_is_seeded(ds: Dataset) -> None:
    a, b, c = (random_split(ds, 0.5, seed=s) for s in (1, 1, 2))
    assert _pairs(a.test) == _pairs(b.test)
    assert _pairs(a.test) != _pairs(c.test)


# ---------------------------------------------------------------- temporal
def test_temporal_split_cuts_time(ds: Dataset) -> None:
    split = temporal_split(ds, 0.8)
    assert split.name == "temporal:0.8"
    assert split.train.events["timestamp"].max() <= split.test.events["timestamp"].min()
    share = len(split.train.events) / len(ds.events)
    assert share == pytest.approx(0.8, abs=0.01)


def test_temporal_split_needs_distinct_times() -> None:
    same = Dataset.from_frames(_events([("u", "a", 5.0), ("u", "b", 5.0)]))
    with pytest.raises(ValueError, match="no event after the cut"):
        temporal_split(same, 0.5)


# -------------------------------------------------------------- leave-last
def test_leave_last_picks_latest_pairs() -> None:
    ev = _events(
        [
            ("u1", "a", 10.0),
            ("u1", "b", 20.0),
            ("u1", "c", 5.0),
            ("u1", "c", 30.0),  # c re-clicked last: c is the latest pair
            ("u2", "a", 1.0),
            ("u2", "b", 7.0),
            ("u2", "c", 7.0),  # tie on time: later event wins
            ("u3", "a", 1.0),  # a single pair stays in train
        ]
    )
    small = Dataset.from_frames(ev)
    split = leave_last_split(small, 1)
    test = {(small.user_ids[u], small.item_ids[i]) for u, i in _pairs(split.test)}
    assert test == {("u1", "c"), ("u2", "c")}
    assert len(split.train.events) == 5
    assert split.test_users.tolist() == [0, 1]
    two = leave_last_split(small, 2)
    test2 = {(small.user_ids[u], small.item_ids[i]) for u, i in _pairs(two.test)}
    assert test2 == {("u1", "c"), ("u1", "b"), ("u2", "c"), ("u2", "b")}


def test_leave_last_on_larger_data(ds: Dataset) -> None:
    split = leave_last_split(ds, 2)
    _check_partition(ds, split)
    n = ds.matrix.getnnz(axis=1)
    np.testing.assert_array_equal(split.test.matrix.getnnz(axis=1), np.where(n > 2, 2, 0))
    # every test pair is at least as late as every train pair of its user
    last_train = split.train.last_time.max(axis=1).toarray().ravel()
    test = split.test.last_time.tocoo()
    assert (test.data >= last_train[test.row]).all()


# ------------------------------------------------------------ user-holdout
def test_user_holdout(ds: Dataset) -> None:
    split = user_holdout_split(ds, 0.2, seed=4, fold_in_ratio=0.5)
    assert split.name == "user-holdout:0.2"
    held = split.holdout_users
    assert held.sum() == round(0.2 * ds.n_users)
    train_rows = split.train.matrix.getnnz(axis=1)
    history_rows = split.history.getnnz(axis=1)
    test_rows = split.test.matrix.getnnz(axis=1)
    n = ds.matrix.getnnz(axis=1)
    assert (train_rows[held] == 0).all()
    np.testing.assert_array_equal(history_rows[held], np.floor(n[held] * 0.5 + 0.5))
    np.testing.assert_array_equal(test_rows[held], n[held] - history_rows[held])
    assert (test_rows[~held] == 0).all()
    assert (split.history[~held] != split.train.matrix[~held]).nnz == 0
    # fold-in and test parts of a holdout user are disjoint
    assert split.history.multiply(split.test.matrix).nnz == 0
    np.testing.assert_array_equal(split.test_users, np.flatnonzero(held & (test_rows > 0)))
    again = user_holdout_split(ds, 0.2, seed=4, fold_in_ratio=0.5)
    np.testing.assert_array_equal(again.holdout_users, held)
    assert not np.array_equal(user_holdout_split(ds, 0.2, seed=5).holdout_users, held)


# ------------------------------------------------------------------- folds
@pytest.fixture(scope="module")
def ml100k(ml100k_path: Path) -> Dataset:
    return load_movielens_100k(ml100k_path).to_dataset()


def test_movielens_folds(ml100k: Dataset, ml100k_path: Path) -> None:
    folds = movielens_folds(ml100k, ml100k_path)
    assert [f.name for f in folds] == ["u1", "u2", "u3", "u4", "u5"]
    assert [len(f.test.events) for f in folds] == [20_000] * 5
    assert len(folds[0].train.events) == 80_000
    # the five test sets partition the data
    tests = [_pairs(f.test) for f in folds]
    assert sum(len(t) for t in tests) == len(set().union(*tests)) == 100_000
    first = pd.read_csv(ml100k_path / "u1.test", sep="\t", header=None, nrows=1)
    u, i = ml100k.user_index(str(first[0][0])), ml100k.item_index(str(first[1][0]))
    assert folds[0].test.matrix[u, i] > 0 and folds[0].train.matrix[u, i] == 0


def test_folds_that_do_not_match_raise(ml100k: Dataset, tmp_path: Path) -> None:
    (tmp_path / "u1.base").write_text("1\t1\t5\t1\n")
    (tmp_path / "u1.test").write_text("1\t2\t5\t1\n")
    with pytest.raises(ValueError, match=r"in neither u1\.base and u1\.test"):
        folds_split(ml100k, tmp_path, 1)
    (tmp_path / "u1.test").write_text("nobody\t2\t5\t1\n")
    with pytest.raises(
        ValueError, match=r"u1\.test line 1: user id 'nobody' is not in the dataset"
    ):
        folds_split(ml100k, tmp_path, 1)
    with pytest.raises(FileNotFoundError, match=r"u2\.base"):
        folds_split(ml100k, tmp_path, 2)


# ------------------------------------------------------------------- specs
def test_make_splits_specs(ds: Dataset) -> None:
    names = [
        make_splits(ds, spec, seed=0)[0].name
        for spec in (
            "random:0.75",
            "temporal:0.8",
            "leave-last:1",
            "leave-last",
            "user-holdout:0.2",
        )
    ]
    assert names == [
        "random:0.75",
        "temporal:0.8",
        "leave-last:1",
        "leave-last:1",
        "user-holdout:0.2",
    ]
    a = make_splits(ds, "random:0.6", seed=1)[0]
    b = random_split(ds, 0.6, seed=1)
    assert _pairs(a.test) == _pairs(b.test)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("random:1.5", r"random ratio must be in \(0,1\), got 1.5"),
        ("random:half", r"random ratio must be a number in \(0,1\), got 'half'"),
        ("temporal:0", r"temporal ratio must be in \(0,1\), got 0"),
        ("leave-last:x", "leave-last count must be an integer ≥ 1, got 'x'"),
        ("leave-last:0", "leave-last count must be an integer ≥ 1, got 0"),
        ("user-holdout:1", r"user-holdout fraction must be in \(0,1\), got 1"),
        ("folds:", "folds split needs a folder"),
        ("kfold:5", "unknown split spec 'kfold:5'; expected one of random:RATIO"),
    ],
)
def test_make_splits_rejects_bad_specs(ds: Dataset, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_splits(ds, spec, seed=0)
