"""Seeded served lists and events for the analytics tests (KPIs, reports, drift).

`seed_traffic` logs `requests` served lists of `slots` items each, split
between the arms of one experiment, and events on them: views, clicks, carts
and purchases citing the list (at per-arm rates, so the arms' CTRs differ),
plus events citing nothing. Everything happens in `[now - span, now)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from sieve.data.records import Event, Impression, ImpressionArm, ImpressionItem
from sieve.storage.base import Store

#: Per arm: (P(click), P(cart), P(purchase)) of a shown slot.
RATES = {"control": (0.10, 0.04, 0.02), "treatment": (0.25, 0.08, 0.05)}


@dataclass(frozen=True)
class Traffic:
    impressions: list[Impression]
    events: list[Event]


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def seed_traffic(
    store: Store,
    *,
    seed: int = 0,
    now: float = 1_800_000_000.0,
    span: float = 3000.0,
    requests: int = 120,
    slots: int = 5,
    experiment: str = "exp",
    model_version: str = "v1",
    event_id_prefix: str = "",
) -> Traffic:
    """Log the traffic described in the module doc into `store`; return it."""
    rng = np.random.default_rng(seed)
    impressions: list[Impression] = []
    events: list[Event] = []
    arms = list(RATES)
    for r in range(requests):
        arm = arms[r % 2]
        t = now - span + float(rng.uniform(0, span - 120))
        user = f"u{int(rng.integers(0, 40))}"
        rid = f"{event_id_prefix}r{r}"
        items = [f"i{int(k)}" for k in rng.choice(60, size=slots, replace=False)]
        impressions.append(
            Impression(
                request_id=rid,
                user_id=user,
                timestamp=_at(t),
                model_version=model_version,
                experiment=experiment,
                arm=arm,
                items=[
                    ImpressionItem(item_id=i, position=p, score=float(rng.normal()))
                    for p, i in enumerate(items)
                ],
                arms=[ImpressionArm(experiment=experiment, arm=arm)],
            )
        )
        for p, item in enumerate(items):
            p_click, p_cart, p_buy = RATES[arm]
            later = t + 1.0 + p
            kinds = [("view", 1.0)]
            kinds += [("click", p_click), ("cart", p_cart), ("purchase", p_buy)]
            for kind, prob in kinds:
                if rng.random() < prob:
                    events.append(
                        Event(
                            id=f"{event_id_prefix}e{len(events)}",
                            user_id=user,
                            item_id=item,
                            type=kind,
                            value=float(rng.integers(5, 50)) if kind == "purchase" else None,
                            timestamp=_at(later),
                            request_id=None if kind == "view" else rid,
                        )
                    )
    # events citing no request (browsing outside the lists)
    for k in range(60):
        t = now - span + float(rng.uniform(0, span))
        events.append(
            Event(
                id=f"{event_id_prefix}x{k}",
                user_id=f"u{int(rng.integers(0, 50))}",
                item_id=f"i{int(rng.integers(0, 60))}",
                type=str(rng.choice(["view", "click", "cart"])),
                timestamp=_at(t),
            )
        )
    store.log_impressions(impressions)
    store.append_events(events)
    return Traffic(impressions, events)
