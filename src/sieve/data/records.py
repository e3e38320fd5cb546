"""Records of the catalog and the event log: `Item`, `User`, `Event`.

One set of pydantic models serves as the storage records and as the REST
request/response bodies, so what the API accepts is exactly what the store
keeps. Validation fails with messages naming the field: unknown fields are
rejected (a typo must not be dropped silently), ids must be non-empty and
free of control characters (a NUL cannot be stored by PostgreSQL; a newline
in an id breaks every log line that names it), event values finite, and
datetimes are made timezone-aware (a naive datetime is taken as UTC) so
stored times are never ambiguous.

Every text field has a length limit (`MAX_TITLE_LENGTH`, `MAX_TEXT_LENGTH`,
`MAX_LABEL_LENGTH`, `MAX_CATEGORIES`, `MAX_ATTRIBUTES_BYTES`): the catalog is
loaded into every serving process, so one oversized record costs every one
of them. Timestamps far in the future are checked where the clock is known
(`future_timestamp_errors`): they would pin decayed counters for ever.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
)

#: Longest accepted id (items, users, events, request ids).
MAX_ID_LENGTH = 256
#: Longest accepted event type.
MAX_TYPE_LENGTH = 32
#: Longest item title (characters).
MAX_TITLE_LENGTH = 1_000
#: Longest item text (characters): a description, not a document.
MAX_TEXT_LENGTH = 100_000
#: Longest category name (characters); the same bound as a category filter.
MAX_LABEL_LENGTH = 128
#: Most categories of one item.
MAX_CATEGORIES = 100
#: Largest attribute map of an item or a user, as compact JSON (bytes).
MAX_ATTRIBUTES_BYTES = 64 * 1024
#: Default of `Settings.max_future_skew_seconds`: how far ahead of the server's
#: clock an event's timestamp may be (clients' clocks drift; years do not).
DEFAULT_MAX_FUTURE_SKEW_SECONDS = 300.0

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _no_control(value: str) -> str:
    """Ids and labels are single-line printable text."""
    bad = _CONTROL.search(value)
    if bad is not None:
        raise ValueError(
            f"must not contain control characters (found U+{ord(bad.group()):04X} "
            f"at position {bad.start()})"
        )
    return value


def _no_nul(value: str) -> str:
    """Free text may hold newlines and tabs, never NUL (PostgreSQL cannot store it)."""
    at = value.find("\x00")
    if at >= 0:
        raise ValueError(f"must not contain NUL characters (found at position {at})")
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _small_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_ATTRIBUTES_BYTES as compact JSON, and no NUL (PostgreSQL's
    JSON refuses `\\u0000`)."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(
            f"attributes of {size} bytes (as JSON) exceed the limit of "
            f"{MAX_ATTRIBUTES_BYTES} bytes: keep large data out of the catalog"
        )
    if _has_nul(value):
        raise ValueError("attributes must not contain NUL characters")
    return value


def _aware(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC; aware ones are kept as given."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


#: A non-empty, non-blank id of at most MAX_ID_LENGTH characters, no control characters.
Id = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_not_blank),
    AfterValidator(_no_control),
]
#: An optional reference id (a request id): no control characters either.
RefId = Annotated[str, Field(max_length=MAX_ID_LENGTH), AfterValidator(_no_control)]
#: An item title of at most MAX_TITLE_LENGTH characters.
Title = Annotated[str, Field(max_length=MAX_TITLE_LENGTH), AfterValidator(_no_nul)]
#: An item description of at most MAX_TEXT_LENGTH characters (newlines allowed).
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH), AfterValidator(_no_nul)]
#: A category name of at most MAX_LABEL_LENGTH characters.
Category = Annotated[str, Field(max_length=MAX_LABEL_LENGTH), AfterValidator(_no_nul)]
#: An item's categories (at most MAX_CATEGORIES).
Categories = Annotated[list[Category], Field(max_length=MAX_CATEGORIES)]
#: A timezone-aware datetime (naive input → UTC). Numbers are read as epoch seconds.
AwareDatetime = Annotated[datetime | None, AfterValidator(_aware)]
#: A free-form attribute map; values must be JSON values so every store can keep them,
#: at most MAX_ATTRIBUTES_BYTES as JSON.
Attributes = Annotated[dict[str, JsonValue], AfterValidator(_small_attributes)]


class Item(BaseModel):
    """A catalog item. `available=False` keeps it in the catalog but out of lists."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "sku-1042",
                    "title": "Trail running shoe",
                    "text": "Lightweight shoe with a grippy sole for muddy trails.",
                    "categories": ["shoes", "running"],
                    "created_at": "2024-03-01T12:00:00Z",
                    "available": True,
                    "attributes": {"brand": "Fastfeet", "price": 119.0},
                }
            ]
        },
    )

    id: Id
    title: Title = ""
    text: Text = ""
    categories: Categories = Field(default_factory=list)
    created_at: AwareDatetime = None
    available: bool = True
    attributes: Attributes = Field(default_factory=dict)


class User(BaseModel):
    """A user with free-form attributes (e.g. a segment used for fairness figures)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"id": "u-77", "attributes": {"country": "DE", "plan": "pro"}}]
        },
    )

    id: Id
    attributes: Attributes = Field(default_factory=dict)


class Event(BaseModel):
    """One feedback event of the append-only log.

    `id` is chosen by the client and makes delivery idempotent: an event sent
    twice is stored once. `type` is checked against the configured event types
    later; here only its shape (lowercase letters and underscores). `value` is
    the rating of a rating event, None for a click. `timestamp` is set to the
    time of storage when absent. `request_id` links the event to the
    recommendation request that showed the item, if any.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "evt-0001",
                    "user_id": "u-77",
                    "item_id": "sku-1042",
                    "type": "click",
                    "timestamp": "2024-03-02T08:15:00Z",
                    "request_id": "req-5f1c",
                },
                {
                    "id": "evt-0002",
                    "user_id": "u-77",
                    "item_id": "sku-1042",
                    "type": "rating",
                    "value": 4.5,
                },
            ]
        },
    )

    id: Id
    user_id: Id
    item_id: Id
    type: Annotated[str, Field(min_length=1, max_length=MAX_TYPE_LENGTH, pattern=r"^[a-z_]+$")]
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None
    timestamp: AwareDatetime = None
    request_id: RefId | None = None


class InvalidRecords(ValueError):
    """Records that parsed but cannot be accepted: `errors` in pydantic's
    `{loc, msg, type}` form (the service answers 422 with them)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.errors = errors


def future_timestamp_errors(
    events: Sequence[Event],
    now: datetime,
    max_skew_seconds: float = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
    loc: Sequence[str | int] = ("body", "events"),
) -> list[dict[str, Any]]:
    """One error per event whose timestamp is more than `max_skew_seconds` after
    `now` (the caller's clock, injected so tests need not wait), naming its index.

    A far-future event would count at full weight in decayed counters until
    that date and sort first in every history; it is a client's bug, not data.
    """
    latest = now.timestamp() + max_skew_seconds
    errors: list[dict[str, Any]] = []
    for i, e in enumerate(events):
        if e.timestamp is not None and e.timestamp.timestamp() > latest:
            errors.append(
                {
                    "loc": [*loc, i, "timestamp"],
                    "msg": f"timestamp {e.timestamp.isoformat()} is more than "
                    f"{max_skew_seconds:g} s after the server's time {now.isoformat()} "
                    "(max_future_skew_seconds): send the time the event happened, "
                    "or leave it out to use the time of storage",
                    "type": "future_timestamp",
                }
            )
    return errors


def reject_future_timestamps(
    events: Sequence[Event],
    now: datetime | None = None,
    max_skew_seconds: float = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
) -> None:
    """Raise `InvalidRecords` naming every event timestamped too far ahead of `now`
    (default: the current time)."""
    errors = future_timestamp_errors(events, now or datetime.now(UTC), max_skew_seconds)
    if errors:
        raise InvalidRecords(errors[:50])


__all__ = [
    "DEFAULT_MAX_FUTURE_SKEW_SECONDS",
    "MAX_ATTRIBUTES_BYTES",
    "MAX_CATEGORIES",
    "MAX_ID_LENGTH",
    "MAX_LABEL_LENGTH",
    "MAX_TEXT_LENGTH",
    "MAX_TITLE_LENGTH",
    "MAX_TYPE_LENGTH",
    "Event",
    "InvalidRecords",
    "Item",
    "User",
    "future_timestamp_errors",
    "reject_future_timestamps",
]


class ImpressionItem(BaseModel):
    """One slot of a served list: what was shown where, and how likely the
    policy was to put it there (the propensity that off-policy estimates need)."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id
    position: int = Field(ge=0)
    score: float = Field(allow_inf_nan=False)
    sources: list[str] = Field(default_factory=list)
    propensity: float = Field(default=1.0, gt=0.0, le=1.0)


class ImpressionArm(BaseModel):
    """One experiment a request was in: the arm it got and the probability of
    that arm (1 under a sticky hash split; the bandit's under adaptive allocation)."""

    model_config = ConfigDict(extra="forbid")

    experiment: Id
    arm: Id
    propensity: float = Field(default=1.0, gt=0.0, le=1.0)


class Impression(BaseModel):
    """A served response as it was logged: request id, user, the items with
    positions, scores and sources, the experiment arm and the model version."""

    model_config = ConfigDict(extra="forbid")

    request_id: Id
    user_id: str | None = None
    timestamp: AwareDatetime = None
    model_version: str = ""
    experiment: str | None = None
    arm: str | None = None
    context: Attributes = Field(default_factory=dict)
    items: list[ImpressionItem] = Field(default_factory=list)
    #: every experiment the request was in (`experiment`/`arm` repeat the first)
    arms: list[ImpressionArm] = Field(default_factory=list)
