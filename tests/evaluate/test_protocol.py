"""The evaluation protocol end to end on seeded synthetic data and MovieLens."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.data.split import make_splits
from sieve.evaluate.protocol import ModelSpec, evaluate
from sieve.evaluate.tune import tune, validation_split


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_data("synthetic:users=300,items=150,seed=7").to_dataset()


def test_personalised_model_beats_popularity_significantly(synthetic: Dataset) -> None:
    splits = make_splits(synthetic, "random:0.8", 1)
    res = evaluate(synthetic, splits, [ModelSpec("popular", "popular"), ModelSpec("ease", "ease")])
    pop, ease = res.models
    assert ease.summary["ndcg@10"].mean > pop.summary["ndcg@10"].mean
    test = ease.vs_baseline["ndcg@10"]
    assert test.p_adjusted < 0.05 and test.mean_diff > 0
    # the interval brackets the mean, and the mean is the mean of the per-user values
    iv = ease.summary["ndcg@10"]
    assert iv.low < iv.mean < iv.high
    assert iv.mean == pytest.approx(float(np.mean(ease.per_user["ndcg@10"])))
    assert len(ease.per_user["ndcg@10"]) == res.n_test_users == len(splits[0].test_users)
    assert 0 < ease.scalars["coverage@10"] <= 1
    # popularity recommends the same head to everybody: lower coverage, higher Gini
    assert pop.scalars["coverage@10"] < ease.scalars["coverage@10"]
    assert pop.scalars["gini@10"] > ease.scalars["gini@10"]
    assert ease.fit_seconds > 0 and ease.predict_seconds > 0


def test_same_model_twice_is_not_significant(synthetic: Dataset) -> None:
    splits = make_splits(synthetic, "random:0.8", 1)
    res = evaluate(synthetic, splits, [ModelSpec("a", "ease"), ModelSpec("b", "ease")])
    t = res.models[1].vs_baseline["ndcg@10"]
    assert t.mean_diff == 0 and t.p_adjusted == 1.0


def test_user_holdout_scores_folded_in_users(synthetic: Dataset) -> None:
    splits = make_splits(synthetic, "user-holdout:0.2", 3)
    (split,) = splits
    assert split.holdout_users[split.test_users].all()
    res = evaluate(synthetic, splits, [ModelSpec("popular", "popular"), ModelSpec("ease", "ease")])
    pop, ease = res.models
    assert ease.summary["ndcg@10"].mean > pop.summary["ndcg@10"].mean
    # the same users, trained with their fold-in events: fold-in loses little
    warm = ease.summary["warm ndcg@10"].mean
    assert warm > pop.summary["ndcg@10"].mean
    assert ease.scalars["fold-in/warm ndcg@10"] == pytest.approx(
        ease.summary["ndcg@10"].mean / warm
    )
    assert ease.scalars["fold-in/warm ndcg@10"] > 0.8


def test_validation_never_reads_the_test_part(synthetic: Dataset) -> None:
    (split,) = make_splits(synthetic, "random:0.8", 1)
    val = validation_split(split, "random:0.8", 1)
    test_ids = set(split.test.events["event_id"])
    seen = set(val.train.events["event_id"]) | set(val.test.events["event_id"])
    assert seen <= set(split.train.events["event_id"])
    assert not seen & test_ids
    result = tune("ease", split, metric="ndcg@10", n_trials=3, seed=1)
    assert set(result.best_params) == {"l2"} and result.best_value > 0


def test_bad_arguments_are_refused(synthetic: Dataset) -> None:
    splits = make_splits(synthetic, "random:0.8", 1)
    with pytest.raises(ValueError, match="unique"):
        evaluate(synthetic, splits, [ModelSpec("a", "ease"), ModelSpec("a", "popular")])
    with pytest.raises(ValueError, match="k must be"):
        evaluate(synthetic, splits, [ModelSpec("a", "ease")], k=0)
    with pytest.raises(ValueError, match="jobs must be"):
        evaluate(synthetic, splits, [ModelSpec("a", "ease")], jobs=-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")
def test_the_funnel_scores_the_same_with_its_users_shared_among_processes(
    synthetic: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sieve.pipeline import funnel

    monkeypatch.setattr(funnel, "BATCH_BLOCK", 16)  # several blocks for each process
    splits = make_splits(synthetic, "random:0.8", 1)
    spec = [ModelSpec("funnel", "funnel")]
    alone, shared = (evaluate(synthetic, splits, spec, jobs=j).models[0] for j in (1, 2))
    assert alone.summary["ndcg@10"].mean > 0
    assert np.array_equal(alone.per_user["ndcg@10"], shared.per_user["ndcg@10"])
    assert np.array_equal(alone.per_user["recall@10"], shared.per_user["recall@10"])


def test_movielens_100k_acceptance(ml100k_path: Path) -> None:
    """The issue's bar: EASE with shipped defaults, per-user random 75/25, seed 42."""
    ds = load_data(f"movielens-100k:{ml100k_path}").to_dataset()
    splits = make_splits(ds, "random:0.75", 42)
    res = evaluate(ds, splits, [ModelSpec("ease", "ease")], k=10)
    ease = res.models[0].summary
    assert ease["ndcg@10"].mean >= 0.48
    assert ease["precision@10"].mean >= 0.415
