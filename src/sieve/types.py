"""Core value types shared by every stage: lists of scored items."""

from __future__ import annotations

from dataclasses import dataclass, field

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
