"""The hottest request answered before the framework.

`GET /recommendations/{user_id}` with nothing but `n` in its query string,
from a client the `read` scope admits, is answered here: from the user's
valid stored answer (`sieve.serve.answers`: precomputed, or a recent live one
kept) when there is one, else live, as the route would answer it (the same
`Service.recommend_user` in the thread pool, the same response, the answer
kept after the response is sent). No routing, no parameter solving, no
response model: those were about half of a cached answer's CPU and a tenth
of a server's under a mixed load, and on a site most requests are plain.

Everything else goes on to the app unchanged: a filter or any other
parameter, an id or key the route would refuse (it says why), a failing
cache read. What was decided here is handed over in the scope's state
(`HANDOVER`) so the route neither draws the random slice again nor reads
the cache a second time. An error of the live answer gets the response the
app's own exception handlers give it (a store outage: 503 with
`Retry-After`); one without a handler of its own goes up to the server's
error middleware, as from the route.

The checks are the route's own (`sieve.serve.auth.admit`, the id length, `n`
between 1 and `max_n`); anything they would not admit is left to the route.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import BackgroundTasks, HTTPException
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sieve.data.records import MAX_ID_LENGTH
from sieve.serve.auth import admit
from sieve.serve.listing import MODEL_HEADER, Filters, list_response

if TYPE_CHECKING:
    from sieve.serve.service import Service

log = logging.getLogger("sieve.serve")

PREFIX = "/recommendations/"
#: The scope-state key telling the route what was decided here: "miss" (no
#: valid stored answer) or "uniform" (the request is in the random slice).
HANDOVER = "sieve.lookup"
ROUTE = "/recommendations/{user_id}"
_MAX_N_DIGITS = 6


@dataclass(frozen=True)
class _Template:
    """What the request metrics read of a matched route: its template."""

    path: str


_MATCHED = _Template(ROUTE)


def handed_over(scope: Scope) -> str | None:
    """What the hot path decided for this request, if it saw it."""
    state = scope.get("state")
    return None if state is None else state.get(HANDOVER)


class StoredAnswers:
    """ASGI middleware: plain requests whose user has a stored answer get it here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not scope["path"].startswith(PREFIX)
            or not await self._answered(scope, receive, send)
        ):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Whether the request was answered here."""
        state = getattr(scope.get("app"), "state", None)
        service = getattr(state, "service", None)
        if service is None or state is None:
            return False
        settings = state.settings
        user_id: str = scope["path"][len(PREFIX) :]
        n = _plain_n(scope["query_string"], settings.max_n)
        if (
            n is None
            or not user_id
            or len(user_id) > MAX_ID_LENGTH
            or "/" in user_id
            or not user_id.isprintable()
        ):
            return False
        principal = _principal(scope, state)
        if principal is None:
            return False
        handover = scope.setdefault("state", {})
        if principal != "":
            handover["principal"] = principal  # for the access log
        try:
            if service.in_random_slice():
                handover[HANDOVER] = "uniform"
                hit = None
            else:
                hit = await service.cached_answer(user_id, n, Filters())
        except Exception:  # the route reports it (no model, a store outage)
            log.debug("hot path declined", exc_info=True)
            return False
        if hit is None:
            uniform = handover.setdefault(HANDOVER, "miss") == "uniform"
            await self._live(scope, receive, send, service, user_id, n, uniform)
            return True
        body = hit.body
        scope["route"] = _MATCHED  # the metrics label answers by route template
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (MODEL_HEADER.lower().encode(), hit.model_version.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return True

    async def _live(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        service: Service,
        user_id: str,
        n: int,
        uniform: bool,
    ) -> None:
        """The live answer, as the route gives it; its errors as the app's
        exception handlers answer them."""
        response: Response
        try:
            response = await live_response(service, user_id, n, Filters(), uniform)
        except Exception as e:
            handler = _handler(scope, e)
            if handler is None:
                raise  # as from the route: the server's error middleware answers 500
            response = await handler(Request(scope, receive), e)
        scope["route"] = _MATCHED
        await response(scope, receive, send)


async def live_response(
    service: Service, user_id: str, n: int, filters: Filters, uniform: bool
) -> Response:
    """A live list as its response (the funnel in the thread pool), the
    answer kept in the cache once the response is sent (`defer`): the
    route's and the hot path's."""
    after = BackgroundTasks()
    result = await run_in_threadpool(
        functools.partial(
            service.recommend_user, user_id, n, filters, uniform=uniform, defer=after.add_task
        )
    )
    response = list_response(result)
    response.background = after
    return response


def _handler(scope: Scope, error: Exception) -> Any:
    """The app's exception handler for `error` (by its class, most specific
    first, as Starlette looks it up), or None for the catch-all one, which the
    server's error middleware applies."""
    handlers = getattr(scope.get("app"), "exception_handlers", {})
    for cls in type(error).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


def _plain_n(query: bytes, max_n: int) -> int | None:
    """`n` of a query string holding only `n=DIGITS` (or nothing: the
    route's default, 10 or `max_n`), when it is in range; else None."""
    if not query:
        return min(10, max_n)
    if not query.startswith(b"n=") or len(query) > 2 + _MAX_N_DIGITS:
        return None
    digits = query[2:]
    if not digits.isdigit():
        return None
    n = int(digits)
    return n if 1 <= n <= max_n else None


def _principal(scope: Scope, state: Any) -> str | None:
    """The key's name ("" for a request admitted without one) if the `read`
    scope admits the request, else None (the route says why)."""
    authorization: str | None = None
    api_key: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    presented = api_key or None
    if authorization:  # as `HTTPBearer`: a bearer scheme with credentials
        scheme, credentials = get_authorization_scheme_param(authorization)
        if scheme.lower() == "bearer" and credentials:
            presented = credentials
    client = scope.get("client")
    named: list[str] = []
    try:
        admit(
            state.settings,
            state.keyring,
            presented,
            authorization,
            client[0] if client else "",
            "read",
            named.append,
        )
    except HTTPException:
        return None
    return named[0] if named else ""


__all__ = ["HANDOVER", "StoredAnswers", "handed_over", "live_response"]
