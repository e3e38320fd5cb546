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
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.rerank.calibration import CalibrationConfig, kl_if_added
from sieve.rerank.diversity import (
    CategoryCapConfig,
    MMRConfig,
    cosine_matrix,
    mmr_objective,
    mmr_trade_off,
    over_cap,
)
from sieve.rerank.fairness import LongTailConfig, must_take_tail
from sieve.rerank.freshness import FreshnessConfig, freshness_bonus
from sieve.rerank.rules import RulesConfig
from sieve.retrieval.candidates import Request
from sieve.retrieval.sources import CandidateEngine

#: Above this many categories, only the columns a request touches are densified.
_DENSE_CATEGORIES = 256


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
    """Positions (into `items`) of the served list of up to n items."""
    m = len(items)
    if m == 0 or n <= 0:
        return np.empty(0, np.int64)
    cat = engine.catalog
    rel = normalised(relevance)
    if config.freshness.enabled:
        rel = rel + freshness_bonus((req.now - cat.created_at[items]) / 86_400.0, config.freshness)
    order = np.argsort(-rel, kind="stable")
    pool = order[: config.pool]
    stages_on = (
        config.mmr.enabled
        or config.category_cap.enabled
        or config.calibration.enabled
        or (config.long_tail.enabled and config.long_tail.min_tail > 0)
    )
    if not stages_on:
        return order[:n].astype(np.int64)
    chosen = _greedy(engine, req, items[pool], rel[pool], min(n, len(pool)), config)
    picked = pool[chosen]
    if len(picked) >= n:
        return picked[:n].astype(np.int64)
    rest = order[~np.isin(order, picked)]
    return np.concatenate([picked, rest])[:n].astype(np.int64)


def _greedy(
    engine: CandidateEngine,
    req: Request,
    items: NDArray[np.int64],
    rel: NDArray[np.float64],
    n: int,
    config: RerankConfig,
) -> NDArray[np.int64]:
    """Slot-by-slot selection of n of the pool's items (positions)."""
    cat = engine.catalog
    m = len(items)
    sub = cat.item_categories[items]
    target = req.affinity
    if cat.n_categories > _DENSE_CATEGORIES:
        cols = np.union1d(sub.indices, np.flatnonzero(target)).astype(np.int64)
        sub = sub[:, cols]
        target = target[cols]
    member = np.asarray(sub.toarray(), dtype=np.float64)
    counts = member.sum(axis=1, keepdims=True)
    distribution = member / np.where(counts > 0, counts, 1.0)

    mmr = config.mmr.enabled and config.mmr.trade_off < 1
    sim: NDArray[np.float64] | None = None
    if mmr:
        if config.mmr.similarity == "embedding" and engine.unit_factors is not None:
            vecs = np.zeros((m, engine.unit_factors.shape[1]))
            known = items < engine.n_train_items
            vecs[known] = engine.unit_factors[items[known]]
            sim = vecs @ vecs.T
        else:
            sim = cosine_matrix(member)
    calibrate = config.calibration.enabled and config.calibration.weight > 0 and target.sum() > 0
    cap = config.category_cap.enabled
    tail = config.long_tail.enabled and config.long_tail.min_tail > 0
    is_tail = ~cat.head(config.long_tail.head_share)[items] if tail else np.zeros(m, bool)

    window = config.window
    free = np.ones(m, dtype=bool)
    list_sim = np.zeros(m)  # similarity of each item to the list (mean or max)
    sum_sim = np.zeros(m)
    block_counts = np.zeros(member.shape[1])
    list_mass = np.zeros(member.shape[1])
    tails_in_block = 0
    out = np.empty(n, dtype=np.int64)
    for slot in range(n):
        in_block = slot % window
        if in_block == 0:
            block_counts[:] = 0.0
            tails_in_block = 0
        if mmr:
            lam = mmr_trade_off(in_block, window, config.mmr)
            objective = mmr_objective(rel, list_sim, lam)
        else:
            objective = rel.copy()
        if calibrate:
            objective -= config.calibration.weight * kl_if_added(
                list_mass, slot, distribution, target, config.calibration
            )
        allowed = free.copy()
        if cap:
            capped = allowed & ~over_cap(member, block_counts, config.category_cap)
            if capped.any():
                allowed = capped
        if tail and must_take_tail(in_block, tails_in_block, window, config.long_tail):
            tails = allowed & is_tail
            # only a tail item nearly as relevant as the best allowed one
            close = tails & (rel >= rel[allowed].max() - config.long_tail.tolerance)
            if close.any():
                allowed = close
        objective[~allowed] = -np.inf
        j = int(np.argmax(objective))
        out[slot] = j
        free[j] = False
        block_counts += member[j]
        list_mass += distribution[j]
        tails_in_block += int(is_tail[j])
        if sim is not None:
            if config.mmr.penalty == "max":
                np.maximum(list_sim, sim[:, j], out=list_sim)
            else:
                sum_sim += sim[:, j]
                list_sim = sum_sim / (slot + 1)
    return out
