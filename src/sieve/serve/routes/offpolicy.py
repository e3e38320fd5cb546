"""The dashboard's off-policy views: the random slice beside the policy, and
candidates estimated on the logged lists.

- `GET /dashboard/api/slices?minutes=` (`read`): the observed CTR per slot of
  the policy's lists and of the random slice (`random_share`) over the
  window, each with its 95% interval, and the examination per position the
  random slice measures. Reads at most `MAX_SLICE_REQUESTS` requests, page by
  page (`Store.logged_slots`).
- `POST /dashboard/api/offpolicy` (`admin`: it may train models): estimates
  of each named candidate's CTR on the window's logged requests (IPS, SNIPS,
  DR with intervals, support and warnings: `sieve.training.offpolicy`), at
  most `max_requests` requests. Runs in the thread pool on the background
  store (no request time limit: a candidate to train reads the event log).
"""

# No `from __future__ import annotations`: FastAPI must see the closure-local
# parameter types as objects, not as strings.

import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from sieve.serve.auth import AdminAccess, ReadAccess
from sieve.serve.routes import AUTH_ERRORS, ServiceDep
from sieve.serve.routes.dashboard import json_safe
from sieve.settings import Settings

#: Most requests a slice summary reads (the oldest of its window).
MAX_SLICE_REQUESTS = 20_000
#: Longest window either view accepts, in minutes (30 days).
MAX_MINUTES = 43_200


class OffPolicyRequest(BaseModel):
    """Candidates to estimate on the last `minutes` of logged lists."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"candidates": ["ease", "current"], "minutes": 60, "slice": "auto"},
            ]
        },
    )

    candidates: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1,
        max_length=5,
        description="model names, funnel configs (.toml) or registered versions "
        "(`current`, `version:V`)",
    )
    minutes: int = Field(default=60, ge=1, le=MAX_MINUTES)
    slice: Literal["auto", "random", "all"] = "auto"
    max_requests: int = Field(default=5000, ge=1, le=50_000)


def router(settings: Settings) -> APIRouter:
    """The off-policy dashboard router."""
    r = APIRouter(tags=["dashboard"], responses=AUTH_ERRORS)
    click_types = list(settings.semantics.click_types)

    @r.get("/dashboard/api/slices")
    def slices(
        service: ServiceDep,
        _: ReadAccess,
        minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES, description="window length")] = 60,
    ) -> dict[str, Any]:
        """The policy's CTR and the random slice's over the last `minutes`."""
        from sieve.training.offpolicy import slice_ctrs

        service.impressions.flush()
        now = time.time()
        out = slice_ctrs(
            service.store, now - 60 * minutes, now + 1e-6, click_types, MAX_SLICE_REQUESTS
        )
        out.update(minutes=minutes, random_share=settings.random_share, max=MAX_SLICE_REQUESTS)
        return dict(json_safe(out))

    @r.post("/dashboard/api/offpolicy")
    def offpolicy(body: OffPolicyRequest, service: ServiceDep, _: AdminAccess) -> dict[str, Any]:
        """Each candidate's CTR estimated off-policy on the last `minutes` of logs."""
        from sieve.training.offpolicy import CandidateError, evaluate_logged, parse_candidate

        service.impressions.flush()
        store = service.background_store
        until = time.time() + 1e-6
        since = until - 60 * body.minutes
        try:
            candidates = [
                parse_candidate(c, store, Path(settings.model_dir), settings.event_weights, since)
                for c in body.candidates
            ]
            result = evaluate_logged(
                store,
                candidates,
                since,
                until,
                click_types,
                slice=body.slice,
                max_requests=body.max_requests,
            )
        except (CandidateError, ValueError) as e:
            raise HTTPException(
                422, detail=[{"loc": ["body"], "msg": str(e), "type": "value_error"}]
            ) from None
        return dict(json_safe({**result.to_dict(), "since": since, "until": until}))

    return r


__all__ = ["MAX_SLICE_REQUESTS", "OffPolicyRequest", "router"]
