"""`POST /events`: the feedback log.

- One or many events per request, stored atomically (all or, on any error, none)
  and committed before the 2xx answer.
- Idempotent by event id: an id already stored (or repeated in the batch) is
  not stored again; the answer counts inserted events and lists duplicates.
- `type` must be a configured event type; `item_id` must be in the catalog;
  a `timestamp` more than `max_future_skew_seconds` ahead of the server's
  clock is refused (422 naming each bad one, nothing stored). An unknown
  `user_id` is created with no attributes (so clients need not register
  users first).
- More than `max_batch` events → 413 with the limit.
- After the commit each new event goes to its user's session list in the
  cache (in batch order, so a backfilled old event counts as the most recent
  one there), and the user's last-event time is set (a precomputed list made
  before it is no longer served).
- A user created here is created before the events are appended: if the
  append then fails (store outage), the user stays, the events do not.
"""

from __future__ import annotations

from fastapi import APIRouter

from sieve.serve.auth import WriteAccess
from sieve.serve.routes import AUTH_ERRORS, TOO_LARGE, ServiceDep
from sieve.serve.schemas import EventBatch, EventsResult
from sieve.settings import Settings


def event_types(settings: Settings) -> dict[str, dict[str, object]]:
    """Each event type this server accepts: its weight and its role."""
    sem = settings.semantics
    return {
        name: {
            "weight": weight,
            "click": sem.is_click(name),
            "conversion": sem.is_conversion(name),
            "attributed": name in settings.attribution_types,
        }
        for name, weight in settings.event_weights.items()
    }


def event_types_text(settings: Settings) -> str:
    """The operation's description: the accepted types, and that they are configured."""
    rows = "\n".join(
        f"| `{name}` | {t['weight']:g} | "
        + (", ".join(k for k in ("click", "conversion", "attributed") if t[k]) or "—")
        + " |"
        for name, t in event_types(settings).items()
    )
    return (
        "Append events: atomic (all or none), idempotent by event id; unknown users are "
        "created.\n\n**Event types this server accepts** (any other `type` is refused "
        "with a 422):\n\n| type | weight | counts as |\n|---|---|---|\n"
        f"{rows}\n\nThe types are **configurable**: the `event_weights` setting "
        "(`SIEVE_EVENT_WEIGHTS` or the settings file) lists them with their weight in a "
        "user's history, and `semantics` (`click_types`, `conversion_types`) says which "
        'are clicks and conversions. See docs/reference/events.md ("Adding an event '
        'type") and docs/reference/settings.md.'
    )


def router(settings: Settings) -> APIRouter:
    """The events router."""
    r = APIRouter(prefix="/events", tags=["events"], responses=AUTH_ERRORS)

    @r.post(
        "",
        responses=TOO_LARGE,
        description=event_types_text(settings),
        openapi_extra={"x-sieve-event-types": event_types(settings)},
    )
    def post_events(batch: EventBatch, service: ServiceDep, _: WriteAccess) -> EventsResult:
        """Append events (see the module doc: atomic, idempotent by id, users auto-created)."""
        inserted, duplicates = service.record_events(batch.events)
        return EventsResult(
            received=len(batch.events),
            inserted=inserted,
            duplicates=len(duplicates),
            duplicate_ids=duplicates,
        )

    return r


__all__ = ["event_types", "event_types_text", "router"]
