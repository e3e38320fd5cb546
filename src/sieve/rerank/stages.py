"""The re-ranking stage: from ranked candidates to the served list.

Relevance from the ranker is normalised to [0, 1] over the request's
candidates and raised by the freshness bonus; then the list is built greedily,
slot by slot, over the `pool` most relevant candidates. Each slot takes the
item with the best objective

    λ · relevance − (1 − λ) · similarity to the listed items       (MMR)
    − w · KL(user's category mix ‖ the list's, with the item)      (calibration)

among the items that the category cap and the long-tail minimum allow in
that slot. Every constraint is position-based (per block of `window` slots),
so a list of n items is the prefix of a longer one: page 2 continues page 1,
and scores of a longer list agree with a shorter one.

`SectionedConfig` (configs made of TOML tables) lives here because the
re-ranking config is the first one built from sections; the funnel's
config reuses it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.rerank.calibration import CalibrationConfig
from sieve.rerank.diversity import CategoryCapConfig, MMRConfig, cosine_matrix
from sieve.rerank.fairness import LongTailConfig
from sieve.rerank.freshness import FreshnessConfig, freshness_bonus
from sieve.rerank.greedy import greedy_lists
from sieve.rerank.rules import RulesConfig
from sieve.retrieval.candidates import Request
from sieve.retrieval.sources import CandidateEngine
from sieve.sparse import gather_rows

#: Above this many categories, only the columns a request touches are densified.
_DENSE_CATEGORIES = 256
#: Array cells (float64) each of the greedy loop's block arrays may hold: bounds
#: how many requests `rerank_many` runs through one slot loop together.
_GREEDY_CELLS = 1 << 21


@dataclasses.dataclass(frozen=True)
class SectionedConfig(Config):
    """A config whose `Config`-typed fields are sections (TOML tables).

    Unknown keys and bad values are reported with their full path, e.g.
    "FunnelConfig.rerank.mmr: unknown key(s) ['lamda']".
    """

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return _from_dict(cls, data, cls.__name__)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                out[f.name] = v.to_dict()
            elif v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def _from_dict(cls: type[Any], data: dict[str, Any], path: str) -> Any:
    """Build `cls` from a table; a section's missing keys keep the section's
    default in the parent (not its class default: the funnel's ALS section
    defaults to 64 factors even where `ALSConfig` says 32)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    if not issubclass(cls, SectionedConfig):
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        if isinstance(tp, type) and issubclass(tp, Config):
            default = _default(fields[key])
            base = default.to_dict() if isinstance(default, Config) else {}
            merged = {**base, **value} if isinstance(value, dict) else value
            values[key] = _from_dict(tp, merged, f"{path}.{key}")
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            values[key] = tuple(value)
        else:
            values[key] = value
    return cls(**values)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


@dataclasses.dataclass(frozen=True)
class RerankConfig(SectionedConfig):
    """Re-ranking settings.

    - `pool`: the most relevant candidates the greedy list is built from;
      beyond it, lists continue in relevance order.
    - `window`: block length (a page) over which the category cap and the
      long-tail minimum hold.
    - `mmr`, `category_cap`, `calibration`, `freshness`, `long_tail`,
      `rules`: the stages (see their modules); each has `enabled` except
      the rules, which are off while empty.
    """

    pool: int = 100
    window: int = 10
    mmr: MMRConfig = dataclasses.field(default_factory=MMRConfig)
    category_cap: CategoryCapConfig = dataclasses.field(default_factory=CategoryCapConfig)
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    freshness: FreshnessConfig = dataclasses.field(default_factory=FreshnessConfig)
    long_tail: LongTailConfig = dataclasses.field(default_factory=LongTailConfig)
    rules: RulesConfig = dataclasses.field(default_factory=RulesConfig)

    def validate(self) -> None:
        if self.pool < 1:
            raise ConfigError("RerankConfig.pool must be >= 1")
        if self.window < 1:
            raise ConfigError("RerankConfig.window must be >= 1")


def normalised(relevance: NDArray[np.floating]) -> NDArray[np.float64]:
    """Relevance min-max scaled to [0, 1] (all ones when constant)."""
    r = np.asarray(relevance, dtype=np.float64)
    if len(r) == 0:
        return r
    lo, hi = float(r.min()), float(r.max())
    return (r - lo) / (hi - lo) if hi > lo else np.ones(len(r))


def rerank(
    engine: CandidateEngine,
    req: Request,
    items: NDArray[np.int64],
    relevance: NDArray[np.floating],
    n: int,
    config: RerankConfig,
) -> NDArray[np.int64]:
    """Positions (into `items`) of the served list of up to n items: the
    block of one of `rerank_many`."""
    return rerank_many(engine, [req], [items], [relevance], [n], config)[0]


def rerank_many(
    engine: CandidateEngine,
    reqs: Sequence[Request],
    items: Sequence[NDArray[np.int64]],
    relevance: Sequence[NDArray[np.floating]],
    ns: Sequence[int],
    config: RerankConfig,
) -> list[NDArray[np.int64]]:
    """Each request's served positions (into its `items`), of up to its n
    items; the greedy slot loop runs over the block's requests at once
    (`_greedy`: one pass per slot, not per request and slot)."""
    cat = engine.catalog
    out: list[NDArray[np.int64]] = [np.empty(0, np.int64)] * len(reqs)
    stages_on = (
        config.mmr.enabled
        or config.category_cap.enabled
        or config.calibration.enabled
        or (config.long_tail.enabled and config.long_tail.min_tail > 0)
    )
    greedy: list[tuple[int, NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]] = []
    for k, (req, its, relevance_k, n) in enumerate(zip(reqs, items, relevance, ns, strict=True)):
        if len(its) == 0 or n <= 0:
            continue
        rel = normalised(relevance_k)
        if config.freshness.enabled:
            age = (req.now - cat.created_at[its]) / 86_400.0
            rel = rel + freshness_bonus(age, config.freshness)
        order = np.argsort(-rel, kind="stable")
        if not stages_on:
            out[k] = order[:n].astype(np.int64)
            continue
        greedy.append((k, order, rel, np.asarray(its, dtype=np.int64)))
    width = min(cat.n_categories, _DENSE_CATEGORIES)
    block = max(1, _GREEDY_CELLS // (config.pool * max(config.pool, width, 1)))
    for start in range(0, len(greedy), block):
        part = greedy[start : start + block]
        pools = [order[: config.pool] for _, order, _, _ in part]
        chosen = _greedy(
            engine,
            [reqs[k] for k, _, _, _ in part],
            [its[pool] for (_, _, _, its), pool in zip(part, pools, strict=True)],
            [rel[pool] for (_, _, rel, _), pool in zip(part, pools, strict=True)],
            [min(ns[k], len(pool)) for (k, _, _, _), pool in zip(part, pools, strict=True)],
            config,
        )
        for (k, order, _, _), pool, picks in zip(part, pools, chosen, strict=True):
            picked = pool[picks]
            n = ns[k]
            if len(picked) >= n:
                out[k] = picked[:n].astype(np.int64)
            else:
                rest = order[~np.isin(order, picked)]
                out[k] = np.concatenate([picked, rest])[:n].astype(np.int64)
    return out


def _greedy(
    engine: CandidateEngine,
    reqs: Sequence[Request],
    items: Sequence[NDArray[np.int64]],
    rels: Sequence[NDArray[np.float64]],
    ns: Sequence[int],
    config: RerankConfig,
) -> list[NDArray[np.int64]]:
    """Slot-by-slot selection of each request's n pool items (positions),
    for a block of requests at once: row b of every (B × pool) array is
    request b, padded past its pool with items that are never free; the
    compiled loop (`greedy.greedy_lists`) takes each row on its own, so a
    request's list does not depend on the block it is in."""
    cat = engine.catalog
    b_n = len(reqs)
    m_max = max(len(i) for i in items)
    member, distribution, targets, widths = _categories(engine, reqs, items, m_max)
    mmr = config.mmr.enabled and config.mmr.trade_off < 1
    sim: NDArray[np.float64] | None = None
    if mmr:
        sim = np.zeros((b_n, m_max, m_max))
        for b, its in enumerate(items):
            m = len(its)
            if config.mmr.similarity == "embedding" and engine.unit_factors is not None:
                vecs = np.zeros((m, engine.unit_factors.shape[1]))
                known = its < engine.n_train_items
                vecs[known] = engine.unit_factors[its[known]]
                sim[b, :m, :m] = vecs @ vecs.T
            else:
                sim[b, :m, :m] = cosine_matrix(member[b, :m, : widths[b]])
    calibrate = (targets.sum(axis=1) > 0) & (
        config.calibration.enabled and config.calibration.weight > 0
    )
    rel = np.zeros((b_n, m_max))
    free = np.zeros((b_n, m_max), dtype=bool)
    is_tail = np.zeros((b_n, m_max), dtype=bool)
    tail = config.long_tail.enabled and config.long_tail.min_tail > 0
    head = cat.head(config.long_tail.head_share) if tail else None
    for b, (its, r) in enumerate(zip(items, rels, strict=True)):
        rel[b, : len(its)] = r
        free[b, : len(its)] = True
        if head is not None:
            is_tail[b, : len(its)] = ~head[its]
    out = greedy_lists(
        rel,
        free,
        is_tail,
        member,
        distribution,
        targets,
        calibrate,
        sim if sim is not None else np.zeros((b_n, 0, 0)),
        np.asarray(ns, dtype=np.int64),
        config.window,
        config.mmr.trade_off if mmr else -1.0,
        config.mmr.ramp,
        config.mmr.penalty == "max",
        config.category_cap.max_per_category if config.category_cap.enabled else 0,
        config.long_tail.min_tail if tail else 0,
        config.long_tail.tolerance,
        config.calibration.weight,
        config.calibration.smoothing,
    )
    return [out[b, :n] for b, n in enumerate(ns)]


def _categories(
    engine: CandidateEngine,
    reqs: Sequence[Request],
    items: Sequence[NDArray[np.int64]],
    m_max: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], list[int]]:
    """Each request's pool items' category memberships and distributions
    (B × pool × columns), its category shares over the same columns (B ×
    columns), all padded with zeros, and its column count. Up to _DENSE_CATEGORIES categories
    the columns are all of them; past it, each request's own: the
    categories its pool items or its shares touch."""
    cat = engine.catalog
    b_n = len(reqs)
    lens = np.array([len(i) for i in items], np.int64)
    flat = np.concatenate(items) if b_n else np.empty(0, np.int64)
    which, cols, vals = gather_rows(cat.item_categories, flat)
    row_of = np.repeat(np.arange(b_n), lens)[which]
    slot_of = (np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens))[which]
    shares: list[NDArray[np.float64]] = []
    widths: list[int] = []
    if cat.n_categories > _DENSE_CATEGORIES:
        local = np.empty(len(cols), np.int64)
        for b, req in enumerate(reqs):
            mine = row_of == b
            used = np.union1d(cols[mine], np.flatnonzero(req.affinity)).astype(np.int64)
            local[mine] = np.searchsorted(used, cols[mine])
            shares.append(req.affinity[used])
            widths.append(len(used))
        cols = local
    else:
        shares = [req.affinity for req in reqs]
        widths = [cat.n_categories] * b_n
    width = max(widths, default=0)
    targets = np.zeros((b_n, width))
    for b, share in enumerate(shares):
        targets[b, : len(share)] = share
    member = np.zeros((b_n, m_max, width))
    member[row_of, slot_of, cols] = vals
    counts = member.sum(axis=2, keepdims=True)
    distribution = member / np.where(counts > 0, counts, 1.0)
    return member, distribution, targets, widths
