"""The statistics of the drift checks (`sieve.monitoring.drift`), pure functions.

The population stability index (PSI) of a recent distribution `a` against a
reference `e` over the same bins is

    PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)

with `a_i`, `e_i` the shares of bin i; an empty bin's share is replaced by
`eps` (1e-4; no renormalisation), so a bin that appears or vanishes adds a
large but finite term. Popularity bins, quantile bins of a score, and the
relative CTR drop are here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

#: The share an empty bin gets, so its log term stays finite.
EPS = 1e-4


# ------------------------------------------------------------------ PSI
def psi(expected: ArrayLike, actual: ArrayLike, eps: float = EPS) -> float:
    """PSI of `actual` against `expected`, two counts (or shares) over the same bins."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape:
        raise ValueError(f"two 1-d arrays over the same bins expected, got {e.shape}, {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Inner edges of `bins` quantile bins of `reference` (ties merged, so a
    reference with few distinct values gets fewer bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if len(ref) == 0:
        raise ValueError("the reference has no finite value")
    qs = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(qs)


def binned_psi(reference: ArrayLike, recent: ArrayLike, bins: int = 10, eps: float = EPS) -> float:
    """PSI of a numeric sample against a reference sample, over the reference's
    quantile bins (bin k holds values in [edge_{k-1}, edge_k); the outer bins
    are open-ended, so recent values beyond the reference's range still count)."""
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(recent, dtype=np.float64)
    ref, new = ref[np.isfinite(ref)], new[np.isfinite(new)]
    edges = quantile_edges(ref, bins)
    k = len(edges) + 1
    e = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k)
    a = np.bincount(np.searchsorted(edges, new, side="right"), minlength=k)
    return psi(e, a, eps)


def categorical_psi(reference: Iterable[Any], recent: Iterable[Any], eps: float = EPS) -> float:
    """PSI of the category mix of `recent` against `reference` (one value per event)."""
    e = pd.Series(list(reference)).value_counts()
    a = pd.Series(list(recent)).value_counts()
    keys = sorted(set(e.index) | set(a.index), key=str)
    return psi(e.reindex(keys, fill_value=0), a.reindex(keys, fill_value=0), eps)


@dataclass(frozen=True)
class PopularityBins:
    """Items cut into bins of about equal reference event mass (see the module doc)."""

    bin_of: pd.Series  # item id → bin (0 = the head)
    expected: NDArray[np.float64]  # reference events per bin

    @classmethod
    def fit(cls, items: Iterable[Any], bins: int = 10) -> PopularityBins:
        """Bins from the reference events' item ids (one per event)."""
        return cls.from_counts(pd.Series(list(items), dtype=object).value_counts(), bins)

    @property
    def bins(self) -> int:
        return len(self.expected)

    @classmethod
    def from_counts(cls, counts: pd.Series, bins: int = 10) -> PopularityBins:
        """Bins from reference event counts per item id (`Store.event_counts`):
        by count, most popular first; ties by id, so the cut is deterministic."""
        counts = counts.loc[counts > 0]
        if counts.empty:
            raise ValueError("no reference events")
        order = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        n = order.to_numpy(dtype=np.int64)
        before = np.cumsum(n) - n  # events of the items ranked above
        b = np.minimum(before * bins // int(n.sum()), bins - 1)
        expected = np.bincount(b, weights=n, minlength=bins).astype(np.float64)
        return cls(pd.Series(b, index=order.index), expected)

    def counts_of(self, per_item: pd.Series) -> NDArray[np.float64]:
        """Events per bin from event counts per item id (unknown items in the tail bin)."""
        b = pd.Series(per_item.index, dtype=object).map(self.bin_of)
        k = b.fillna(self.bins - 1).to_numpy(dtype=np.int64)
        w = per_item.to_numpy(dtype=np.float64)
        return np.bincount(k, weights=w, minlength=self.bins).astype(np.float64)

    def counts(self, items: Iterable[Any]) -> NDArray[np.float64]:
        """Events per bin of `items` (unknown items in the tail bin)."""
        b = pd.Series(list(items), dtype=object).map(self.bin_of)
        k = b.fillna(self.bins - 1).to_numpy(dtype=np.int64)
        return np.bincount(k, minlength=self.bins).astype(np.float64)

    def psi(self, items: Iterable[Any], eps: float = EPS) -> float:
        return psi(self.expected, self.counts(items), eps)


def popularity_psi(
    reference: Iterable[Any], recent: Iterable[Any], bins: int = 10, eps: float = EPS
) -> float:
    """PSI of recent events' items over the reference's popularity bins."""
    return PopularityBins.fit(reference, bins).psi(recent, eps)


# ------------------------------------------------------------------ CTR
def clicked_slots(
    impressions: pd.DataFrame, events: pd.DataFrame, kinds: Sequence[str]
) -> NDArray[np.bool_]:
    """Per shown slot (impressions_frame rows): whether a click event of `kinds`
    cites its request and item."""
    if impressions.empty:
        return np.zeros(0, dtype=bool)
    clicks = events.loc[events["request_id"].notna() & events["type"].isin(list(kinds))]
    if clicks.empty:
        return np.zeros(len(impressions), dtype=bool)
    pairs = pd.MultiIndex.from_arrays(
        [clicks["request_id"].astype(str), clicks["item_id"].astype(str)]
    )
    slots = pd.MultiIndex.from_arrays(
        [impressions["request_id"].astype(str), impressions["item_id"].astype(str)]
    )
    return np.asarray(slots.isin(pairs), dtype=bool)


def relative_drop(reference: float, recent: float) -> float:
    """(reference − recent) / reference; positive when the recent value is lower."""
    if reference <= 0:
        raise ValueError("the reference must be positive")
    return (reference - recent) / reference


__all__ = [
    "EPS",
    "PopularityBins",
    "binned_psi",
    "categorical_psi",
    "clicked_slots",
    "popularity_psi",
    "psi",
    "quantile_edges",
    "relative_drop",
]
