"""Request and response bodies of `POST /rank` (re-ranking a caller's list)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from sieve.data.records import Id
from sieve.serve.schemas import REC_EXAMPLE, ContextIn, Label, RecommendedItem, config

# --------------------------------------------------------------- re-ranking
#: Most candidates one `POST /rank` request may send.
MAX_RANK_ITEMS = 1000
#: Most per-item fields of one candidate.
MAX_RANK_FIELDS = 32

FieldValue = Annotated[float, Field(allow_inf_nan=False)]


class RankCandidate(BaseModel):
    """One of the caller's items, with optional numbers about it (e.g. the
    search engine's text-match score): those the funnel config declares
    (`[attributes] request_numeric`) are ranker features, others are ignored."""

    model_config = config({"id": "sku-1042", "fields": {"text_match": 0.73}})

    id: Id
    fields: dict[Label, FieldValue] = Field(default_factory=dict, max_length=MAX_RANK_FIELDS)


class RankRequest(BaseModel):
    """The caller's items (for example search results) to rank for a user
    (or, without `user_id`, for an anonymous request): at most 1,000,
    distinct ids."""

    model_config = config(
        {
            "user_id": "u-77",
            "items": [
                {"id": "sku-1042", "fields": {"text_match": 0.73}},
                {"id": "sku-77", "fields": {"text_match": 0.41}},
            ],
            "context": {"device": "mobile", "page": "search"},
            "explain": True,
        }
    )

    user_id: Id | None = None
    items: list[RankCandidate] = Field(min_length=1, max_length=MAX_RANK_ITEMS)
    context: ContextIn = Field(default_factory=ContextIn)
    explain: bool = False


class UnrankedItem(BaseModel):
    """A caller's item the ranker could not rank, and why."""

    id: str
    reason: str


class RankedList(BaseModel):
    """The caller's items ranked (`items`, best first, each with its score,
    sources, a reason and with `explain` its feature contributions), then
    those it could not rank (`unranked`, in the caller's order, with the
    reason). `ignored_fields` names per-item fields the funnel config does
    not declare as features."""

    model_config = config(
        {
            "items": [REC_EXAMPLE],
            "unranked": [{"id": "sku-404", "reason": "unknown item id"}],
            "request_id": "6f1c0e9e2b9c4b7f8d2a1e3f4c5b6a79",
            "model_version": "3f2a9c1e",
            "user_id": "u-77",
            "ignored_fields": [],
        }
    )

    items: list[RecommendedItem]
    unranked: list[UnrankedItem]
    request_id: str
    model_version: str
    user_id: str | None
    ignored_fields: list[str] = Field(default_factory=list)


__all__ = [
    "MAX_RANK_FIELDS",
    "MAX_RANK_ITEMS",
    "RankCandidate",
    "RankRequest",
    "RankedList",
    "UnrankedItem",
]
