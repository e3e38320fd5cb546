"""Core value types shared by every stage: lists of scored items."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ItemList:
    """An immutable ranked list of item indices with scores, best first.

    Indices are positions in a `Dataset`'s item vocabulary; `Dataset.item_ids`
    translates them to external ids.
    """

    items: NDArray[np.int64]
    scores: NDArray[np.float32]
    fields: dict[str, NDArray[np.generic]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.items) != len(self.scores):
            raise ValueError(
                f"ItemList needs as many scores as items ({len(self.items)} != {len(self.scores)})"
            )

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls) -> ItemList:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


@dataclass(frozen=True)
class TopN:
    """Batch top-N result: row r holds the list of the r-th requested user.

    `items[r, j]` is -1 (and `scores[r, j]` is -inf) where fewer than N items
    could be recommended.
    """

    items: NDArray[np.int64]
    scores: NDArray[np.float32]

    def row(self, r: int) -> ItemList:
        keep = self.items[r] >= 0
        return ItemList(self.items[r][keep], self.scores[r][keep])


@dataclass(frozen=True)
class Context:
    """Request context: what the page knows about the moment of the request."""

    hour: int | None = None  # 0..23, local to the product
    weekday: int | None = None  # 0 = Monday .. 6
    device: str | None = None  # e.g. "mobile", "desktop"
    page: str | None = None  # e.g. "home", "item", "cart"


_NO_ITEMS: NDArray[np.int64] = np.empty(0, dtype=np.int64)
_NO_WEIGHTS: NDArray[np.float32] = np.empty(0, dtype=np.float32)


@dataclass(frozen=True)
class Query:
    """One recommendation request, in the funnel's index space.

    - `user`: the user's index in the serving model's vocabulary, -1 when the
      model has not seen the user (new or anonymous: served by fold-in/cold start);
    - `history` / `history_weights`: item indices the user interacted with
      (training snapshot plus newer events) and their summed event weights;
    - `recent` / `recent_types`: the session, most recent first, with the event
      type of each (for item-to-item candidates, session boost, explanations);
    - `categories`: restrict the answer to these categories (empty: any);
    - `exclude`: item indices never to return (blocked, already bought…);
    - `now`: the request time in seconds since the epoch (None: the model's
      snapshot time), for freshness and item age;
    - `user_attributes`: the user's stored attributes (ranking features
      declared in the funnel config read them);
    - `item_fields`: per-item numbers a caller sent with its candidates
      (`POST /rank`), by item index.
    """

    user_id: str | None = None
    user: int = -1
    history: NDArray[np.int64] = field(default_factory=lambda: _NO_ITEMS)
    history_weights: NDArray[np.float32] = field(default_factory=lambda: _NO_WEIGHTS)
    recent: tuple[int, ...] = ()
    recent_types: tuple[str, ...] = ()
    n: int = 10
    context: Context = field(default_factory=Context)
    categories: tuple[str, ...] = ()
    exclude: frozenset[int] = frozenset()
    request_id: str = ""
    now: float | None = None
    user_attributes: Mapping[str, Any] = field(default_factory=dict)
    item_fields: Mapping[int, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommended:
    """One item of a served list: its score, the sources that proposed it with
    their scores, and a human-readable reason; `contributions`, when asked
    for, the ranker's largest feature contributions to its score."""

    item: int
    score: float
    sources: dict[str, float]
    explanation: str
    contributions: tuple[tuple[str, float], ...] = ()
