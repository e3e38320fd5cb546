"""Business rules: items that must never be shown, whatever their score.

Seen, excluded (`Query.exclude`) and unavailable items, and the query's
category restriction, are filtered when candidates are merged; this module
adds the catalog-wide rules of the config (blocked categories) and the final
check that every re-ranked list obeys all of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config
from sieve.retrieval.catalog import Catalog


@dataclasses.dataclass(frozen=True)
class RulesConfig(Config):
    """Business rules.

    - `blocked_categories`: items in any of these categories are never
      recommended (e.g. "adult" on a family page).
    """

    blocked_categories: tuple[str, ...] = ()


def blocked_items(catalog: Catalog, config: RulesConfig) -> NDArray[np.bool_] | None:
    """True for items a rule blocks; None when no rule blocks anything."""
    if not config.blocked_categories:
        return None
    return catalog.blocked(tuple(sorted(config.blocked_categories)))


def violations(
    items: NDArray[np.int64],
    catalog: Catalog,
    blocked: NDArray[np.bool_] | None,
    excluded: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """True for listed items that break a rule (unavailable, blocked, excluded)."""
    bad = ~catalog.available[items]
    if blocked is not None:
        bad |= blocked[items]
    if len(excluded):
        bad |= np.isin(items, excluded)
    return bad
