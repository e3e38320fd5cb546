"""The data schema: column names of the event, item and user frames, and event weights.

Every importer produces frames with exactly these columns, so the rest of the
system never sees a source's own layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Columns of an events frame. `value` is NaN when the event carries none
#: (a click); for a rating it is the rating. `timestamp` is seconds since the epoch.
EVENT_COLUMNS = ["event_id", "user_id", "item_id", "type", "value", "timestamp"]
#: Columns of an items frame. `categories` holds a list of strings; `created_at`
#: is seconds since the epoch (NaN if unknown); `attributes` a dict of free fields.
ITEM_COLUMNS = ["item_id", "title", "text", "categories", "created_at", "attributes"]
#: Columns of a users frame.
USER_COLUMNS = ["user_id", "attributes"]

#: Default weights: stronger signals count more. A rating counts as one
#: positive interaction; its value is kept separately for rating models. A
#: dwell (its value: seconds spent on the item) is a signal about the visit,
#: not an interaction of its own: weight 0 keeps it out of the matrix and history.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "cart": 4.0,
    "purchase": 8.0,
    "rating": 1.0,
    "dwell": 0.0,
}


class UnknownIdError(KeyError):
    """An id that is not in a vocabulary; the message names it."""

    def __init__(self, kind: str, id_: object) -> None:
        super().__init__(f"unknown {kind} id {id_!r}")
        self.kind = kind
        self.id = id_

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class EventWeights:
    """How much each event type counts in the user×item interaction matrix.

    `min_rating`: ratings below it are not positives (None counts every rating,
    the protocol of the MovieLens benchmarks in BENCHMARKS.md).
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    min_rating: float | None = None

    def weigh(self, events: pd.DataFrame) -> np.ndarray:
        """The weight of each event row; unknown types raise, naming the type."""
        types = events["type"].astype(str)
        unknown = sorted(set(types.unique()) - set(self.weights))
        if unknown:
            raise ValueError(
                f"unknown event type(s) {unknown}; configured types: {sorted(self.weights)}"
            )
        w = types.map(dict(self.weights)).to_numpy(dtype=np.float64)
        if self.min_rating is not None:
            is_low_rating = (types == "rating").to_numpy() & (
                events["value"].to_numpy(dtype=np.float64) < self.min_rating
            )
            w = np.where(is_low_rating, 0.0, w)
        return w


def empty_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": pd.Series(dtype=str),
            "user_id": pd.Series(dtype=str),
            "item_id": pd.Series(dtype=str),
            "type": pd.Series(dtype=str),
            "value": pd.Series(dtype=np.float64),
            "timestamp": pd.Series(dtype=np.float64),
        }
    )


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_COLUMNS}).astype(
        {"created_at": np.float64}
    )


def empty_users() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in USER_COLUMNS})
