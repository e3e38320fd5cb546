"""One router per resource; each module's `router(settings)` builds it.

Routers are built per app (not at import time) so limits from the settings
(`max_n`, …) appear in the OpenAPI document and in pydantic's own messages.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from sieve.data.records import MAX_ID_LENGTH
from sieve.serve.schemas import ErrorBody
from sieve.serve.service import Service


async def get_service(request: Request) -> Service:
    """The app's service (opened by the lifespan); async: no thread-pool hop."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]

ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, description="the item's id")]
UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, description="the user's id")]


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: Error responses of endpoints that need a key, for the OpenAPI document.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("no API key, or an unknown one"),
    403: _err("the key lacks the scope this endpoint needs"),
    422: _err("invalid input; `detail` lists each problem"),
}
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: _err("unknown id")}
CONFLICT: Responses = {409: _err("the id exists already")}
TOO_LARGE: Responses = {413: _err("more records than `max_batch` in one request")}
NO_MODEL: Responses = {
    503: _err("no model trained yet (run `sieve train`), or the store did not answer in time")
}

__all__ = [
    "AUTH_ERRORS",
    "CONFLICT",
    "NOT_FOUND",
    "NO_MODEL",
    "TOO_LARGE",
    "ItemId",
    "ServiceDep",
    "UserId",
    "get_service",
]
