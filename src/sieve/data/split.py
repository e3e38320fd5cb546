"""Train/test splits of a `Dataset`: random, temporal, leave-last, user-holdout
and MovieLens' predefined folds.

A split never separates the events of one user–item pair (except the
temporal split, which cuts time itself): a pair is one interaction, and
scoring a model on a pair it was trained on would leak. Every split is
deterministic given its seed, and vectorised so that ML-20M-sized data is
practical. Train and test keep the full dataset's vocabularies, so indices
agree across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.data.raw import RawData
from sieve.data.schema import EventWeights

__all__ = [
    "Split",
    "folds_split",
    "leave_last_split",
    "make_splits",
    "movielens_folds",
    "parse_split_spec",
    "random_split",
    "temporal_split",
    "user_holdout_split",
]


@dataclass(frozen=True, eq=False)
class Split:
    """One train/test split.

    - `train`: what models fit on;
    - `test`: held-out events, to be scored;
    - `history`: users×items rows given to a model at recommend time: the
      train matrix, except holdout users, whose rows are their fold-in part;
    - `holdout_users`: per user of the vocabulary, True if absent from training
      by design (user-holdout); models get index -1 for them;
    - `name`: e.g. "random:0.75" or "u1".
    """

    train: Dataset
    test: Dataset
    history: sp.csr_matrix
    holdout_users: NDArray[np.bool_]
    name: str

    @property
    def test_users(self) -> NDArray[np.int64]:
        """Indices of users with at least one positive test interaction."""
        return np.flatnonzero(self.test.matrix.getnnz(axis=1) > 0).astype(np.int64)

    def __repr__(self) -> str:
        return (
            f"Split({self.name!r}: train {self.train.matrix.nnz} interactions, "
            f"test {self.test.matrix.nnz} interactions of {len(self.test_users)} users)"
        )


# ------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class _Pairs:
    """Distinct user–item pairs of a dataset's events (sorted by user, item)."""

    user: NDArray[np.int64]  # user index of each pair
    of_event: NDArray[np.int64]  # pair index of each event
    count: NDArray[np.int64]  # pairs per user (over the whole vocabulary)

    def __len__(self) -> int:
        return len(self.user)


def _pairs(ds: Dataset) -> _Pairs:
    u = ds.events["user_idx"].to_numpy(np.int64)
    i = ds.events["item_idx"].to_numpy(np.int64)
    keys, inverse = np.unique(u * ds.n_items + i, return_inverse=True)
    user = keys // max(ds.n_items, 1)
    count = np.bincount(user, minlength=ds.n_users).astype(np.int64)
    return _Pairs(user, inverse.reshape(-1).astype(np.int64), count)


def _rank_within_user(pairs: _Pairs, key: NDArray[np.generic]) -> NDArray[np.int64]:
    """Rank (0 = smallest `key`) of each pair among its user's pairs."""
    order = np.lexsort((key, pairs.user))
    starts = np.cumsum(pairs.count) - pairs.count
    rank = np.empty(len(pairs), dtype=np.int64)
    rank[order] = np.arange(len(pairs)) - starts[pairs.user[order]]
    return rank


def _round(x: NDArray[np.floating[Any]]) -> NDArray[np.int64]:
    """Round half up (numpy rounds half to even)."""
    return np.floor(x + 0.5).astype(np.int64)


def _check_ratio(what: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} must be in (0,1), got {value:g}")


def _build(
    ds: Dataset,
    train_mask: NDArray[np.bool_],
    test_mask: NDArray[np.bool_],
    name: str,
    holdout: NDArray[np.bool_] | None = None,
    history: sp.csr_matrix | None = None,
) -> Split:
    train = ds.subset(train_mask)
    test = ds.subset(test_mask)
    return Split(
        train=train,
        test=test,
        history=train.matrix if history is None else history,
        holdout_users=np.zeros(ds.n_users, dtype=bool) if holdout is None else holdout,
        name=name,
    )


# ------------------------------------------------------------------- splits
def random_split(ds: Dataset, train_ratio: float, seed: int) -> Split:
    """Per user, a random `round(n_u × train_ratio)` of their pairs go to train."""
    _check_ratio("random ratio", train_ratio)
    pairs = _pairs(ds)
    rng = np.random.default_rng(seed)
    rank = _rank_within_user(pairs, rng.random(len(pairs)))
    n_train = _round(pairs.count * train_ratio)
    in_train = (rank < n_train[pairs.user])[pairs.of_event]
    return _build(ds, in_train, ~in_train, f"random:{train_ratio:g}")


def temporal_split(ds: Dataset, train_ratio: float) -> Split:
    """A global time cut at the `train_ratio` quantile of event times:
    events at or before it train, later ones test.

    Users first seen after the cut have empty history rows (cold users); a
    pair seen on both sides of the cut stays on both (a re-interaction).
    """
    _check_ratio("temporal ratio", train_ratio)
    ts = ds.events["timestamp"].to_numpy(np.float64)
    if len(ts) == 0 or np.isnan(ts).any():
        raise ValueError("a temporal split needs a timestamp on every event")
    cut = np.quantile(ts, train_ratio, method="lower")
    in_train = ts <= cut
    if in_train.all():
        raise ValueError(
            f"temporal split {train_ratio:g}: no event after the cut at {cut:g} "
            "(too many identical timestamps)"
        )
    return _build(ds, in_train, ~in_train, f"temporal:{train_ratio:g}")


def leave_last_split(ds: Dataset, k: int = 1) -> Split:
    """Each user's last `k` pairs (by latest event time, ties by event order)
    go to test; users with ≤ k pairs keep everything in train."""
    if k < 1:
        raise ValueError(f"leave-last count must be an integer ≥ 1, got {k}")
    pairs = _pairs(ds)
    ts = np.nan_to_num(ds.events["timestamp"].to_numpy(np.float64), nan=-np.inf)
    order = np.lexsort((np.arange(len(ts)), ts))  # time, then event order
    # position of each pair's latest event in that order
    _, first_rev = np.unique(pairs.of_event[order][::-1], return_index=True)
    latest = len(ts) - 1 - first_rev
    rank_from_end = _rank_within_user(pairs, -latest)
    test_pair = (rank_from_end < k) & (pairs.count[pairs.user] > k)
    in_test = test_pair[pairs.of_event]
    return _build(ds, ~in_test, in_test, f"leave-last:{k}")


def user_holdout_split(
    ds: Dataset, test_fraction: float, seed: int, fold_in_ratio: float = 0.8
) -> Split:
    """Hold out a random `test_fraction` of the users with events.

    Holdout users are absent from training; each one's pairs are split at
    random into a fold-in part (`round(n_u × fold_in_ratio)` pairs, their
    history at recommend time) and a test part (what is scored).
    """
    _check_ratio("user-holdout fraction", test_fraction)
    if not 0.0 <= fold_in_ratio < 1.0:
        raise ValueError(f"fold-in ratio must be in [0,1), got {fold_in_ratio:g}")
    pairs = _pairs(ds)
    active = np.flatnonzero(pairs.count > 0)
    n_hold = int(_round(np.array([len(active) * test_fraction]))[0])
    if not 0 < n_hold < len(active):
        raise ValueError(
            f"user-holdout fraction {test_fraction:g} of {len(active)} users holds out "
            f"{n_hold}; need at least one user on each side"
        )
    rng = np.random.default_rng(seed)
    holdout = np.zeros(ds.n_users, dtype=bool)
    holdout[rng.choice(active, size=n_hold, replace=False)] = True
    rank = _rank_within_user(pairs, rng.random(len(pairs)))
    fold_in_pair = rank < _round(pairs.count * fold_in_ratio)[pairs.user]
    event_held = holdout[ds.events["user_idx"].to_numpy(np.int64)]
    fold_in = fold_in_pair[pairs.of_event]
    split = _build(ds, ~event_held, event_held & ~fold_in, f"user-holdout:{test_fraction:g}")
    history = (split.train.matrix + ds.subset(event_held & fold_in).matrix).tocsr()
    return Split(split.train, split.test, history, holdout, split.name)


# -------------------------------------------------------------- predefined
def folds_split(ds: Dataset, path: str | Path, fold: int | str) -> Split:
    """A MovieLens predefined fold: `uN.base` trains, `uN.test` tests.

    `fold` is 1-5 or a file stem ("u1", "ua"). The dataset's events are
    matched to the files by (user id, item id); an event in neither file (or
    both) means the folds belong to another dataset, and raises.
    """
    folder = Path(path)
    name = f"u{fold}" if isinstance(fold, int) else str(fold)
    ev = ds.events
    event_key = ev["user_idx"].to_numpy(np.int64) * ds.n_items + ev["item_idx"].to_numpy(np.int64)
    base = np.isin(event_key, _fold_keys(ds, folder / f"{name}.base"))
    test = np.isin(event_key, _fold_keys(ds, folder / f"{name}.test"))
    for mask, what in ((~base & ~test, "in neither"), (base & test, "in both")):
        if mask.any():
            k = int(np.flatnonzero(mask)[0])
            raise ValueError(
                f"{int(mask.sum())} event(s) of the dataset are {what} {name}.base and "
                f"{name}.test in {folder} (e.g. user {ev['user_id'].iloc[k]!r}, item "
                f"{ev['item_id'].iloc[k]!r}): these folds do not match the dataset"
            )
    return _build(ds, base, test, name)


def movielens_folds(ds: Dataset, path: str | Path) -> list[Split]:
    """The five MovieLens 100K cross-validation folds u1..u5."""
    return [folds_split(ds, path, k) for k in range(1, 6)]


def _fold_keys(ds: Dataset, file: Path) -> NDArray[np.int64]:
    """Pair keys (user_idx × n_items + item_idx) of a tab-separated fold file."""
    if not file.is_file():
        raise FileNotFoundError(f"fold file not found: {file}")
    frame = pd.read_csv(file, sep="\t", header=None, usecols=[0, 1], dtype=str)
    users = frame[0].str.strip()
    items = frame[1].str.strip()
    u = pd.Index(ds.user_ids).get_indexer(users)
    i = pd.Index(ds.item_ids).get_indexer(items)
    for idx, col, kind in ((u, users, "user"), (i, items, "item")):
        if (idx < 0).any():
            k = int(np.flatnonzero(idx < 0)[0])
            raise ValueError(
                f"{file} line {k + 1}: {kind} id {col.iloc[k]!r} is not in the dataset"
            )
    return np.asarray(u, dtype=np.int64) * ds.n_items + np.asarray(i, dtype=np.int64)


# ------------------------------------------------------------------- specs
SPLIT_SPECS = (
    "random:RATIO",
    "temporal:RATIO",
    "leave-last:K",
    "user-holdout:FRACTION",
    "folds:PATH",
)


def parse_split_spec(spec: str) -> tuple[str, str | int | float]:
    """The kind and argument of a split spec, checked without any data, so a
    command rejects a bad `--split` before it loads a data set: `("random",
    0.75)`, `("leave-last", 1)`, `("folds", "PATH")`; `ValueError` saying
    what was wrong and what is expected."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind == "folds":
        if not arg:
            raise ValueError("folds split needs a folder: folds:PATH")
        return kind, arg
    if kind == "leave-last":
        try:
            k = int(arg) if arg else 1
        except ValueError:
            raise ValueError(f"leave-last count must be an integer ≥ 1, got {arg!r}") from None
        if k < 1:
            raise ValueError(f"leave-last count must be an integer ≥ 1, got {k}")
        return kind, k
    if kind in ("random", "temporal", "user-holdout"):
        what = {"random": "random ratio", "temporal": "temporal ratio"}.get(
            kind, "user-holdout fraction"
        )
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"{what} must be a number in (0,1), got {arg!r}") from None
        _check_ratio(what, value)
        return kind, value
    raise ValueError(f"unknown split spec {spec!r}; expected one of {', '.join(SPLIT_SPECS)}")


def make_splits(ds: Dataset, spec: str, seed: int) -> list[Split]:
    """Splits named by a spec: `random:0.75`, `temporal:0.8`, `leave-last:1`,
    `user-holdout:0.2` or `folds:PATH` (MovieLens u1..u5, five splits)."""
    kind, arg = parse_split_spec(spec)
    if kind == "folds":
        return movielens_folds(ds, str(arg))
    if kind == "leave-last":
        return [leave_last_split(ds, int(arg))]
    if kind == "random":
        return [random_split(ds, float(arg), seed)]
    if kind == "temporal":
        return [temporal_split(ds, float(arg))]
    return [user_holdout_split(ds, float(arg), seed)]


def fixed_split(
    train: RawData, test: RawData, weights: EventWeights | None = None
) -> tuple[Dataset, Split]:
    """A data set that ships its own train/test pair: one snapshot of both
    (shared vocabularies; a test item or user never seen in training is
    still a column or row) and the split that keeps the test file's events
    apart. Test event ids get a `test/` prefix, so the two files' ids never
    collide."""
    test_events = test.events.copy()
    test_events["event_id"] = "test/" + test_events["event_id"].astype(str)
    events = pd.concat([train.events, test_events], ignore_index=True)
    items = pd.concat([train.items, test.items], ignore_index=True).drop_duplicates("item_id")
    users = pd.concat([train.users, test.users], ignore_index=True).drop_duplicates("user_id")
    ds = Dataset.from_frames(events, items, users, weights=weights)
    is_test = ds.events["event_id"].astype(str).str.startswith("test/").to_numpy()
    return ds, _build(ds, ~is_test, is_test, "fixed test set")
