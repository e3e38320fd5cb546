"""Records of the catalog and the event log: `Item`, `User`, `Event`.

One set of pydantic models serves as the storage records and as the REST
request/response bodies, so what the API accepts is exactly what the store
keeps. Validation fails with messages naming the field: unknown fields are
rejected (a typo must not be dropped silently), ids must be non-empty, event
values finite, and datetimes are made timezone-aware (a naive datetime is
taken as UTC) so stored times are never ambiguous.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

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


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _aware(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC; aware ones are kept as given."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


#: A non-empty, non-blank id of at most MAX_ID_LENGTH characters.
Id = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_not_blank),
]
#: A timezone-aware datetime (naive input → UTC). Numbers are read as epoch seconds.
AwareDatetime = Annotated[datetime | None, AfterValidator(_aware)]
#: A free-form attribute map; values must be JSON values so every store can keep them.
Attributes = dict[str, JsonValue]


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
    title: str = ""
    text: str = ""
    categories: list[str] = Field(default_factory=list)
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
    request_id: Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None = None


__all__ = ["MAX_ID_LENGTH", "MAX_TYPE_LENGTH", "Event", "Item", "User"]


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
