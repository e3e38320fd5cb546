"""Re-ranking a caller's list (`POST /rank`): the caller's candidates — for
example search results — ranked by the funnel's ranker for a user.

The candidates are the caller's items, with what the funnel's sources said
of them, scored by the same features as every served list
(`sieve.pipeline.served.rank_items`); per-item numbers the caller sends
(a text-match score) are features when the funnel config declares them
(`[attributes] request_numeric`), and named in `ignored_fields` otherwise.
Ids the catalog does not know, and items no longer available, are not
ranked: they follow the ranked ones in `unranked`, in the caller's order,
each with its reason. The list is logged as an impression like any served
list (with the declared fields in its context), so clicks on it are
attributed and the ranker can learn from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sieve.serve.errors import InvalidInput, field_error
from sieve.serve.holder import ModelHolder
from sieve.serve.listing import listed, new_request_id
from sieve.serve.live import LiveAnswers
from sieve.serve.rank_schemas import RankedList, RankRequest, UnrankedItem
from sieve.serve.schemas import RecommendationList
from sieve.types import Context

UNKNOWN = "unknown item id"
UNAVAILABLE = "not available"

LogImpression = Callable[[RecommendationList, Mapping[str, Any]], None]


class CallerRanking:
    """`POST /rank`'s service side (see the module doc)."""

    def __init__(self, holder: ModelHolder, live: LiveAnswers, log: LogImpression) -> None:
        self.holder = holder
        self.live = live
        self._log = log

    def rank(self, body: RankRequest) -> RankedList:
        """The caller's items ranked for `body.user_id` (see the module doc);
        `InvalidInput` (422) for a repeated id."""
        _check_distinct([c.id for c in body.items])
        snap = self.holder.snapshot
        funnel = snap.funnel
        catalog = funnel.state.engine.catalog
        declared = set(funnel.config.attributes.request_numeric)
        ranked_at: list[int] = []
        fields: dict[int, dict[str, float]] = {}
        unranked: list[UnrankedItem] = []
        ignored: set[str] = set()
        for candidate in body.items:
            index = catalog.find(candidate.id)
            ignored.update(k for k in candidate.fields if k not in declared)
            if index < 0:
                unranked.append(UnrankedItem(id=candidate.id, reason=UNKNOWN))
            elif not catalog.available[index]:
                unranked.append(UnrankedItem(id=candidate.id, reason=UNAVAILABLE))
            else:
                ranked_at.append(index)
                kept = {k: v for k, v in candidate.fields.items() if k in declared}
                if kept:
                    fields[index] = kept
        request_id = new_request_id()
        user_id = body.user_id
        c = body.context
        context = Context(hour=c.hour, weekday=c.weekday, device=c.device, page=c.page)
        events: Sequence[tuple[str, str]] = []
        attrs: Mapping[str, Any] = {}
        if user_id is not None:
            events = self.live.user_events(funnel, user_id)
            attrs = self.live.user_attributes([funnel], user_id)
        query = funnel.query(
            events,
            user_id,
            n=len(ranked_at),
            context=context,
            now=time.time(),
            request_id=request_id,
            user_attributes=attrs,
            item_fields=fields,
        )
        with self.live.lane.held():
            recs = funnel.rank_items(
                query, np.array(ranked_at, dtype=np.int64), explain=body.explain
            )
            items = listed(funnel, recs, body.explain)
        served = RecommendationList(
            items=items,
            request_id=request_id,
            model_version=snap.version,
            user_id=user_id,
            cached=False,
            cold_start=funnel.is_cold(query),
        )
        logged: dict[str, Any] = {
            "hour": c.hour,
            "weekday": c.weekday,
            "device": c.device,
            "page": c.page,
            "rank": True,
            "unranked": len(unranked) or None,
        }
        if fields:
            ids = catalog.item_ids
            logged["fields"] = {str(ids[i]): f for i, f in fields.items()}
        self._log(served, logged)
        return RankedList(
            items=items,
            unranked=unranked,
            request_id=request_id,
            model_version=snap.version,
            user_id=user_id,
            ignored_fields=sorted(ignored),
        )


def _check_distinct(ids: Sequence[str]) -> None:
    """A repeated id is a caller's mistake: 422 naming each repeat."""
    seen: set[str] = set()
    errors = []
    for pos, item_id in enumerate(ids):
        if item_id in seen:
            errors.append(
                field_error(("body", "items", pos, "id"), f"item id {item_id!r} is listed twice")
            )
        seen.add(item_id)
    if errors:
        raise InvalidInput(errors[:50])


__all__ = ["UNAVAILABLE", "UNKNOWN", "CallerRanking"]
