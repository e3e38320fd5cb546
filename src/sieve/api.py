"""The API's request and response bodies that `sieve.data.records` does not define.

Items, users and events travel as the records themselves (`Item`, `User`,
`Event`); this module adds the envelopes around them (batches, pages,
counts), the recommendation request/response shapes and the error body.
Every model forbids unknown fields and carries an OpenAPI example.

Its own package, below the service and the client: the service answers with
these models (`sieve.serve.schemas` re-exports them) and the Python client
(`sieve.client`) parses its answers into them without importing the server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sieve.data.records import (
    Attributes,
    AwareDatetime,
    Categories,
    Event,
    Id,
    Item,
    Text,
    Title,
    User,
)

_ITEM_EXAMPLE = Item.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
_USER_EXAMPLE = User.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
_EVENT_EXAMPLES = Event.model_config["json_schema_extra"]["examples"]  # type: ignore[index]

#: Longest category name and context string accepted in a request.
MAX_LABEL = 128
#: Most entries in a list-valued filter (categories, exclude, recent items).
MAX_FILTER = 1000

Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]


def _answer_config(example: Any) -> ConfigDict:
    """An answer's config: unknown fields are ignored, so a client built
    against this version still reads the answers of a newer server."""
    return ConfigDict(extra="ignore", json_schema_extra={"examples": [example]})


def _config(example: Any) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})


# ------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    """Every error: `detail` is a sentence, or for 422 a list of `{loc, msg, type}`."""

    model_config = _answer_config({"detail": "unknown item id 'sku-404'"})

    detail: str | list[dict[str, Any]]


# ------------------------------------------------------------------ catalog
class ItemBatch(BaseModel):
    """Items to insert or replace in one transaction (at most `max_batch`)."""

    model_config = _config({"items": [_ITEM_EXAMPLE]})

    items: list[Item] = Field(min_length=1)


class UserBatch(BaseModel):
    """Users to insert or replace in one transaction (at most `max_batch`)."""

    model_config = _config({"users": [_USER_EXAMPLE]})

    users: list[User] = Field(min_length=1)


class BulkResult(BaseModel):
    """How many distinct ids a bulk upsert wrote (the last of a repeated id wins)."""

    model_config = _answer_config({"upserted": 2})

    upserted: int


class ItemPatch(BaseModel):
    """A partial update of an item: the fields given replace the stored ones."""

    model_config = _config({"available": False, "attributes": {"price": 99.0}})

    title: Title | None = None
    text: Text | None = None
    categories: Categories | None = None
    created_at: AwareDatetime = None
    available: bool | None = None
    attributes: Attributes | None = None


class UserPatch(BaseModel):
    """A partial update of a user: the attributes given are merged into the stored ones."""

    model_config = _config({"attributes": {"plan": "free"}})

    attributes: Attributes = Field(default_factory=dict)


class ItemPage(BaseModel):
    """A page of the catalog in id order."""

    model_config = _config({"items": [_ITEM_EXAMPLE], "offset": 0, "limit": 100, "total": 1})

    items: list[Item]
    offset: int
    limit: int
    total: int


class UserPage(BaseModel):
    """A page of users in id order."""

    model_config = _config({"users": [_USER_EXAMPLE], "offset": 0, "limit": 100, "total": 1})

    users: list[User]
    offset: int
    limit: int
    total: int


# ------------------------------------------------------------------- events
class EventBatch(BaseModel):
    """One or more events, stored atomically: all of them or (on any error) none."""

    model_config = _config({"events": _EVENT_EXAMPLES})

    events: list[Event] = Field(min_length=1)


class EventsResult(BaseModel):
    """What `POST /events` stored: new events, and the ids already known (not stored again)."""

    model_config = _answer_config(
        {"received": 2, "inserted": 1, "duplicates": 1, "duplicate_ids": ["evt-0001"]}
    )

    received: int
    inserted: int
    duplicates: int
    duplicate_ids: list[str]


# ---------------------------------------------------------- recommendations
class ContextIn(BaseModel):
    """What the page knows about the moment of the request (all optional)."""

    model_config = _config({"hour": 20, "weekday": 4, "device": "mobile", "page": "home"})

    hour: int | None = Field(default=None, ge=0, le=23, description="0-23, product-local")
    weekday: int | None = Field(default=None, ge=0, le=6, description="0 = Monday … 6")
    device: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL)
    page: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL)


class SessionRequest(BaseModel):
    """Recommendations for an anonymous session from the items it just viewed.

    `recent_items` are item ids, most recent first; each must be in the catalog.
    `n` is at most the service's `max_n` (200 by default).
    """

    model_config = _config(
        {
            "recent_items": ["sku-1042", "sku-77"],
            "n": 10,
            "categories": ["shoes"],
            "exclude": ["sku-5"],
            "context": {"device": "mobile", "page": "item"},
        }
    )

    recent_items: list[Id] = Field(default_factory=list, max_length=MAX_FILTER)
    n: int = Field(default=10, ge=1, le=10_000)
    categories: list[Label] = Field(default_factory=list, max_length=MAX_FILTER)
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_FILTER)
    context: ContextIn = Field(default_factory=ContextIn)


_REC_EXAMPLE = {
    "id": "sku-1042",
    "score": 0.83,
    "title": "Trail running shoe",
    "categories": ["shoes", "running"],
    "explanation": "because you viewed 'Road running shoe'",
    "sources": {"item2item": 0.61, "als": 0.42},
}


class Contribution(BaseModel):
    """One feature's contribution to a ranked item's score."""

    feature: str
    value: float


class RecommendedItem(BaseModel):
    """One recommended item: score, the candidate sources that proposed it, a reason."""

    model_config = _answer_config(_REC_EXAMPLE)

    id: str
    score: float | None
    title: str
    categories: list[str]
    explanation: str
    sources: dict[str, float | None]
    #: probability that the serving policy put this item in the list (1 for a
    #: ranked slot; the bandit's inclusion probability for an exploration slot;
    #: n / pool for a list of the random slice)
    propensity: float = 1.0
    #: "ranked" (the funnel's order), "explore" (chosen by the exploration
    #: bandit) or "random" (a list of the random slice: `random_share`)
    slot: Literal["ranked", "explore", "random"] = "ranked"
    #: in an interleaving experiment, the arm whose list contributed the item
    team: str | None = None
    #: with `explain=true`: the ranker's largest feature contributions to the
    #: score (LightGBM `pred_contrib`, largest absolute value first;
    #: `base_score` is the anchoring model's part); absent otherwise
    contributions: list[Contribution] | None = None


class ExperimentArm(BaseModel):
    """An experiment the request was in and the arm it got."""

    experiment: str
    arm: str
    propensity: float = 1.0


class RecommendationList(BaseModel):
    """A served list.

    `request_id` is new for every request (send it back with the events the list
    leads to); `cached` says the list came from the batch precompute;
    `cold_start` says the user was unknown and had no history (trending items).
    """

    model_config = _answer_config(
        {
            "items": [_REC_EXAMPLE],
            "request_id": "6f1c0e9e2b9c4b7f8d2a1e3f4c5b6a79",
            "model_version": "3f2a9c1e",
            "user_id": "u-77",
            "cached": False,
            "cold_start": False,
        }
    )

    items: list[RecommendedItem]
    request_id: str
    model_version: str
    user_id: str | None
    cached: bool
    cold_start: bool
    #: the experiments this request was in (empty: the default experience)
    experiments: list[ExperimentArm] = Field(default_factory=list)
    #: with `?trace=true` (admin): the query and the ranker's features
    trace: dict[str, Any] | None = None


class SimilarItems(BaseModel):
    """Items similar to `item_id`, most similar first."""

    model_config = _answer_config(
        {
            "item_id": "sku-1042",
            "items": [_REC_EXAMPLE],
            "model_version": "3f2a9c1e",
        }
    )

    item_id: str
    items: list[RecommendedItem]
    model_version: str


class PopularItems(BaseModel):
    """The currently popular (trending) items, optionally of some categories."""

    model_config = _answer_config(
        {
            "items": [_REC_EXAMPLE],
            "categories": ["shoes"],
            "model_version": "3f2a9c1e",
        }
    )

    items: list[RecommendedItem]
    categories: list[str]
    model_version: str


class PrecomputeResult(BaseModel):
    """What a batch precompute wrote to the cache."""

    model_config = _answer_config(
        {"users": 6040, "n": 50, "model_version": "3f2a9c1e", "seconds": 12.5}
    )

    users: int
    n: int
    model_version: str
    seconds: float


# ------------------------------------------------------------------- system
class Health(BaseModel):
    """Liveness: the process answers."""

    model_config = _answer_config({"status": "ok"})

    status: str


class Readiness(BaseModel):
    """Readiness: the store answers and a model is loaded; `reason` says what is missing."""

    model_config = _answer_config(
        {"ready": True, "store": "ok", "model_version": "3f2a9c1e", "reason": None}
    )

    ready: bool
    store: str
    model_version: str | None
    reason: str | None = None


class VersionInfo(BaseModel):
    """The package version, the serving model's version (None before training)
    and which server process answered (`host:pid`, one of the replicas)."""

    model_config = _answer_config(
        {
            "version": "0.1.0",
            "model_version": "3f2a9c1e",
            "model_path": None,
            "replica": "web-1:4121",
        }
    )

    version: str
    model_version: str | None
    model_path: str | None
    replica: str


class ReloadResult(BaseModel):
    """The model served after a reload."""

    model_config = _answer_config(
        {"model_version": "3f2a9c1e", "model_path": "sieve-models/3f2a9c1e"}
    )

    model_version: str | None
    model_path: str | None


__all__ = [
    "MAX_FILTER",
    "MAX_LABEL",
    "BulkResult",
    "ContextIn",
    "Contribution",
    "ErrorBody",
    "EventBatch",
    "EventsResult",
    "ExperimentArm",
    "Health",
    "ItemBatch",
    "ItemPage",
    "ItemPatch",
    "Label",
    "PopularItems",
    "PrecomputeResult",
    "Readiness",
    "RecommendationList",
    "RecommendedItem",
    "ReloadResult",
    "SessionRequest",
    "SimilarItems",
    "UserBatch",
    "UserPage",
    "UserPatch",
    "VersionInfo",
]
