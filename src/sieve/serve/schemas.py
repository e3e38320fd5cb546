"""Request and response bodies of the service.

The bodies a client also needs live in `sieve.api` (so `sieve.client` can
parse answers without importing the server) and are re-exported here; the
experiments' bodies follow.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sieve.api import (  # the bodies shared with the client, re-exported
    _REC_EXAMPLE,
    MAX_FILTER,
    MAX_LABEL,
    BulkResult,
    ContextIn,
    Contribution,
    ErrorBody,
    EventBatch,
    EventsResult,
    ExperimentArm,
    Health,
    ItemBatch,
    ItemPage,
    ItemPatch,
    Label,
    PopularItems,
    PrecomputeResult,
    Readiness,
    RecommendationList,
    RecommendedItem,
    ReloadResult,
    SessionRequest,
    SimilarItems,
    UserBatch,
    UserPage,
    UserPatch,
    VersionInfo,
    _config,
)

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


# ------------------------------------------------------------ experiments
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class VariantIn(BaseModel):
    """One arm: its traffic share (0 for a shadow), and what it changes — a
    registered model version and/or `config` (`exploration_slots` 0-50,
    `exploration_policy` thompson|ucb1|epsilon)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    share: float = Field(ge=0.0, le=1.0)
    model_version: str | None = Field(default=None, min_length=1, max_length=256)
    config: dict[str, Any] | None = None
    shadow: bool = False


class ExperimentIn(BaseModel):
    """A new experiment (see `sieve.experiments.assignment.Experiment`)."""

    model_config = _config(
        {
            "name": "explore-2",
            "variants": [
                {"name": "control", "share": 0.5},
                {"name": "explore", "share": 0.5, "config": {"exploration_slots": 2}},
            ],
        }
    )

    name: str = Field(pattern=_NAME)
    layer: str = Field(default="default", pattern=_NAME)
    kind: Literal["ab", "interleaving"] = "ab"
    allocation: Literal["fixed", "thompson", "linucb"] = "fixed"
    variants: list[VariantIn] = Field(min_length=1, max_length=20)
    holdout_share: float = Field(default=0.0, ge=0.0, lt=1.0)
    traffic: float = Field(default=1.0, gt=0.0, le=1.0)
    salt: str | None = Field(default=None, min_length=1, max_length=256)


class VariantOut(BaseModel):
    name: str
    share: float
    model_version: str | None = None
    config: dict[str, Any] | None = None
    shadow: bool = False


class ExperimentOut(BaseModel):
    """A stored experiment with its status and life-cycle times (epoch seconds)."""

    name: str
    layer: str
    kind: str
    allocation: str
    status: str
    unit: str
    salt: str
    holdout_share: float
    traffic: float
    variants: list[VariantOut]
    created_at: float
    stopped_at: float | None


#: For schemas of other modules (`sieve.serve.rank_schemas`).
config = _config
REC_EXAMPLE = _REC_EXAMPLE
