"""The ranker's training set from logged impressions and the feedback they got.

Every served list is logged (`Store.impressions_frame`: one row per shown
slot), and clicks, carts and purchases cite the request that showed their
item (`request_id`, sent by the client or attributed by the service). A
logged request becomes one LambdaMART query group: its shown slots are the
rows, and a slot's label is the strongest feedback it got from that list
(`GRADES`: click 1, cart 2, purchase 3; nothing 0). Requests without a
positive or without a negative slot teach nothing and are left out.

Features are the ranker's own (`candidate_features`), computed as the world
was when the list was served:

- the request is rebuilt from the snapshot: the user's events before the
  impression (history weighted by event type, the latest events as the
  session), `now` = the impression time, the user's ALS vector folded in
  from that history (never the trained vector, which saw what came after);
- candidates are generated again and the shown items added where missing
  (explored slots, another model's lists), so that the per-request
  normalised scores are taken among a full candidate set, as when serving;
- the online counters are the event log replayed up to the impression
  (`Replay`), what the live counters held then.

Position bias: a top slot is clicked more for being on top. Each row keeps
its slot as a position id, from which LightGBM estimates a bias factor per
position jointly with the ranker (unbiased LambdaMART); serving, which has no
position, uses the debiased ranker. Slots that were explored (propensity
below 1) weigh 1 / propensity, capped (`RankerConfig.max_ips_weight`); the
random slice's lists (source `random`, propensity n / pool) are reweighted
the same way, or used alone (`RankerConfig.logged_slice = "random"`).

Approximations: the candidate models are the snapshot's, fitted on events
after some impressions — including, weakly (through item-to-item
statistics), the very clicks being predicted; the user's own history is cut
at the impression. Requests of anonymous sessions are skipped (their session
is not stored), and the request context (hour, device) is not in the
impressions frame, so those features are missing for logged rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.ranking.attributes import AttributeFeatures
from sieve.ranking.features import base_score, candidate_features
from sieve.ranking.ltr import RankerConfig, TrainingSet
from sieve.ranking.query import QueryConfig, UserLog, build_query
from sieve.realtime.counters import CategoriesOf, Replay
from sieve.retrieval.candidates import SOURCES, Candidates
from sieve.retrieval.sources import CandidateEngine

if TYPE_CHECKING:
    from sieve.storage.base import Store

#: Source tag of a slot of the random slice (`sieve.explore.random_slice`).
RANDOM_SOURCE = "random"
#: Relevance grade of a shown slot by the strongest feedback it got.
GRADES: dict[str, int] = {"click": 1, "cart": 2, "purchase": 3}


@dataclass(frozen=True)
class LoggedData:
    """Impressions (`impressions_frame` columns: one row per shown slot) and
    the feedback that cites them (events with a `request_id`: columns
    request_id, item_id, type, timestamp)."""

    impressions: pd.DataFrame
    feedback: pd.DataFrame

    @classmethod
    def from_store(cls, store: Store, until: float | None = None) -> LoggedData:
        """The store's impressions and attributed events, up to `until`."""
        impressions = store.impressions_frame()
        events = store.events_frame()
        feedback = events.loc[
            events["request_id"].notna(), ["request_id", "item_id", "type", "timestamp"]
        ]
        if until is not None:
            impressions = impressions[impressions["timestamp"] <= until]
            feedback = feedback[feedback["timestamp"] <= until]
        return cls(impressions.reset_index(drop=True), feedback.reset_index(drop=True))


def slot_labels(impressions: pd.DataFrame, feedback: pd.DataFrame) -> NDArray[np.float32]:
    """Per impression row: the highest `GRADES` grade among the feedback
    events citing its request and item (0 when none)."""
    out = np.zeros(len(impressions), np.float32)
    if impressions.empty or feedback.empty:
        return out
    grade = feedback["type"].map(GRADES)
    fb = feedback.assign(grade=grade, request_id=feedback["request_id"].astype(str))
    fb = fb[fb["grade"].notna()]
    if fb.empty:
        return out
    fb = fb.assign(item_id=fb["item_id"].astype(str))
    best = fb.groupby(["request_id", "item_id"])["grade"].max()
    keys = pd.MultiIndex.from_arrays(
        [impressions["request_id"].astype(str), impressions["item_id"].astype(str)]
    )
    return best.reindex(keys).fillna(0).to_numpy(np.float32)


def with_items(cands: Candidates, items: NDArray[np.int64]) -> Candidates:
    """The candidates plus `items` they lack (proposed by no source)."""
    missing = np.unique(items[~np.isin(items, cands.items)])
    if len(missing) == 0:
        return cands
    nan = np.full((len(missing), len(SOURCES)), np.nan, np.float32)
    return Candidates(
        np.concatenate([cands.items, missing]),
        np.vstack([cands.scores, nan]),
        np.vstack([cands.ranks, nan]),
    )


def logged_training_set(
    engine: CandidateEngine,
    dataset: Dataset,
    logged: LoggedData,
    categories: CategoriesOf,
    config: RankerConfig,
    blocked: NDArray[np.bool_] | None = None,
    shape: QueryConfig | None = None,
    attributes: AttributeFeatures | None = None,
) -> TrainingSet:
    """LambdaMART query groups of the logged requests (the latest
    `config.max_logged_requests` with a positive and a negative slot), with
    features as of each impression; see the module docstring. `engine`: the
    candidate models of `dataset`, the snapshot holding the events; `shape`:
    the funnel's query shape (each request is rebuilt by the one query builder
    from the user's events before the impression, folded in: the trained
    vectors saw what came after)."""
    imp = logged.impressions
    if imp.empty:
        return TrainingSet.empty()
    cat = engine.catalog
    imp = imp.assign(
        label=slot_labels(imp, logged.feedback),
        item=np.array([cat.find(str(i)) for i in imp["item_id"]], dtype=np.int64),
    )
    imp = imp[imp["user_id"].notna() & (imp["item"] >= 0)]
    if config.logged_slice == "random":  # only lists drawn uniformly (the random slice)
        imp = imp[imp["sources"].map(lambda s: RANDOM_SOURCE in (s or ()))]
    by_label = imp.groupby("request_id")["label"]
    imp = imp[(by_label.transform("max") > 0) & (by_label.transform("min") == 0)]
    if imp.empty:
        return TrainingSet.empty()
    served = imp.groupby("request_id", sort=False)["timestamp"].min().sort_values(kind="stable")
    served = served.iloc[-config.max_logged_requests :]
    slots = dict(tuple(imp.groupby("request_id", sort=False)))
    users = UserLog(dataset.events)
    shape = shape or QueryConfig()
    replay = Replay(dataset.events, categories)
    user_attrs: dict[str, object] = (
        dict(zip((str(u) for u in dataset.user_ids), dataset.users["attributes"], strict=True))
        if attributes is not None
        else {}
    )
    xs: list[NDArray[np.float32]] = []
    ys: list[NDArray[np.float32]] = []
    bases: list[NDArray[np.float64]] = []
    slot_ids: list[NDArray[np.int64]] = []
    weights: list[NDArray[np.float64]] = []
    for request_id, at in served.items():
        shown = slots[request_id].sort_values("position")
        user_id = str(shown["user_id"].iloc[0])
        events = users.events(user_id, float(at), before=True)
        if not events:
            continue
        query = build_query(
            events,
            item_index=cat.find,
            weights=engine.event_weights,
            shape=shape,
            user_id=user_id,
            user=-1,  # folded in: the trained vector saw what came after `at`
            now=float(at),
            user_attributes=_dict(user_attrs.get(user_id)),
            item_fields=_logged_fields(shown, cat.find) if attributes is not None else None,
        )
        req = engine.request(query)
        if not req.has_signal:
            continue
        items = shown["item"].to_numpy(np.int64)
        cands = with_items(engine.candidates(req, blocked), items)
        online = replay.advance(math.nextafter(float(at), -math.inf))  # strictly before
        x = candidate_features(engine, req, cands, online, attributes)
        row_of = {int(i): k for k, i in enumerate(cands.items)}
        at_rows = np.array([row_of[int(i)] for i in items], dtype=np.int64)
        propensity = shown["propensity"].to_numpy(np.float64)
        weight = np.minimum(
            1.0 / np.where(np.isfinite(propensity) & (propensity > 0), propensity, 1e-12),
            config.max_ips_weight,
        )
        xs.append(x[at_rows])
        ys.append(shown["label"].to_numpy(np.float32))
        bases.append(config.base_weight * base_score(x)[at_rows])
        slot_ids.append(1 + shown["position"].to_numpy(np.int64))
        weights.append(weight)
    if not xs:
        return TrainingSet.empty()
    return TrainingSet(
        np.vstack(xs),
        np.concatenate(ys),
        np.array([len(y) for y in ys], dtype=np.int64),
        np.concatenate(bases),
        np.concatenate(slot_ids),
        np.concatenate(weights),
    )


def _dict(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}


def _logged_fields(
    shown: pd.DataFrame, find: Callable[[str], int]
) -> dict[int, dict[str, float]] | None:
    """The per-item fields a `POST /rank` caller sent, as its impression
    logged them (context "fields": item id → {name: number})."""
    if "context" not in shown:
        return None
    context = shown["context"].iloc[0]
    fields = context.get("fields") if isinstance(context, dict) else None
    if not isinstance(fields, dict):
        return None
    out = {find(str(i)): dict(f) for i, f in fields.items() if isinstance(f, dict)}
    return {i: f for i, f in out.items() if i >= 0}
