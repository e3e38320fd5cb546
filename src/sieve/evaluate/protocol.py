"""The offline evaluation protocol: fit each model on a split, rank, and score.

Every per-user metric is kept per user (not only its mean) so that intervals
and paired significance tests are computed on the same numbers the means come
from. Folds are pooled: per-user values of all folds are concatenated, and
rating errors are averaged per fold and then over folds.

Test users are also reported in two segments: *cold* (an empty input row:
no training interactions and no fold-in events, as after a temporal cut for a
user first seen later) and *warm* (the rest). A personal model has nothing
to say to a cold user; a `fallback` model (e.g. trending) can answer them
instead, the way a deployed system would, and the result says where it did.

Longer than most modules: fit → rank → score with pooling, guarded models and
incremental results is one flow.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve import forked
from sieve.data.dataset import Dataset
from sieve.data.split import Split
from sieve.evaluate import metrics as M
from sieve.evaluate.auto import DEFAULT_BUDGET_S, auto_params
from sieve.evaluate.isolate import run_guarded
from sieve.evaluate.stats import Interval, PairedResult, compare_to_baseline, mean_ci
from sieve.models.base import Recommender, create_model, model_class
from sieve.models.memory import ModelNotice

#: Cutoffs of the metric-against-K curves (those above the list length are dropped).
CURVE_KS = (1, 2, 3, 5, 10, 15, 20, 30, 50)
#: Metrics for which a paired test against the baseline is meaningful (per user).
ACCURACY = ("precision", "recall", "ndcg", "map", "mrr", "hitrate")
#: The test-user segments every model is also reported on.
SEGMENTS = ("cold", "warm")


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a label for the tables, a registry name, parameters.

    `auto`: choose the parameters from the training data first (`evaluate.auto`:
    the shape rule, then a search on validation data of at most
    `auto_budget_s` seconds); `params` still override what it chose."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    auto: bool = False
    auto_budget_s: float = DEFAULT_BUDGET_S

    def build(self, chosen: dict[str, Any] | None = None) -> Recommender[Any, Any]:
        return create_model(self.name, {**(chosen or {}), **self.params})

    def build_for(self, train: Dataset) -> Recommender[Any, Any]:
        """The model, its parameters chosen on `train` when `auto` (said in a
        `ModelNotice`)."""
        if not self.auto:
            return self.build()
        choice = auto_params(self.name, train, budget_s=self.auto_budget_s)
        warnings.warn(choice.describe(self.name), ModelNotice, stacklevel=2)
        return self.build(choice.params)


@dataclass
class ModelResult:
    """What one model scored, pooled over folds."""

    label: str
    per_user: dict[str, NDArray[np.float64]]
    scalars: dict[str, float]
    curves: dict[str, dict[int, float]]
    fit_seconds: float
    predict_seconds: float
    rec_popularity: NDArray[np.float64]
    summary: dict[str, Interval] = field(default_factory=dict)
    vs_baseline: dict[str, PairedResult] = field(default_factory=dict)
    #: per segment ("cold", "warm"): the per-user metrics' means over its users
    segments: dict[str, dict[str, Interval]] = field(default_factory=dict)
    #: the model that answered the cold users instead of this one (None: itself)
    fallback: str | None = None
    #: what the model said it did differently (e.g. a leaner variant to fit in memory)
    notices: list[str] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """Results of every model, the baseline comparison and the run's settings."""

    k: int
    settings: dict[str, Any]
    models: list[ModelResult]
    n_test_users: int
    #: test users per segment ("cold", "warm"), pooled over folds
    n_segment_users: dict[str, int] = field(default_factory=dict)
    #: models that failed (an exception, a memory refusal, a worker that died): the reason
    failures: dict[str, str] = field(default_factory=dict)
    #: notices of the failed models (those of the others are on their results)
    notices: dict[str, list[str]] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return self.models[0].label if self.models else ""


def evaluate(
    dataset: Dataset,
    splits: Sequence[Split],
    specs: Sequence[ModelSpec],
    *,
    k: int = 10,
    group_by: str | None = None,
    on_step: Callable[[str], None] | None = None,
    settings: dict[str, Any] | None = None,
    fold_in_reference: bool = True,
    fallback: ModelSpec | None = None,
    isolate: bool = False,
    memory_budget: int | None = None,
    on_result: Callable[[EvaluationResult], None] | None = None,
    jobs: int = 1,
) -> EvaluationResult:
    """Fit and score every model on every split; compare each to the first.

    On a user-holdout split, `fold_in_reference` also fits each model with the
    holdout users' fold-in events *in* training and scores the same users on
    the same test items (`warm ndcg@k`), so the cost of fold-in is measured.

    `fallback`: a model (fitted once per split on the same training part)
    that lists for the cold test users of every model without a cold-start
    path of its own (`Recommender.serves_cold_start` False); its fit and
    recommend time count in those models' timings.

    A model that fails on a split (an exception, a fit over the memory
    budget `memory_budget`, or — with `isolate`, each model's fit and lists
    made in a worker process — a worker that dies) is listed in `failures`
    with its reason; the other models' results are kept. `on_result` gets
    the result so far after each model of each split (to write it at once).
    `jobs`: processes a model whose lists are computed in blocks may share
    them among (`sieve.forked`; 0: one per core; the funnel does).
    """
    forked.check_jobs(jobs)  # before any work, not inside a guarded run
    if not specs:
        raise ValueError("no models to evaluate")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}")
    step = on_step or (lambda _what: None)
    depth = max(k, max(CURVE_KS))
    groups = _user_groups(dataset, group_by)
    item_features = _category_matrix(dataset)

    if fallback is not None:
        fallback.build()  # an unknown name or bad parameters fail before any fitting
    uses_fallback = {
        s.label: fallback is not None and not model_class(s.name).serves_cold_start for s in specs
    }
    collected: dict[str, list[dict[str, Any]]] = {s.label: [] for s in specs}
    failures: dict[str, str] = {}
    notices: dict[str, list[str]] = {s.label: [] for s in specs}
    n_test_users = 0
    n_segment_users = dict.fromkeys(SEGMENTS, 0)

    def assemble() -> EvaluationResult:
        return _assemble(
            collected, failures, notices, k, settings, n_test_users, n_segment_users,
            fallback.label if fallback is not None else None, uses_fallback,
        )  # fmt: skip

    for split in splits:
        ctx = _SplitContext.build(split)
        if len(ctx.users) == 0:
            raise ValueError(
                f"the split {split.name} left no test user with a held-out interaction "
                f"({dataset.n_users} users, {len(dataset.events)} events): there is nothing "
                "to score; use more data, or a split that holds out more (e.g. "
                "leave-last:1, or a smaller random ratio)"
            )
        n_test_users += len(ctx.users)
        n_segment_users["cold"] += int(ctx.cold.sum())
        n_segment_users["warm"] += int((~ctx.cold).sum())
        baseline_top = _popularity_top(split, ctx, depth)
        cold_top: _ColdLists | None = None
        for spec in specs:
            if spec.label in failures:
                continue
            step(f"{spec.label} on {split.name}: fit")
            use = uses_fallback[spec.label]
            rows = np.flatnonzero(~ctx.cold) if use else np.arange(len(ctx.users))
            ratings = None
            if model_class(spec.name).predicts_ratings and split.test.ratings is not None:
                coo = split.test.ratings.tocoo()
                ratings = (coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data)
            outcome = run_guarded(
                fit_and_rank,
                spec, split.train, ctx.model_users[rows], ctx.history[rows], depth, ratings, jobs,
                isolate=isolate, budget=memory_budget,
            )  # fmt: skip
            notices[spec.label].extend(n for n in outcome.notices if n not in notices[spec.label])
            if not outcome.ok:
                failures[spec.label] = f"{split.name}: {outcome.error}"
                collected[spec.label] = []
                step(f"{spec.label} on {split.name}: failed")
                if on_result is not None:
                    on_result(assemble())
                continue
            ranked: _Ranked = outcome.value
            step(f"{spec.label} on {split.name}: recommend")
            items = np.full((len(ctx.users), depth), -1, dtype=np.int64)
            items[rows] = ranked.items
            extra = (0.0, 0.0)
            if use:
                assert fallback is not None
                if cold_top is None:
                    step(f"{fallback.label} on {split.name}: fallback for cold users")
                    cold_top = _ColdLists.build(fallback, split, ctx, depth)
                items[ctx.cold] = cold_top.items
                extra = (cold_top.fit_seconds, cold_top.predict_seconds)
            step(f"{spec.label} on {split.name}: metrics")
            part = _score_lists(items, ctx, split, k, baseline_top, item_features, groups)
            part["fit_seconds"] = ranked.fit_seconds + extra[0]
            part["predict_seconds"] = ranked.predict_seconds + extra[1]
            if ranked.rating_errors is not None:
                part["rating"] = ranked.rating_errors
            if fold_in_reference and split.holdout_users.any():
                step(f"{spec.label} on {split.name}: warm reference")
                warm = run_guarded(
                    _warm_reference, spec, dataset, split, ctx, k, jobs,
                    isolate=isolate, budget=memory_budget,
                )  # fmt: skip
                if not warm.ok:
                    failures[spec.label] = f"{split.name} (warm reference): {warm.error}"
                    collected[spec.label] = []
                    continue
                part["per_user"][f"warm ndcg@{k}"] = warm.value
            collected[spec.label].append(part)
            if on_result is not None:
                on_result(assemble())
    return assemble()


@dataclass(frozen=True)
class _Ranked:
    """One model's lists for one split's test users, with its timings."""

    items: NDArray[np.int64]
    fit_seconds: float
    predict_seconds: float
    rating_errors: NDArray[np.float64] | None


def fit_and_rank(
    spec: ModelSpec,
    train: Dataset,
    users: NDArray[np.int64],
    history: sp.csr_matrix,
    depth: int,
    ratings: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[Any]] | None,
    jobs: int = 1,
) -> _Ranked:
    """Fit a model and list `depth` items for each user (the unit of work an
    evaluation runs guarded, possibly in a worker process), with `jobs`
    processes where the model shares its blocks of users (`sieve.forked`)."""
    with _timer() as fit_t:  # an `auto` model's search counts as fitting
        model = spec.build_for(train)
        model.fit(train)
    items = np.full((len(users), depth), -1, dtype=np.int64)
    with _timer() as pred_t, forked.jobs(jobs):
        if len(users):
            items = np.ascontiguousarray(
                model.recommend_batch(users, history, depth).items[:, :depth]
            )
    errors = None
    if ratings is not None:
        pred = model.predict(ratings[0], ratings[1])
        errors = np.asarray(pred, dtype=np.float64) - ratings[2].astype(np.float64)
    return _Ranked(items, fit_t(), pred_t(), errors)


def _assemble(
    collected: dict[str, list[dict[str, Any]]],
    failures: dict[str, str],
    notices: dict[str, list[str]],
    k: int,
    settings: dict[str, Any] | None,
    n_test_users: int,
    n_segment_users: dict[str, int],
    fallback: str | None,
    uses_fallback: dict[str, bool],
) -> EvaluationResult:
    """The result of the models done so far (failed ones listed apart); the
    first model that did not fail is the baseline of the paired tests."""
    results = [_pool(label, parts, k) for label, parts in collected.items() if parts]
    for r in results:
        r.fallback = fallback if uses_fallback[r.label] else None
        r.notices = list(notices.get(r.label, []))
    if results:
        per_user_metrics = [m for m in results[0].per_user if m.split("@")[0] in ACCURACY]
        for metric in per_user_metrics:
            shared = [r for r in results if metric in r.per_user]
            sizes = {len(r.per_user[metric]) for r in shared}
            if len(sizes) != 1:  # a model still missing a fold: no paired test yet
                continue
            comparison = compare_to_baseline(
                {r.label: r.per_user[metric] for r in shared}, results[0].label
            )
            for r in shared[1:]:
                r.vs_baseline[metric] = comparison[r.label]
    return EvaluationResult(
        k=k,
        settings=dict(settings or {}),
        models=results,
        n_test_users=n_test_users,
        n_segment_users=dict(n_segment_users),
        failures=dict(failures),
        notices={label: list(v) for label, v in notices.items() if v and label in failures},
    )


@dataclass(frozen=True)
class _SplitContext:
    """The parts of a split that every model is scored against."""

    users: NDArray[np.int64]  # test users (vocabulary indices)
    model_users: NDArray[np.int64]  # the same, -1 where the model has not seen the user
    history: sp.csr_matrix  # their input rows
    relevant: sp.csr_matrix  # their test rows, binary
    popularity: NDArray[np.float64]  # training popularity of each item
    n_train_users: int
    cold: NDArray[np.bool_]  # per test user: an empty input row (nothing to go on)

    @classmethod
    def build(cls, split: Split) -> _SplitContext:
        users = split.test_users
        model_users = np.where(split.holdout_users[users], -1, users).astype(np.int64)
        relevant = (split.test.matrix[users] > 0).astype(np.float64).tocsr()
        history = split.history[users].tocsr()
        return cls(
            users=users,
            model_users=model_users,
            history=history,
            relevant=relevant,
            popularity=split.train.item_popularity(),
            n_train_users=int((split.train.matrix.getnnz(axis=1) > 0).sum()),
            cold=np.diff(history.indptr) == 0,
        )


@dataclass(frozen=True)
class _ColdLists:
    """A fallback model's lists for the cold test users of one split."""

    items: NDArray[np.int64]
    fit_seconds: float
    predict_seconds: float

    @classmethod
    def build(cls, spec: ModelSpec, split: Split, ctx: _SplitContext, depth: int) -> _ColdLists:
        model = spec.build()
        with _timer() as fit_t:
            model.fit(split.train)
        rows = np.flatnonzero(ctx.cold)
        items = np.full((len(rows), depth), -1, dtype=np.int64)
        with _timer() as pred_t:
            if len(rows):
                top = model.recommend_batch(ctx.model_users[rows], ctx.history[rows], depth)
                items = top.items[:, :depth]
        return cls(items, fit_t(), pred_t())


def _popularity_top(split: Split, ctx: _SplitContext, depth: int) -> NDArray[np.int64]:
    """The primitive (most-popular) lists that serendipity discounts."""
    model = create_model("popular").fit(split.train)
    return model.recommend_batch(ctx.model_users, ctx.history, depth).items


def _score_lists(
    recs: NDArray[np.int64],
    ctx: _SplitContext,
    split: Split,
    k: int,
    baseline_top: NDArray[np.int64],
    item_features: sp.csr_matrix | None,
    groups: NDArray[np.object_] | None,
) -> dict[str, Any]:
    rel = ctx.relevant
    per_user: dict[str, NDArray[np.float64]] = {
        f"precision@{k}": M.precision_at_k(recs, rel, k),
        f"recall@{k}": M.recall_at_k(recs, rel, k),
        f"ndcg@{k}": M.ndcg_at_k(recs, rel, k),
        f"map@{k}": M.average_precision_at_k(recs, rel, k),
        f"mrr@{k}": M.reciprocal_rank(recs, rel, k),
        f"hitrate@{k}": M.hit_rate_at_k(recs, rel, k),
        f"novelty@{k}": M.novelty(recs, ctx.popularity, max(ctx.n_train_users, 1), k),
        f"serendipity@{k}": M.serendipity(recs, rel, baseline_top, k),
        f"longtail@{k}": M.long_tail_share(recs, ctx.popularity, k),
    }
    if item_features is not None:
        per_user[f"ild@{k}"] = M.intra_list_diversity(recs, item_features, k)
        per_user[f"calibration_kl@{k}"] = M.calibration_kl(recs, ctx.history, item_features, k)
    curves: dict[str, dict[int, NDArray[np.float64]]] = {"ndcg": {}, "precision": {}, "recall": {}}
    for kk in CURVE_KS:
        if kk <= recs.shape[1]:
            curves["ndcg"][kk] = M.ndcg_at_k(recs, rel, kk)
            curves["precision"][kk] = M.precision_at_k(recs, rel, kk)
            curves["recall"][kk] = M.recall_at_k(recs, rel, kk)
    return {
        "per_user": per_user,
        "cold": ctx.cold,
        "curves": curves,
        "recs": recs[:, :k],
        "n_items": split.train.n_items,
        "popularity": ctx.popularity,
        "groups": None if groups is None else groups[ctx.users],
    }


def _warm_reference(
    spec: ModelSpec, dataset: Dataset, split: Split, ctx: _SplitContext, k: int, jobs: int = 1
) -> NDArray[np.float64]:
    """NDCG of the test users when their fold-in events are part of training."""
    in_test = dataset.events["event_id"].isin(split.test.events["event_id"]).to_numpy()
    warm = dataset.subset(~in_test)
    model = spec.build_for(warm).fit(warm)
    with forked.jobs(jobs):
        top = model.recommend_batch(ctx.users, warm.matrix[ctx.users], k)
    return M.ndcg_at_k(top.items, ctx.relevant, k)


def _rating_errors(
    model: Recommender[Any, Any], split: Split, ctx: _SplitContext
) -> NDArray[np.float64]:
    """Prediction errors (predicted − true) on every test rating."""
    assert split.test.ratings is not None
    coo = split.test.ratings.tocoo()
    pred = model.predict(coo.row.astype(np.int64), coo.col.astype(np.int64))
    return np.asarray(pred, dtype=np.float64) - coo.data.astype(np.float64)


def _pool(label: str, parts: list[dict[str, Any]], k: int) -> ModelResult:
    per_user = {m: np.concatenate([p["per_user"][m] for p in parts]) for m in parts[0]["per_user"]}
    # list-level metrics: computed per fold, then averaged over folds
    scalars: dict[str, float] = {}
    scalars[f"coverage@{k}"] = float(
        np.mean([M.catalog_coverage(p["recs"], p["n_items"], k) for p in parts])
    )
    scalars[f"gini@{k}"] = float(
        np.mean([M.exposure_gini(p["recs"], p["n_items"], k) for p in parts])
    )
    summary = {m: mean_ci(v) for m, v in per_user.items()}
    cold = np.concatenate([p["cold"] for p in parts])
    segments = {
        name: {m: mean_ci(v[mask]) for m, v in per_user.items() if len(v) == len(mask)}
        if mask.any()
        else {}
        for name, mask in (("cold", cold), ("warm", ~cold))
    }
    if all("rating" in p for p in parts):
        rmses = np.array([np.sqrt(np.mean(p["rating"] ** 2)) for p in parts])
        maes = np.array([np.mean(np.abs(p["rating"])) for p in parts])
        summary["rmse"] = _fold_interval(
            rmses, np.concatenate([p["rating"] for p in parts]) ** 2, True
        )
        summary["mae"] = _fold_interval(
            maes, np.abs(np.concatenate([p["rating"] for p in parts])), False
        )
    warm = f"warm ndcg@{k}"
    if warm in per_user:
        scalars[f"fold-in/warm ndcg@{k}"] = float(
            np.mean(per_user[f"ndcg@{k}"]) / max(np.mean(per_user[warm]), 1e-12)
        )
    groups = [p["groups"] for p in parts]
    if all(g is not None for g in groups):
        fairness = M.group_fairness(per_user[f"ndcg@{k}"], np.concatenate(groups))
        for g, v in fairness.means.items():
            scalars[f"ndcg@{k}[{g}]"] = float(v)
        scalars[f"ndcg@{k} group gap"] = float(fairness.gap)
    curves = {
        name: {
            kk: float(np.mean(np.concatenate([p["curves"][name][kk] for p in parts])))
            for kk in parts[0]["curves"][name]
        }
        for name in parts[0]["curves"]
    }
    rec_pop = np.concatenate([p["popularity"][p["recs"][p["recs"] >= 0]] for p in parts])
    return ModelResult(
        label=label,
        per_user=per_user,
        scalars=scalars,
        curves=curves,
        fit_seconds=float(np.mean([p["fit_seconds"] for p in parts])),
        predict_seconds=float(np.mean([p["predict_seconds"] for p in parts])),
        rec_popularity=rec_pop,
        summary=summary,
        segments=segments,
    )


def _fold_interval(
    per_fold: NDArray[np.float64], pooled: NDArray[np.float64], root: bool
) -> Interval:
    """Mean over folds with a t-interval across folds; one fold: a delta-method
    interval from the pooled per-rating errors."""
    if len(per_fold) > 1:
        return mean_ci(per_fold)
    ci = mean_ci(pooled)
    if root:
        return Interval(
            float(np.sqrt(ci.mean)), float(np.sqrt(max(ci.low, 0.0))), float(np.sqrt(ci.high))
        )
    return ci


def _user_groups(dataset: Dataset, group_by: str | None) -> NDArray[np.object_] | None:
    """Each user's group label from the attribute `group_by` (for the fairness
    figures, computed only when asked); users without it are "unknown"."""
    if not group_by:
        return None
    attrs = dataset.users["attributes"]
    labels = np.array(
        [a.get(group_by) if isinstance(a, dict) else None for a in attrs], dtype=object
    )
    if not any(v is not None for v in labels):
        raise ValueError(f"no user has the attribute {group_by!r} to group by")
    return np.array(["unknown" if v is None else str(v) for v in labels], dtype=object)


def _category_matrix(dataset: Dataset) -> sp.csr_matrix | None:
    """Items × categories one-hot (for diversity and calibration), if any."""
    cats = dataset.item_categories()
    vocab = sorted({c for cs in cats for c in cs})
    if not vocab:
        return None
    index = {c: j for j, c in enumerate(vocab)}
    rows = [i for i, cs in enumerate(cats) for _ in cs]
    cols = [index[c] for cs in cats for c in cs]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(dataset.n_items, len(vocab)))


@contextmanager
def _timer() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())
