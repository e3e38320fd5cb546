"""Fitting a funnel: its candidate engine from a snapshot, the ranker's
training sets (held-out snapshot interactions, logged impressions) and the
identity of the fitted state."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.models.content import ContentTFIDF
from sieve.models.ease import EASE
from sieve.models.factorization import ALS
from sieve.models.itemknn import ItemKNN
from sieve.models.neural.common import torch_module
from sieve.models.neural.sasrec import SASRec
from sieve.models.neural.two_tower import TwoTower
from sieve.models.sparse_ease import SparseEASE
from sieve.pipeline.config import FunnelConfig
from sieve.pipeline.features import featurize_many
from sieve.ranking.attributes import AttributeFeatures
from sieve.ranking.features import base_score, feature_names
from sieve.ranking.logged import LoggedData, logged_training_set
from sieve.ranking.ltr import (
    LTRRanker,
    TrainingSet,
    collect,
    concat,
    fold_fit_part,
    fold_users,
    holdout_labels,
)
from sieve.ranking.query import UserLog, build_query
from sieve.realtime.counters import Replay
from sieve.rerank.rules import blocked_items
from sieve.retrieval.ann import AnnIndex
from sieve.retrieval.catalog import Catalog
from sieve.retrieval.content import ContentIndex
from sieve.retrieval.personal import recent_items
from sieve.retrieval.sources import CandidateEngine

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FunnelState:
    """What `fit` learns: the candidate engine (models, index, catalog), the
    ranker, the user vocabulary and the identity of this trained funnel;
    `attributes`, the declared attribute features with their vocabularies."""

    engine: CandidateEngine
    ranker: LTRRanker | None
    user_ids: NDArray[np.object_]
    version: str
    fitted_at: float
    attributes: AttributeFeatures | None = None


def fit_attributes(cfg: FunnelConfig, dataset: Dataset) -> AttributeFeatures | None:
    """The attribute features the config declares, their vocabularies fitted
    on the snapshot's catalog and users (None: none declared)."""
    if not cfg.attributes.declared:
        return None
    return AttributeFeatures.fit(
        cfg.attributes, dataset.items["attributes"], dataset.users["attributes"]
    )


def user_attributes(dataset: Dataset) -> dict[str, dict[str, object]]:
    """Each snapshot user's attributes by id (users without any left out)."""
    return {
        str(u): dict(a)
        for u, a in zip(dataset.user_ids, dataset.users["attributes"], strict=True)
        if isinstance(a, dict) and a
    }


def build_engine(
    dataset: Dataset,
    cfg: FunnelConfig,
    content: ContentTFIDF | None,
    *,
    exact_ann: bool = False,
) -> CandidateEngine:
    """Fit the candidate models of a snapshot (content is fitted once, on
    item text only, and shared)."""
    src = cfg.sources
    if src.sasrec > 0:
        torch_module()  # before any fit: without PyTorch, say how to install it
    times = dataset.events["timestamp"].to_numpy(np.float64)
    finite = times[np.isfinite(times)]
    snapshot = float(finite.max()) if len(finite) else 0.0
    catalog = Catalog.from_dataset(dataset, cfg.trending, snapshot)
    als = ann = itemknn = tower = None
    ease: EASE | SparseEASE | None = None
    if src.ann > 0 or src.user_to_user > 0:  # user-to-user reads ALS user vectors
        als = ALS(cfg.als).fit(dataset)
    if als is not None and src.ann > 0:
        vectors = als.state.item_factors
        if src.ann_model == "two-tower":
            tower = TwoTower(cfg.two_tower).fit(dataset)
            vectors = tower.item_vectors()
        ann = AnnIndex.build(vectors, cfg.ann, exact=True if exact_ann else None)
    if src.item_to_item > 0:
        itemknn = ItemKNN(cfg.itemknn).fit(dataset)
    if src.ease > 0 and dataset.n_items <= src.ease_max_items:
        ease = EASE(cfg.ease).fit(dataset)
    elif src.ease > 0 and src.ease_large == "sparse":  # memory and time linear in the items
        ease = SparseEASE(cfg.sparse_ease).fit(dataset)
    sasrec = SASRec(cfg.sasrec).fit(dataset) if src.sasrec > 0 else None
    matrix = dataset.matrix
    user_recent = None
    if src.user_to_user > 0 and als is not None:
        ev = dataset.events.loc[dataset.events["weight"] > 0]
        user_recent = recent_items(
            ev["user_idx"].to_numpy(np.int64),
            ev["item_idx"].to_numpy(np.int64),
            ev["timestamp"].to_numpy(np.float64),
            dataset.n_users,
            dataset.n_items,
            src.user_recent_items,
        )
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    train_sum = np.bincount(
        rows, weights=matrix.indices.astype(np.float64), minlength=matrix.shape[0]
    )
    return CandidateEngine(
        src,
        catalog,
        dict(dataset.weights.weights),
        als=als,
        ann=ann,
        itemknn=itemknn,
        ease=ease,
        tower=tower,
        sasrec=sasrec,
        content=ContentIndex(content) if content is not None else None,
        user_train_count=np.diff(matrix.indptr).astype(np.int64),
        user_train_sum=np.rint(train_sum).astype(np.int64),
        n_train_items=dataset.n_items,
        snapshot_time=snapshot,
        user_recent=user_recent,
    )


def train_ranker(
    config: FunnelConfig,
    logged_data: LoggedData | None,
    dataset: Dataset,
    content: ContentTFIDF | None,
    engine: CandidateEngine,
    attributes: AttributeFeatures | None = None,
) -> LTRRanker | None:
    """LambdaMART on the training set(s) `ranker.train_on` names: held-out
    snapshot interactions, logged impressions (`logged_data`, scored by
    the snapshot's `engine`), or both; None when there are too few query
    groups. Asked for impressions with none usable, it trains on the
    snapshot and says so in the log (a new service has no clicks yet)."""
    cfg = config.ranker
    parts: list[TrainingSet] = []
    if cfg.train_on in ("impressions", "both"):
        logged = TrainingSet.empty()
        if logged_data is not None:
            blocked = blocked_items(engine.catalog, config.rerank.rules)
            logged = logged_training_set(
                engine,
                dataset,
                logged_data,
                categories_of(dataset),
                cfg,
                blocked,
                config.query,
                attributes,
            )
        if logged.n_groups < 2:
            log.warning("no usable logged impressions: the ranker trains on the snapshot")
        parts.append(logged)
    if cfg.train_on != "impressions" or sum(p.n_groups for p in parts) < 2:
        parts.append(snapshot_training_set(config, dataset, content, attributes))
    data = concat(parts)
    if data.n_groups < 2:
        return None
    categorical = attributes.categorical if attributes is not None else ()
    return LTRRanker.train(data, feature_names(attributes), cfg, categorical)


def snapshot_training_set(
    config: FunnelConfig,
    dataset: Dataset,
    content: ContentTFIDF | None,
    attributes: AttributeFeatures | None = None,
) -> TrainingSet:
    """Query groups of held-out training interactions (see
    `sieve.ranking.ltr`), each fold's features computed on models and
    online counters built from that fold's fit part."""
    cfg = config.ranker
    labels = holdout_labels(dataset, cfg)
    kept = dataset.matrix.getnnz(axis=1) - labels.getnnz(axis=1)
    eligible = np.flatnonzero((labels.getnnz(axis=1) > 0) & (kept > 0))
    if len(eligible) > cfg.max_users:
        rng = np.random.default_rng(cfg.seed)
        eligible = np.sort(rng.choice(eligible, cfg.max_users, replace=False))
    requests: list[tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64]]] = []
    label_rows: list[NDArray[np.int64]] = []
    categories = categories_of(dataset)
    for users in fold_users(eligible, labels, dataset.matrix.nnz, cfg):
        fit_part = fold_fit_part(dataset, labels, users)
        engine = build_engine(fit_part, config, content, exact_ann=True)
        replay = Replay(fit_part.events, categories)
        requests.extend(training_rows(config, engine, users, fit_part, replay, attributes))
        label_rows.extend(labels.indices[labels.indptr[u] : labels.indptr[u + 1]] for u in users)
    return collect(requests, label_rows)


def training_rows(
    config: FunnelConfig,
    engine: CandidateEngine,
    users: NDArray[np.int64],
    fit_part: Dataset,
    replay: Replay | None = None,
    attributes: AttributeFeatures | None = None,
) -> list[tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64]]]:
    """Offline side of the ranker's features: (candidates, features, base
    score) of each user's query built from the fit part, through
    `featurize_many`, the function the live path uses.

    Each query has a cut time: the snapshot's end for a random holdout
    (its labels are no later than the rest), the user's last fit-part
    event for a temporal one (the labels came after: the query is asked
    then, `Query.now` = the cut). Queries are visited by cut and `replay`
    (the fit part's log) is advanced to each, so the online features are
    the counters as the live path held them at that moment."""
    cfg = config.ranker
    blocked = blocked_items(engine.catalog, config.rerank.rules)
    cuts = np.full(len(users), engine.snapshot_time)
    if cfg.holdout == "temporal":
        for k, u in enumerate(users):
            lo, hi = fit_part.last_time.indptr[u], fit_part.last_time.indptr[u + 1]
            times = fit_part.last_time.data[lo:hi]
            times = times[np.isfinite(times)]
            cuts[k] = float(times.max()) if len(times) else engine.snapshot_time
    rows: dict[int, tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64]]] = {}
    log_ = UserLog(fit_part.events)
    user_attrs = fit_part.users["attributes"] if attributes is not None else None
    order = np.argsort(cuts, kind="stable")
    # queries with the same cut share the counters' state: featurized as one
    # block (each query's rows are those of the query alone)
    for block in _same_cut_blocks(cuts[order], TRAINING_BLOCK):
        ks = order[block]
        queries = []
        for k in ks:
            u = int(users[k])
            user_id = str(fit_part.user_ids[u])
            now = float(cuts[k]) if cfg.holdout == "temporal" else None
            queries.append(
                build_query(
                    log_.events(user_id, now),
                    item_index=engine.catalog.find,
                    weights=engine.event_weights,
                    shape=config.query,
                    user_id=user_id,
                    user=u,
                    now=now,
                    user_attributes=user_attrs.iloc[u] if user_attrs is not None else None,
                )
            )
        online = replay.advance(float(cuts[ks[0]])) if replay is not None else None
        done = featurize_many(engine, queries, blocked, online=online, attributes=attributes)
        for k, (_, cands, x) in zip(ks, done, strict=True):
            assert x is not None  # a training query always has a history
            rows[int(k)] = (cands.items, x, cfg.base_weight * base_score(x))
    return [rows[k] for k in range(len(users))]


#: training queries featurized together (as `Funnel.recommend_batch`'s blocks)
TRAINING_BLOCK = 256


def _same_cut_blocks(sorted_cuts: NDArray[np.float64], size: int) -> list[slice]:
    """Consecutive runs of equal cuts (sorted), cut into slices of at most `size`."""
    starts = np.flatnonzero(np.r_[True, sorted_cuts[1:] != sorted_cuts[:-1]])
    ends = np.r_[starts[1:], len(sorted_cuts)]
    return [
        slice(lo, min(lo + size, hi))
        for start, hi in zip(starts.tolist(), ends.tolist(), strict=True)
        for lo in range(start, hi, size)
    ]


def categories_of(dataset: Dataset) -> Callable[[str], list[str]]:
    """Item id → its categories in a snapshot (none for unknown ids)."""
    table = dict(zip((str(i) for i in dataset.item_ids), dataset.item_categories(), strict=True))
    return lambda item_id: table.get(item_id, [])


def digest(cfg: FunnelConfig, dataset: Dataset, fitted_at: float) -> str:
    """A short digest of config, data snapshot and fit time."""
    h = hashlib.sha256()
    h.update(cfg.to_toml().encode())
    m = dataset.matrix
    h.update(np.array([m.shape[0], m.shape[1], m.nnz], dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(m.indptr).tobytes())
    h.update(np.ascontiguousarray(m.indices).tobytes())
    h.update(np.ascontiguousarray(m.data).tobytes())
    h.update("\n".join(str(i) for i in dataset.item_ids).encode())
    h.update(repr(fitted_at).encode())
    return h.hexdigest()[:16]
