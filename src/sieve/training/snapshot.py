"""The store as training data: a `Dataset` snapshot, and bulk import of data into a store."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from sieve.data.dataset import Dataset
from sieve.data.raw import RawData
from sieve.data.records import Event, Item, User
from sieve.data.rows import id_problems
from sieve.data.schema import EVENT_COLUMNS, EventWeights
from sieve.storage import EventColumns, SQLStore, Store

log = logging.getLogger(__name__)


def with_unlisted_items(items: pd.DataFrame, item_ids: Iterable[str]) -> pd.DataFrame:
    """The items frame with a row for each of `item_ids` it lacks (events of
    items gone from the catalog): unavailable and without content, so their
    events still teach a model but they are never served."""
    gone = sorted(set(item_ids) - set(items["item_id"]))
    if not gone:
        return items
    extra = pd.DataFrame(
        {
            "item_id": gone,
            "title": "",
            "text": "",
            "categories": [[] for _ in gone],
            "created_at": np.nan,
            "attributes": [{} for _ in gone],
            "available": False,
        }
    )
    return pd.concat([items, extra], ignore_index=True)


def snapshot(store: Store, weights: Mapping[str, float], until: float | None = None) -> Dataset:
    """The store's catalog and event log as a training `Dataset` (only the
    events timestamped before `until`, epoch seconds, when given).

    Events of types no longer configured are left out (and counted in the log);
    items that have events but are gone from the catalog enter the vocabulary
    as unavailable, so their events still teach the model but they are never served.
    """
    items = store.items_frame()
    users = store.users_frame()
    events = store.events_frame()
    if until is not None:
        events = events.loc[events["timestamp"].to_numpy(np.float64) < until]
    known_type = events["type"].isin(list(weights)).to_numpy()
    if not known_type.all():
        dropped = sorted(set(events.loc[~known_type, "type"]))
        log.warning(
            "training skips %d events of unconfigured types %s", (~known_type).sum(), dropped
        )
        events = events.loc[known_type]
    if events.empty:
        raise ValueError(
            f"the store at {store.url} has no events to train on: "
            "POST /events (or import data) first"
        )
    items = with_unlisted_items(items, events["item_id"])
    return Dataset.from_frames(
        events[[*EVENT_COLUMNS, "seq"]].reset_index(drop=True),  # seq: what a model saw
        items.reset_index(drop=True),
        users,
        weights=EventWeights(weights=dict(weights)),
    )


def _when(seconds: Any) -> datetime | None:
    value = float(seconds)
    return None if math.isnan(value) else datetime.fromtimestamp(value, UTC)


def import_data(store: Store, raw: RawData, chunk: int = 10_000) -> tuple[int, int, int]:
    """Write imported frames (items, users, events) into the store; returns the counts.

    For the quickstart and tests: events go in chunks of `chunk`, each atomic and
    idempotent, so an interrupted import can simply be run again. On an
    `SQLStore` the events take the bulk path (`append_columns`), their ids
    checked first by the API's rules (`data.rows.id_problems`).
    """
    items = [
        Item(
            id=str(r.item_id),
            title=str(r.title),
            text=str(r.text),
            categories=list(r.categories),
            created_at=_when(r.created_at),
            attributes=dict(r.attributes),
        )
        for r in raw.items.itertuples(index=False)
    ]
    users = [
        User(id=str(r.user_id), attributes=dict(r.attributes))
        for r in raw.users.itertuples(index=False)
    ]
    store.upsert_items(items)
    store.upsert_users(users)
    inserted = 0
    ev = raw.events
    for column in ("event_id", "user_id", "item_id"):
        for mask, reason in id_problems(ev[column].astype(str)):
            bad = ev[column][mask].iloc[0]
            raise ValueError(f"{column} {bad!r} {reason}: the importer should have refused it")
    micros = np.round(ev["timestamp"].to_numpy(dtype=np.float64) * 1e6)
    values = ev["value"].to_numpy(dtype=np.float64)
    for start in range(0, len(ev), chunk):
        part = ev.iloc[start : start + chunk]
        if isinstance(store, SQLStore):  # the bulk path: columns, no record per event
            inserted += store.append_columns(
                EventColumns(
                    event_id=part["event_id"].astype(str).tolist(),
                    user_id=part["user_id"].astype(str).tolist(),
                    item_id=part["item_id"].astype(str).tolist(),
                    type=part["type"].astype(str).tolist(),
                    value=[None if math.isnan(v) else v for v in values[start : start + chunk]],
                    timestamp_us=[
                        None if math.isnan(t) else int(t) for t in micros[start : start + chunk]
                    ],
                ),
                create_users=False,
            )
            continue
        events = [
            Event(
                id=str(r.event_id),
                user_id=str(r.user_id),
                item_id=str(r.item_id),
                type=str(r.type),
                value=None if math.isnan(float(r.value)) else float(r.value),
                timestamp=_when(r.timestamp),
            )
            for r in part.itertuples(index=False)
        ]
        inserted += store.append_events(events).inserted
    return len(items), len(users), inserted


__all__ = ["import_data", "snapshot"]
