"""`sieve simulate`: synthetic users driving a running service over HTTP.

The service must serve the catalog of a synthetic world (e.g. `sieve
quickstart --data synthetic:...`, or `import_data` of `load_data(spec)`);
the simulator rebuilds the same world from the same spec, so it knows every
user's true click probability for every item (`SyntheticWorld.click_probability`).

Each simulated request: a user drawn uniformly from the world's users asks
`GET /recommendations/{user}`; the user examines position p with probability
1/log2(p + 2) (the position bias of DCG) and clicks an examined item with its
true probability; a click turns into a purchase with `purchase_rate`, worth
the item's price. The clicks and purchases go back as events citing the
request id, through `POST /events`, exactly as a site would send them —
through `sieve.client.SieveClient`, as a site's Python code would.

Bounded in both count (`requests`) and time (`seconds`), so a run always
ends. The result counts requests, shown slots, clicks and the *true*
expected clicks per experiment arm (and for exploration slots), so a report
computed by the service can be checked against ground truth.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sieve.client import SieveClient, SieveError
from sieve.data.synthetic import SyntheticWorld


class SimulationError(RuntimeError):
    """The service refused or failed a request the simulator had to make."""


@dataclass
class ArmTally:
    """What one arm (or the default experience) served and got."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    expected_clicks: float = 0.0  # Σ true click probability × examination
    explore_impressions: int = 0
    explore_clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def true_ctr(self) -> float:
        return self.expected_clicks / self.impressions if self.impressions else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "purchases": self.purchases,
            "ctr": self.ctr,
            "true_ctr": self.true_ctr,
            "explore_impressions": self.explore_impressions,
            "explore_clicks": self.explore_clicks,
        }


@dataclass
class SimulationResult:
    """Per-arm tallies (key ``experiment/arm``, or ``default``) and totals."""

    arms: dict[str, ArmTally] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.seconds,
            "arms": {k: v.to_dict() for k, v in sorted(self.arms.items())},
        }


def world_from_spec(spec: str) -> SyntheticWorld:
    """The world of a `synthetic[:key=value,...]` data spec (same seed, same world)."""
    from sieve.data.io import _synthetic_config

    scheme, _, rest = spec.partition(":")
    if scheme != "synthetic":
        raise ValueError(
            f"the simulator needs the ground truth of a synthetic world: give "
            f"'synthetic[:key=value,...]', not {spec!r}"
        )
    return SyntheticWorld(_synthetic_config(rest))


def examination(position: int) -> float:
    """Probability that a user looks at 0-based `position` (DCG's discount)."""
    return 1.0 / math.log2(position + 2)


class Simulator:
    """Drives one service with the users of one synthetic world."""

    def __init__(
        self,
        world: SyntheticWorld,
        base_url: str,
        *,
        api_key: str | None = None,
        n: int = 10,
        purchase_rate: float = 0.1,
        seed: int = 0,
        timeout: float = 10.0,
        users: int | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("n must be at least 1")
        if not 0.0 <= purchase_rate <= 1.0:
            raise ValueError(f"purchase_rate must be in [0, 1], got {purchase_rate}")
        self.world = world
        self.n = n
        self.purchase_rate = purchase_rate
        self.rng = np.random.default_rng(seed)
        self.client = SieveClient(base_url, api_key=api_key, timeout=timeout)
        self._item_index = {str(i): k for k, i in enumerate(world.item_ids)}
        count = len(world.user_ids) if users is None else min(users, len(world.user_ids))
        if count < 1:
            raise ValueError("users must be at least 1")
        self._users = np.arange(count)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(
        self,
        requests: int,
        seconds: float,
        progress: Callable[[int], None] | None = None,
    ) -> SimulationResult:
        """Up to `requests` requests within `seconds`; `progress(done)` after each."""
        if requests < 1 or seconds <= 0:
            raise ValueError("requests must be ≥ 1 and seconds > 0")
        result = SimulationResult()
        start = time.perf_counter()
        deadline = start + seconds
        for done in range(requests):
            if time.perf_counter() >= deadline:
                break
            self._one(result)
            if progress is not None:
                progress(done + 1)
        result.seconds = time.perf_counter() - start
        return result

    def _one(self, result: SimulationResult) -> None:
        u = int(self.rng.choice(self._users))
        user_id = str(self.world.user_ids[u])
        result.requests += 1
        try:
            body = self.client.recommend(user_id, n=self.n)
        except SieveError as e:
            result.errors += 1
            if e.status in (401, 403, 404, 422):
                raise SimulationError(str(e)) from None
            return
        keys = [f"{a.experiment}/{a.arm}" for a in body.experiments] or ["default"]
        tallies = [result.arms.setdefault(k, ArmTally()) for k in keys]
        events: list[dict[str, Any]] = []
        for position, item in enumerate(body.items):
            index = self._item_index.get(item.id)
            p_true = (
                0.0
                if index is None
                else float(self.world.click_probability(u, index)) * examination(position)
            )
            clicked = bool(self.rng.random() < p_true)
            explore = item.slot == "explore"
            for t in tallies:
                t.impressions += 1
                t.expected_clicks += p_true
                t.clicks += clicked
                if explore:
                    t.explore_impressions += 1
                    t.explore_clicks += clicked
            if not clicked:
                continue
            events.append(self._event(user_id, item.id, "click", body.request_id))
            if self.rng.random() < self.purchase_rate and index is not None:
                price = float(self.world.item_price[index])
                events.append(self._event(user_id, item.id, "purchase", body.request_id, price))
                for t in tallies:
                    t.purchases += 1
        for t in tallies:
            t.requests += 1
        if events:
            try:
                self.client.send_events(events)
            except SieveError as e:
                raise SimulationError(str(e)) from None

    @staticmethod
    def _event(
        user_id: str, item_id: str, kind: str, request_id: str, value: float | None = None
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "user_id": user_id,
            "item_id": item_id,
            "type": kind,
            "request_id": request_id,
        }
        if value is not None:
            event["value"] = value
        return event


__all__ = [
    "ArmTally",
    "SimulationError",
    "SimulationResult",
    "Simulator",
    "examination",
    "world_from_spec",
]
