"""`Dataset`: a frozen user×item snapshot with id vocabularies and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.data.schema import (
    EventWeights,
    UnknownIdError,
    empty_items,
    empty_users,
)


def _vocabulary(*columns: pd.Series) -> NDArray[np.object_]:
    """Sorted unique string ids over several columns (stable across runs)."""
    ids: set[str] = set()
    for col in columns:
        ids.update(col.astype(str).unique().tolist())
    return np.array(sorted(ids), dtype=object)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A frozen training snapshot.

    - `matrix`: users×items CSR of summed event weights (the implicit signal);
    - `ratings`: users×items CSR of the latest rating value, if any ratings exist;
    - `last_time`: users×items CSR of the latest interaction time (seconds);
    - `events`: the snapshot's events with `user_idx`, `item_idx` and `weight`;
    - `items` / `users`: metadata frames indexed by item / user index.

    Vocabularies (`user_ids`, `item_ids`) cover the whole catalog, so a train
    and a test snapshot cut from one source share indices.
    """

    user_ids: NDArray[np.object_]
    item_ids: NDArray[np.object_]
    matrix: sp.csr_matrix
    ratings: sp.csr_matrix | None
    last_time: sp.csr_matrix
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    weights: EventWeights

    # ----------------------------------------------------------------- build
    @classmethod
    def from_frames(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
        *,
        weights: EventWeights | None = None,
        user_ids: NDArray[np.object_] | None = None,
        item_ids: NDArray[np.object_] | None = None,
    ) -> Dataset:
        """Build a snapshot; vocabularies are the union of catalog and events
        unless given (then every event must use known ids)."""
        weights = weights or EventWeights()
        items = empty_items() if items is None else items
        users = empty_users() if users is None else users
        if user_ids is None:
            user_ids = _vocabulary(events["user_id"], users["user_id"])
        if item_ids is None:
            item_ids = _vocabulary(events["item_id"], items["item_id"])
        uindex = pd.Index(user_ids)
        iindex = pd.Index(item_ids)
        ev = events.reset_index(drop=True).copy()
        ev["user_idx"] = uindex.get_indexer(ev["user_id"].astype(str))
        ev["item_idx"] = iindex.get_indexer(ev["item_id"].astype(str))
        for kind, col in (("user", "user_idx"), ("item", "item_idx")):
            missing = ev[col].to_numpy() < 0
            if missing.any():
                first = ev.loc[missing, f"{kind}_id"].iloc[0]
                raise UnknownIdError(kind, first)
        ev["weight"] = weights.weigh(ev)
        return cls._assemble(ev, items, users, weights, user_ids, item_ids)

    @classmethod
    def _assemble(
        cls,
        ev: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame,
        weights: EventWeights,
        user_ids: NDArray[np.object_],
        item_ids: NDArray[np.object_],
    ) -> Dataset:
        shape = (len(user_ids), len(item_ids))
        u = ev["user_idx"].to_numpy(np.int64)
        i = ev["item_idx"].to_numpy(np.int64)
        w = ev["weight"].to_numpy(np.float64)
        pos = w > 0
        matrix = sp.csr_matrix((w[pos].astype(np.float32), (u[pos], i[pos])), shape=shape)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        ts = ev["timestamp"].to_numpy(np.float64)
        order = np.argsort(ts, kind="stable")
        last_time = _last_value_matrix(u[order], i[order], np.nan_to_num(ts[order]), shape)
        ratings = None
        is_rating = (ev["type"] == "rating").to_numpy() & ev["value"].notna().to_numpy()
        if is_rating.any():
            ro = order[is_rating[order]]
            ratings = _last_value_matrix(u[ro], i[ro], ev["value"].to_numpy(np.float64)[ro], shape)
        item_meta = _align(items, "item_id", item_ids)
        user_meta = _align(users, "user_id", user_ids)
        for arr in (user_ids, item_ids):
            arr.setflags(write=False)
        return cls(
            user_ids=user_ids,
            item_ids=item_ids,
            matrix=matrix,
            ratings=ratings,
            last_time=last_time,
            events=ev,
            items=item_meta,
            users=user_meta,
            weights=weights,
        )

    def subset(self, event_mask: NDArray[np.bool_]) -> Dataset:
        """A snapshot of some of this one's events, with the same vocabularies."""
        ev = self.events.loc[np.asarray(event_mask, dtype=bool)].reset_index(drop=True)
        return self._assemble(
            ev, self.items, self.users, self.weights, self.user_ids, self.item_ids
        )

    # ---------------------------------------------------------------- lookup
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, user_id: str) -> int:
        """The index of an external user id; raises `UnknownIdError` naming it."""
        idx = self._user_lookup.get(str(user_id))
        if idx is None:
            raise UnknownIdError("user", user_id)
        return idx

    def item_index(self, item_id: str) -> int:
        """The index of an external item id; raises `UnknownIdError` naming it."""
        idx = self._item_lookup.get(str(item_id))
        if idx is None:
            raise UnknownIdError("item", item_id)
        return idx

    @cached_property
    def _user_lookup(self) -> dict[str, int]:
        return {str(v): k for k, v in enumerate(self.user_ids)}

    @cached_property
    def _item_lookup(self) -> dict[str, int]:
        return {str(v): k for k, v in enumerate(self.item_ids)}

    def item_popularity(self) -> NDArray[np.float64]:
        """Number of distinct users who interacted with each item."""
        return np.asarray(self.matrix.getnnz(axis=0), dtype=np.float64)

    def item_categories(self) -> list[list[str]]:
        """Each item's category list (empty where unknown)."""
        return [list(c) if isinstance(c, list | tuple) else [] for c in self.items["categories"]]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.n_users} users, {self.n_items} items, "
            f"{self.matrix.nnz} interactions, {len(self.events)} events)"
        )


def _last_value_matrix(
    u: NDArray[np.int64], i: NDArray[np.int64], v: NDArray[np.float64], shape: tuple[int, int]
) -> sp.csr_matrix:
    """CSR holding, per (u, i), the value of the last of its rows in the given order."""
    if len(u) == 0:
        return sp.csr_matrix(shape, dtype=np.float64)
    key = u * shape[1] + i
    # last occurrence of each key: unique on the reversed array
    _, first_rev = np.unique(key[::-1], return_index=True)
    last = len(key) - 1 - first_rev
    return sp.csr_matrix((v[last], (u[last], i[last])), shape=shape)


def _align(meta: pd.DataFrame, id_col: str, ids: NDArray[np.object_]) -> pd.DataFrame:
    """Metadata rows in vocabulary order (blank rows for ids without metadata)."""
    if len(meta) == 0:
        out = pd.DataFrame({id_col: list(ids)})
    else:
        m = meta.drop_duplicates(id_col, keep="last").copy()
        m[id_col] = m[id_col].astype(str)
        out = pd.DataFrame({id_col: list(ids)}).merge(m, on=id_col, how="left")
    if id_col == "item_id":
        for col, default in (("title", ""), ("text", "")):
            out[col] = out[col].fillna(default) if col in out else default
        cats = out["categories"] if "categories" in out else pd.Series([None] * len(out))
        out["categories"] = [list(c) if isinstance(c, list | tuple) else [] for c in cats]
        out["created_at"] = out["created_at"].astype(np.float64) if "created_at" in out else np.nan
    attrs = out["attributes"] if "attributes" in out else pd.Series([None] * len(out))
    out["attributes"] = [a if isinstance(a, dict) else {} for a in attrs]
    return out.reset_index(drop=True)
