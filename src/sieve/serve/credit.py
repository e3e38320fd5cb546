"""Bandit credit for clicks: the served requests whose arms or exploration
slots learn from the clicks that cite them.

Kept in process memory (the newest `SERVED_MAX` requests): a click is
credited by the process that served its list.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sieve.data.records import Event
from sieve.experiments.online import Arm, ExperimentBook
from sieve.explore.slots import ExplorationSlots
from sieve.settings import EventSemantics

#: Served requests remembered for crediting clicks to bandits (newest kept).
SERVED_MAX = 100_000


@dataclass
class Served:
    """What a request was served, for crediting the clicks that cite it."""

    arms: list[tuple[str, str]]
    explored: dict[str, str]  # item id -> exploration policy
    credited: set[str] = field(default_factory=set)


class ServedRequests:
    """What recent requests served, for crediting the clicks that cite them."""

    def __init__(self, max_requests: int = SERVED_MAX) -> None:
        self.max_requests = max_requests
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, arms: Sequence[Arm], explored: dict[str, str]) -> None:
        with self._lock:
            self._served[request_id] = Served([(a.experiment.name, a.name) for a in arms], explored)
            while len(self._served) > self.max_requests:
                self._served.popitem(last=False)

    def credit(
        self,
        events: Sequence[Event],
        semantics: EventSemantics,
        explorer: ExplorationSlots,
        experiments: ExperimentBook,
    ) -> None:
        """Clicks citing a request reward its exploration slots and its
        adaptively allocated arms (at most once per request and experiment)."""
        for e in events:
            reward = semantics.reward(e.type)
            if e.request_id is None or reward <= 0:
                continue
            with self._lock:
                served = self._served.get(e.request_id)
                if served is None:
                    continue
                todo = [(x, arm) for x, arm in served.arms if x not in served.credited]
                served.credited.update(x for x, _ in todo)
                policy = served.explored.pop(e.item_id, None)
            if policy is not None:
                explorer.credit(policy, e.item_id, reward)
            for experiment, arm in todo:
                experiments.clicked(experiment, arm, reward)


__all__ = ["SERVED_MAX", "Served", "ServedRequests"]
