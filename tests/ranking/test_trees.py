"""The compiled tree scorer gives LightGBM's own raw scores, bit for bit."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from numpy.typing import NDArray

from sieve.ranking import trees
from sieve.ranking.ltr import LTRRanker
from sieve.ranking.trees import TreeScorer


def _data(rng: np.random.Generator, n: int, nan_share: float) -> NDArray[np.float32]:
    """Numerical columns with NaN and exact zeros, column 3 category codes
    (some negative or past any category seen), column 4 fractional values
    in (-1, 0) that C++ truncates to category 0."""
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 3] = rng.integers(-2, 45, n)
    x[rng.random(x.shape) < nan_share] = np.nan
    x[:, 5][rng.random(n) < 0.3] = 0.0
    x[:, 6][rng.random(n) < 0.2] = -0.0
    return x


def _booster(nan_share: float, zero_as_missing: bool, rounds: int = 60) -> lgb.Booster:
    rng = np.random.default_rng(7)
    x = _data(rng, 6000, nan_share)
    x[:, 4] = rng.integers(0, 6, len(x))  # a second categorical column
    signal = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])
    signal += (np.nan_to_num(x[:, 3]) % 3 == 0).astype(float) + (x[:, 4] == 2) - (x[:, 5] == 0)
    y = (signal + rng.normal(size=len(x)) > 0.5).astype(int)
    params = {
        "objective": "lambdarank",
        "num_leaves": 7,
        "min_child_samples": 5,
        "verbose": -1,
        "num_threads": 1,
        "zero_as_missing": zero_as_missing,
        "deterministic": True,
    }
    data = lgb.Dataset(x, y, group=[60] * 100, categorical_feature=[3, 4])
    return lgb.train(params, data, num_boost_round=rounds)


@pytest.mark.parametrize(
    ("nan_share", "zero_as_missing"), [(0.05, False), (0.0, False), (0.0, True), (0.05, True)]
)
def test_scores_equal_lightgbm_bit_for_bit(nan_share: float, zero_as_missing: bool) -> None:
    booster = _booster(nan_share, zero_as_missing)
    scorer = TreeScorer.of(booster)
    assert scorer is not None
    x = _data(np.random.default_rng(1), 3000, 0.08)
    x[:5, 4] = [-0.5, -0.99, 2.7, 1e12, -3.0]  # truncation, overflow, negative
    x[5, :], x[6, :], x[7, :] = np.inf, -np.inf, 1e-36
    reference = booster.predict(x, raw_score=True, num_threads=1)
    assert np.array_equal(scorer.predict(x), reference)
    # float64 rows, one row, no rows
    assert np.array_equal(scorer.predict(x.astype(np.float64)), reference)
    assert np.array_equal(scorer.predict(x[:1]), reference[:1])
    assert scorer.predict(x[:0]).shape == (0,)


def test_a_large_block_scored_in_slices_equals_lightgbm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `PARALLEL_ROWS` the rows are cut into one slice per core, each
    scored on a thread of its own; every row keeps LightGBM's score."""
    monkeypatch.setattr(trees, "usable_cores", lambda: 3)
    booster = _booster(0.05, False)
    scorer = TreeScorer.of(booster)
    assert scorer is not None
    x = _data(np.random.default_rng(2), trees.PARALLEL_ROWS + 1001, 0.08)
    cut: list[int] = []
    score = TreeScorer._score

    def seen(self: TreeScorer, rows: NDArray[np.float32], out: NDArray[np.float64]) -> None:
        cut.append(len(rows))
        score(self, rows, out)

    monkeypatch.setattr(TreeScorer, "_score", seen)
    got = scorer.predict(x)
    assert len(cut) == 2 and sum(cut) == len(x)  # two slices of at least half the threshold
    assert np.array_equal(got, booster.predict(x, raw_score=True, num_threads=1))
    cut.clear()
    scorer.predict(x[: trees.PARALLEL_ROWS - 1])
    assert len(cut) == 1  # a smaller block stays on the caller's thread


def test_kinds_of_split_are_all_exercised() -> None:
    """The equality above covers each decision rule: categorical nodes, and
    numerical ones with missing None, Zero and NaN."""
    kinds = set()
    for nan_share, zero in [(0.05, False), (0.0, True)]:
        scorer = TreeScorer.of(_booster(nan_share, zero))
        assert scorer is not None
        kinds |= set(scorer.nodes[:, 3].tolist())
    assert kinds == {0, 1, 2}


def test_a_one_leaf_tree_and_too_few_features() -> None:
    x = np.zeros((50, 3), np.float32)
    y = np.zeros(50, int)
    y[::5] = 1
    booster = lgb.train(
        {"objective": "lambdarank", "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, y, group=[10] * 5),
        num_boost_round=3,
    )  # constant features: every tree is a single leaf
    scorer = TreeScorer.of(booster)
    assert scorer is not None and len(scorer.nodes) == 0
    assert np.array_equal(scorer.predict(x), booster.predict(x, raw_score=True))
    with pytest.raises(ValueError, match="3 features expected"):
        scorer.predict(x[:, :2])


def test_linear_trees_keep_lightgbms_predictor() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 3))
    y = x[:, 0] * 2 + rng.normal(size=500) * 0.1
    booster = lgb.train(
        {"objective": "regression", "linear_tree": True, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, y),
        num_boost_round=5,
    )
    assert TreeScorer.of(booster) is None
    ranker = LTRRanker(booster, ["a", "b", "c"])
    assert ranker.scorer is None
    base = np.zeros(len(x))
    assert np.array_equal(
        ranker.predict(x.astype(np.float32), base),
        booster.predict(x.astype(np.float32), raw_score=True, num_threads=1),
    )


def test_the_ranker_scores_with_the_compiled_trees() -> None:
    booster = _booster(0.05, False)
    ranker = LTRRanker(booster, booster.feature_name())
    assert ranker.scorer is not None
    x = _data(np.random.default_rng(2), 400, 0.05)
    base = np.linspace(0, 1, len(x))
    expected = booster.predict(x, raw_score=True, num_threads=1) + base
    assert np.array_equal(ranker.predict(x, base), expected)
