"""Ranking features of (request, candidate) pairs.

One function, `candidate_features`, builds the feature matrix both for the
ranker's training set (offline, on held-out training interactions) and for
every live request (online): the same code path on both sides, so there is
no train/serve skew by construction (the lesson of Metarank and of every
"why does offline not match online" post-mortem).

Features, one column each (NaN = missing, which LightGBM routes on its own):

- per source: its rank among its proposals (missing when it did not propose
  the item), and `n_sources`, how many sources proposed it;
- the source models' scores, computed for every candidate (ALS inner
  product, item-kNN score, content cosine, EASE score, SASRec's next-item
  score after the session when the funnel has one), each as a z-score
  and a rank percentile among the request's candidates, plus the raw
  content cosine;
- similarity to the anchors (the session's recent items, then the history):
  max and mean item-kNN similarity, max and mean ALS-embedding cosine;
- item: popularity and trending percentiles in the catalog, age in days;
- user: log history size, share of the history in the item's categories
  (sum and max over them);
- request context: hour, weekday, device code;
- online counters (`sieve.realtime.counters`, read as of the request time):
  the item's views, clicks (`EventSemantics` click types) and smoothed CTR over
  1 hour, 1 day and 7 days, hours since its last event; hours since the
  user's last event and their 7-day category affinity summed and maxed over
  the item's categories (not their event count: `history_size` carries it;
  with the duplicate, the funnel's NDCG@10 on MovieLens 100K was 0.0014
  lower). Serving reads the live counters, training the same counters
  replayed from the log up to each training query's cut
  (`sieve.realtime.counters.Replay`), through this same function. Without
  counters (`online=None`, or a cache that cannot be read) these columns
  are missing;
- attributes declared in the funnel config (`sieve.ranking.attributes`):
  item, user and user×item-match columns and a caller's per-item fields,
  appended after these (`feature_names`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sieve.ranking.attributes import AttributeFeatures
from sieve.ranking.normalise import normalised
from sieve.realtime.counters import OnlineCounters
from sieve.retrieval.candidates import SOURCES, Candidates, Request, positions, scores_at
from sieve.retrieval.sources import CandidateEngine
from sieve.sparse import gather_rows, maximum_at
from sieve.storage.cache import CacheError

log = logging.getLogger(__name__)

#: Request device names and their codes (others get `len(DEVICES)`).
DEVICES: tuple[str, ...] = ("desktop", "mobile", "tablet", "tv", "app")
#: Anchors used for the embedding-cosine features.
MAX_EMBEDDING_ANCHORS = 20

#: Model scores computed for every candidate (per-request normalised features).
MODEL_SCORES: tuple[str, ...] = ("als", "knn", "content", "ease", "sasrec")
#: Counter windows the online features read (`sieve.realtime.counters.WINDOWS`).
ONLINE_WINDOWS: tuple[str, ...] = ("1h", "1d", "7d")
#: Features read from the online counters (counts are log1p, hours log1p).
ONLINE_FEATURES: tuple[str, ...] = (
    *(f"item_{kind}_{w}" for kind in ("views", "clicks", "ctr") for w in ONLINE_WINDOWS),
    "item_hours_since_event",
    "user_hours_since_event",
    "user_affinity_7d",
    "user_affinity_7d_max",
)

FEATURE_NAMES: tuple[str, ...] = (
    *(f"src_{s}_rank" for s in SOURCES),
    "n_sources",
    *(f"{m}_{kind}" for m in MODEL_SCORES for kind in ("z", "pct")),
    "knn_max_sim",
    "knn_mean_sim",
    "emb_max_cos",
    "emb_mean_cos",
    "content_cos",
    "popularity_pct",
    "trending_pct",
    "age_days",
    "history_size",
    "category_affinity",
    "category_affinity_max",
    "hour",
    "weekday",
    "device",
    *ONLINE_FEATURES,
)
_COLUMN = {name: k for k, name in enumerate(FEATURE_NAMES)}


def feature_names(attributes: AttributeFeatures | None = None) -> tuple[str, ...]:
    """The columns of `candidate_features`: FEATURE_NAMES, then the declared
    attribute features."""
    return FEATURE_NAMES if attributes is None else (*FEATURE_NAMES, *attributes.names)


def candidate_features(
    engine: CandidateEngine,
    req: Request,
    cands: Candidates,
    online: OnlineCounters | None = None,
    attributes: AttributeFeatures | None = None,
) -> NDArray[np.float32]:
    """The feature matrix (len(cands) × len(feature_names(attributes))) of a
    request's candidates; used unchanged offline (training set) and online.
    `online`: the counters to read the online features from (as of
    `req.now`); `attributes`: the declared attribute features. A block of
    one of `candidate_features_many`."""
    return candidate_features_many(engine, [req], [cands], online, attributes)[0]


def candidate_features_many(
    engine: CandidateEngine,
    reqs: Sequence[Request],
    cands: Sequence[Candidates],
    online: OnlineCounters | None = None,
    attributes: AttributeFeatures | None = None,
) -> list[NDArray[np.float32]]:
    """`candidate_features` of each (request, candidates) of a block, as row
    ranges of one matrix: the columns that are look-ups or element-wise are
    computed over all the block's rows at once; the per-request statistics
    (z-scores, the models' dot products) per request, by the same calls a
    block of one makes, so a request's rows do not depend on its block."""
    x = _base_features(engine, reqs, cands, online)
    if attributes is not None:
        extra = [
            attributes.matrix(engine.catalog, c.items, r.query.user_attributes, r.query.item_fields)
            for r, c in zip(reqs, cands, strict=True)
        ]
        x = np.hstack([x, np.vstack(extra)]) if extra else x
    bounds = np.cumsum([0, *(len(c) for c in cands)])
    return [x[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def _base_features(
    engine: CandidateEngine,
    reqs: Sequence[Request],
    cands: Sequence[Candidates],
    online: OnlineCounters | None,
) -> NDArray[np.float32]:
    """The FEATURE_NAMES columns of a block's candidates, stacked (see
    `candidate_features`)."""
    lens = np.array([len(c) for c in cands], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    total = int(bounds[-1])
    x = np.full((total, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    if total == 0:
        return x
    group = np.repeat(np.arange(len(reqs)), lens)
    items = np.concatenate([c.items for c in cands])
    ranks = np.concatenate([c.ranks for c in cands])
    n_src = len(SOURCES)
    x[:, :n_src] = ranks
    x[:, _COLUMN["n_sources"]] = (~np.isnan(ranks)).sum(axis=1).astype(np.float32)
    n_train = engine.n_train_items
    trained = items < n_train
    _put_models(x, engine, reqs, items, trained, bounds)

    cat = engine.catalog
    x[:, _COLUMN["popularity_pct"]] = cat.percentile("popular")[items]
    x[:, _COLUMN["trending_pct"]] = cat.percentile("trending")[items]
    now = np.array([req.now for req in reqs], dtype=np.float64)
    x[:, _COLUMN["age_days"]] = (now[group] - cat.created_at[items]) / 86_400.0
    size = np.array([np.log1p(len(req.interactions)) for req in reqs], dtype=np.float64)
    x[:, _COLUMN["history_size"]] = size[group]
    if cat.n_categories:
        personal = np.array([len(req.interactions) > 0 for req in reqs])[group]
        if personal.any():
            affinity = np.stack([req.affinity for req in reqs])
            total_, top = _category_sum_max(engine, items[personal], affinity, group[personal])
            x[personal, _COLUMN["category_affinity"]] = total_
            x[personal, _COLUMN["category_affinity_max"]] = top

    for name in ("hour", "weekday", "device"):
        values = np.array([_context(req, name) for req in reqs], dtype=np.float64)
        if not np.isnan(values).all():
            x[:, _COLUMN[name]] = values[group]
    if online is not None:
        _put_online(x, engine, reqs, items, bounds, online)
    return x


def _put_models(
    x: NDArray[np.float32],
    engine: CandidateEngine,
    reqs: Sequence[Request],
    items: NDArray[np.int64],
    trained: NDArray[np.bool_],
    bounds: NDArray[np.int64],
) -> None:
    """The source models' columns (ALS, item-kNN, content, EASE scores and the
    anchor similarities) of each request's rows `bounds[b]:bounds[b + 1]`."""
    n_train = engine.n_train_items
    unit = engine.unit_factors
    knn_rows: list[NDArray[np.int64]] = []
    knn_sims: list[NDArray[np.float32]] = []
    knn_requests = np.zeros(len(items), dtype=bool)
    n_anchors = np.ones(len(items), dtype=np.float64)
    scores = _ModelScores()
    contents = engine.content_cosines_many(
        reqs, [items[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    )
    for req, lo, hi, content in zip(reqs, bounds[:-1], bounds[1:], contents, strict=True):
        if hi == lo:
            continue
        view = x[lo:hi]
        its = items[lo:hi]
        tr = trained[lo:hi]
        tr_items = its[tr]
        tr_rows = np.flatnonzero(tr) + lo
        vec = engine.user_vector(req)
        if vec is not None and engine.als is not None:
            scores.add("als", tr_rows, engine.als.state.item_factors[tr_items] @ vec)
        knn = engine.knn(req)
        if knn is not None:
            scores.add("knn", tr_rows, knn.score[tr_items])
            pos = positions(knn.entry_item, its)
            hit = np.flatnonzero(pos >= 0)  # one scan of the entries, not one per mask
            knn_rows.append(pos[hit] + lo)
            knn_sims.append(knn.entry_sim[hit])
            knn_requests[lo:hi] = True
            n_anchors[lo:hi] = max(int((req.anchors < n_train).sum()), 1)
        if unit is not None:
            anchors = req.anchors[req.anchors < n_train][:MAX_EMBEDDING_ANCHORS]
            if len(anchors) and len(tr_items):
                cos = unit[tr_items] @ unit[anchors].T
                view[tr, _COLUMN["emb_max_cos"]] = cos.max(axis=1)
                view[tr, _COLUMN["emb_mean_cos"]] = cos.mean(axis=1)
        if content is not None:
            scores.add("content", np.arange(lo, hi), content)
            view[:, _COLUMN["content_cos"]] = content
        ease = engine.ease_scores(req)
        if ease is not None:
            scores.add("ease", tr_rows, scores_at(ease, tr_items))
        sasrec = engine.sasrec_scores(req)
        if sasrec is not None:
            known = its < len(sasrec)
            scores.add("sasrec", np.flatnonzero(known) + lo, sasrec[its[known]])
    scores.put(x)
    if knn_rows:
        rows = np.concatenate(knn_rows)
        sims = np.concatenate(knn_sims)
        max_sim = np.zeros(len(items), np.float32)
        maximum_at(max_sim, rows, sims)
        sum_sim = np.bincount(rows, weights=sims, minlength=len(items))
        x[knn_requests, _COLUMN["knn_max_sim"]] = max_sim[knn_requests]
        x[knn_requests, _COLUMN["knn_mean_sim"]] = (sum_sim / n_anchors)[knn_requests]


class _ModelScores:
    """Each model's scores of a block's candidates, request by request, put
    as z-scores and rank percentiles among each request's own candidates in
    one pass per model (`sieve.ranking.normalise`): comparable across users
    and across refits, where raw scores drift (a model refitted on more data
    scores higher)."""

    def __init__(self) -> None:
        self._rows: dict[str, list[NDArray[np.int64]]] = {}
        self._values: dict[str, list[NDArray[np.float64]]] = {}

    def add(self, model: str, rows: NDArray[np.int64], values: NDArray[np.floating]) -> None:
        """One request's scores of its candidates at block rows `rows`."""
        if len(values):
            self._rows.setdefault(model, []).append(rows)
            self._values.setdefault(model, []).append(np.asarray(values, dtype=np.float64))

    def put(self, x: NDArray[np.float32]) -> None:
        """Every model's runs normalised in one call (each run on its own)."""
        if not self._rows:
            return
        models = list(self._rows)
        values = [v for m in models for v in self._values[m]]
        z, pct = normalised(
            np.concatenate(values), np.array([len(v) for v in values], dtype=np.int64)
        )
        lo = 0
        for model in models:
            at = np.concatenate(self._rows[model])
            hi = lo + len(at)
            x[at, _COLUMN[f"{model}_z"]] = z[lo:hi]
            x[at, _COLUMN[f"{model}_pct"]] = pct[lo:hi]
            lo = hi


def _context(req: Request, name: str) -> float:
    """A request context's hour, weekday or device code (NaN: not given)."""
    ctx = req.query.context
    if name == "device":
        if ctx.device is None:
            return np.nan
        return DEVICES.index(ctx.device) if ctx.device in DEVICES else len(DEVICES)
    value = ctx.hour if name == "hour" else ctx.weekday
    return np.nan if value is None else value


def _put_online(
    x: NDArray[np.float32],
    engine: CandidateEngine,
    reqs: Sequence[Request],
    items: NDArray[np.int64],
    bounds: NDArray[np.int64],
    online: OnlineCounters,
) -> None:
    """The online-counter columns of a block's candidates (request b's rows
    `bounds[b]:bounds[b + 1]`), each as of its request's time: the items' and
    the users' counters in one read for the block; user columns stay missing
    for anonymous requests and unknown users. A cache that cannot be read
    leaves them missing, as for a new item."""
    cat = engine.catalog
    lens = np.diff(bounds)
    now = np.repeat(np.array([req.now for req in reqs], dtype=np.float64), lens)
    # the users whose columns are filled: known, with rows in the block
    asking = [
        (b, req.query.user_id)
        for b, req in enumerate(reqs)
        if req.query.user_id is not None and bounds[b + 1] > bounds[b]
    ]
    # the block's requests share most candidates: each item's record is read
    # once (a request's own candidates are distinct already)
    distinct, rows = (items, None) if len(reqs) == 1 else np.unique(items, return_inverse=True)
    try:
        f, users = online.block_features(
            cat.item_ids[distinct].tolist(),
            now,
            [(user_id, reqs[b].now) for b, user_id in asking],
            rows,
        )
    except CacheError:
        log.warning("online counters unreadable: their features are missing")
        return
    for w in ONLINE_WINDOWS:
        if f"view@{w}" not in f:
            continue
        clicks = f[f"clicks@{w}"]  # the settings' click types (EventSemantics)
        x[:, _COLUMN[f"item_views_{w}"]] = np.log1p(f[f"view@{w}"])
        x[:, _COLUMN[f"item_clicks_{w}"]] = np.log1p(clicks)
        x[:, _COLUMN[f"item_ctr_{w}"]] = f[f"ctr@{w}"]
    x[:, _COLUMN["item_hours_since_event"]] = _log_hours(f["recency_hours"])
    affinities: list[NDArray[np.float64]] = []
    counts: list[int] = []
    known = np.zeros(len(items), dtype=bool)
    for (b, _), u in zip(asking, users, strict=True):
        lo, hi = bounds[b], bounds[b + 1]
        if u["events"] <= 0:
            continue
        x[lo:hi, _COLUMN["user_hours_since_event"]] = _log_hours(np.array([u["recency_hours"]]))[0]
        if cat.n_categories:
            known[lo:hi] = True
            counts.append(hi - lo)
            affinities.append(np.array([u.get(f"affinity:{c}", 0.0) for c in cat.category_names]))
    if affinities:
        rows = np.repeat(np.arange(len(affinities)), counts)
        total, top = _category_sum_max(engine, items[known], np.stack(affinities), rows)
        x[known, _COLUMN["user_affinity_7d"]] = total
        x[known, _COLUMN["user_affinity_7d_max"]] = top


def _category_sum_max(
    engine: CandidateEngine,
    items: NDArray[np.int64],
    affinity: NDArray[np.float64],
    rows: NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Σ and max of a non-negative per-category affinity over each item's
    categories (0 for an item without any); `affinity` is one vector, or
    with `rows` one row per request and each item's request."""
    which, cols, member = gather_rows(engine.catalog.item_categories, items)
    share = member * (affinity[cols] if rows is None else affinity[rows[which], cols])
    top = np.zeros(len(items))
    maximum_at(top, which, share)
    total = np.bincount(which, weights=share, minlength=len(items)).astype(np.float64)
    return total, top


def _log_hours(hours: NDArray[np.float64]) -> NDArray[np.float64]:
    """log1p of hours; never (inf) is missing."""
    return np.where(np.isfinite(hours), np.log1p(np.where(np.isfinite(hours), hours, 0.0)), np.nan)


#: Models whose z-score can serve as the ranker's base score, strongest first.
BASE_MODELS: tuple[str, ...] = ("ease", "als", "knn")


def base_score(x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Each candidate's base score for the ranker: the z-score of the
    strongest collaborative model the request has (EASE, else ALS, else
    item-kNN); items that model does not know (added after training) take
    their content z-score, and items nothing scores sit 1 below the lowest."""
    base = np.full(len(x), np.nan)
    for model in BASE_MODELS:
        z = x[:, _COLUMN[f"{model}_z"]].astype(np.float64)
        if not np.isnan(z).all():
            base = z
            break
    content = x[:, _COLUMN["content_z"]].astype(np.float64)
    base = np.where(np.isnan(base), content, base)
    if np.isnan(base).all():
        return np.zeros(len(x))
    return np.where(np.isnan(base), np.nanmin(base) - 1.0, base)
