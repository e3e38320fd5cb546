"""`POST /rank`: a caller's list (search results, a curated shelf) ranked by
the funnel's ranker for a user, with explanations (`sieve.serve.rank`).

Same key scope as `/recommendations` (read); 503 until a funnel is trained;
422 for an empty list, more than 1,000 items, a repeated id or a field
that is not a finite number. Unknown and unavailable ids are not an error:
they come back in `unranked` with the reason.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from sieve.serve.auth import ReadAccess
from sieve.serve.listing import MODEL_HEADER
from sieve.serve.rank_schemas import RankedList, RankRequest
from sieve.serve.routes import AUTH_ERRORS, NO_MODEL, ServiceDep
from sieve.settings import Settings


def router(settings: Settings) -> APIRouter:
    """The re-ranking router."""
    r = APIRouter(tags=["recommendations"], responses={**AUTH_ERRORS, **NO_MODEL})

    @r.post("/rank", response_model=RankedList, response_model_exclude_none=False)
    async def rank(body: RankRequest, service: ServiceDep, _: ReadAccess) -> Response:
        """The caller's items ranked for the user (best first), each with its
        score, the sources that also proposed it, a reason and with
        `explain: true` the ranker's largest feature contributions; then the
        ids it could not rank (unknown, unavailable) with the reason."""
        result = await run_in_threadpool(service.rank, body)
        exclude = None if body.explain else {"items": {"__all__": {"contributions"}}}
        return Response(
            result.model_dump_json(exclude=exclude),
            media_type="application/json",
            headers={MODEL_HEADER: result.model_version},
        )

    return r


__all__ = ["router"]
