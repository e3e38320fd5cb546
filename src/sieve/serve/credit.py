"""Bandit credit for clicks: the served requests whose arms or exploration
slots learn from the clicks that cite them.

A request answered with an adaptively allocated arm or with exploration
slots is recorded in the cache (`served:<request id>`, about 100 bytes, kept
as long as a click may be attributed to it: the service's
`attribution_window_seconds`): with Redis, whichever replica receives the
click finds what another replica served. Redis holds about one record per
such request of the last window (1,000 exploring requests a second over a
30-minute window: 1.8 million records, a few hundred MB). A click credits
each of its request's bandits at most once: the claim
`credited:<request id>:<what>` is an atomic add (SET NX), so two clicks
arriving at two replicas at once cannot both credit it.

With the per-process memory cache the records go to a private bounded cache
(the newest `SERVED_MAX`), so they never evict precomputed lists.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sieve.data.records import Event
from sieve.experiments.online import Arm, ExperimentBook
from sieve.explore.slots import ExplorationSlots
from sieve.settings import EventSemantics
from sieve.storage import Cache, CacheError, MemoryCache

log = logging.getLogger("sieve.serve")

#: Served requests remembered by a per-process cache (newest kept).
SERVED_MAX = 100_000
#: Seconds a served request can be credited by a click that cites it (default;
#: the service uses its attribution window).
SERVED_TTL = 1800.0
#: Seconds between two warnings about a failing cache.
WARN_SECONDS = 10.0


def served_key(request_id: str) -> str:
    return f"served:{request_id}"


class ServedRequests:
    """What recent requests served, for crediting the clicks that cite them."""

    def __init__(self, cache: Cache | None = None, ttl: float = SERVED_TTL) -> None:
        shared = cache is not None and not isinstance(cache, MemoryCache)
        self.cache: Cache = cache if shared and cache is not None else MemoryCache(SERVED_MAX)
        self.ttl = ttl
        self._warned = -WARN_SECONDS

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_SECONDS:
            self._warned = now
            log.warning("bandit credit: %s (cache unavailable)", what, exc_info=True)

    def remember(
        self,
        request_id: str,
        arms: Sequence[Arm],
        explored: dict[str, str],
        contexts: Mapping[str, tuple[str, list[float]]] | None = None,
    ) -> None:
        """Record what a request served that a click can credit: its
        adaptively allocated arms (with a LinUCB arm's context), its explored
        items (item → policy) and the context of each LinUCB-explored item
        (item → (model key, context))."""
        adaptive = [
            [a.experiment.name, a.name, *([list(a.context)] if a.context is not None else [])]
            for a in arms
            if a.experiment.allocation != "fixed"
        ]
        if not adaptive and not explored:
            return
        try:
            record: dict[str, Any] = {"arms": adaptive, "explored": explored}
            if contexts:
                record["linucb"] = {i: [k, list(x)] for i, (k, x) in contexts.items()}
            self.cache.set_json(served_key(request_id), record, self.ttl)
        except CacheError:
            self._warn("a served request not recorded")

    def credit(
        self,
        events: Sequence[Event],
        semantics: EventSemantics,
        explorer: ExplorationSlots,
        experiments: ExperimentBook,
    ) -> None:
        """Clicks citing a request reward its exploration slots (once per
        request and item) and its adaptively allocated arms (once per request
        and experiment)."""
        todo = [
            (e, reward)
            for e in events
            if e.request_id is not None and (reward := semantics.reward(e.type)) > 0
        ]
        if not todo:
            return
        ids = list(dict.fromkeys(str(e.request_id) for e, _ in todo))
        try:
            found = dict(zip(ids, self.cache.get_many([served_key(r) for r in ids]), strict=True))
            for e, reward in todo:
                self._credit(e, reward, found[str(e.request_id)], explorer, experiments)
        except CacheError:
            self._warn("clicks not credited")

    def _credit(
        self,
        event: Event,
        reward: float,
        raw: bytes | None,
        explorer: ExplorationSlots,
        experiments: ExperimentBook,
    ) -> None:
        if raw is None:
            return
        served = json.loads(raw)
        request = str(event.request_id)
        policy = served.get("explored", {}).get(event.item_id)
        if policy is not None and self._claim(request, f"item:{event.item_id}"):
            linear = served.get("linucb", {}).get(event.item_id)
            if linear is not None:
                explorer.credit_linear(str(linear[0]), linear[1], reward)
            elif policy != "linucb":
                explorer.credit(policy, event.item_id, reward)
        for experiment, arm, *context in served.get("arms", []):
            if self._claim(request, f"experiment:{experiment}"):
                experiments.clicked(experiment, arm, reward, context[0] if context else None)

    def _claim(self, request_id: str, what: str) -> bool:
        """True for the first claim of this credit, in any process."""
        return self.cache.add(f"credited:{request_id}:{what}", b"1", self.ttl)


__all__ = ["SERVED_MAX", "SERVED_TTL", "ServedRequests", "served_key"]
