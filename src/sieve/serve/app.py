"""The FastAPI application: `create_app(settings)`.

No module-level state: every app gets its settings, key ring and (at start-up,
in the lifespan) its own `Service` — store, cache and the serving snapshot. Tests
build as many apps as they like.

Cross-cutting behaviour lives here:

- `Server-Timing: app;dur=<ms>` on every response: the time from the request
  reaching the app to its response headers (a JSON body is rendered before
  the headers are sent, so this is the whole server-side time);
- request bodies larger than `max_body_bytes` → 413: by `Content-Length`
  before they are read, and a chunked body (no length) as soon as the bytes
  received pass the limit, so no body is ever buffered beyond it;
- an access log on `sieve.serve.access` (method, path, status, milliseconds,
  the API key's *name*) — headers are never logged, so neither are keys, and
  what the client chose (method, path) is escaped (`printable`): a `%0A` in a
  path cannot forge a log line;
- `X-Sieve-Model` on every response: the model version that served it (a
  list's own version, which a request keeps even if a swap publishes another
  while it runs; otherwise the version serving when the answer left);
- Prometheus metrics (`GET /metrics`): latency and errors per route template
  (`sieve.monitoring.metrics`); the funnel's stage timings go to the service's
  metrics while the lifespan runs, and drift checks run in the background
  every `drift_check_seconds` (`sieve.monitoring.drift`);
- errors as `{"detail": ...}`: 422 lists `{loc, msg, type}` without echoing
  the input; store/cache outages and store calls past `store_timeout_seconds`
  → 503 with `Retry-After`, as is a live request that waited
  `live_wait_seconds` for its turn (`sieve.serve.lane`); data the database
  refuses → 422;
  anything else → 500 with a generic message (the traceback goes to the log).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sieve import __version__
from sieve.data.records import InvalidRecords
from sieve.data.schema import UnknownIdError
from sieve.monitoring.metrics import UNMATCHED
from sieve.monitoring.stages import add_stage_sink
from sieve.serve.auth import KeyRing
from sieve.serve.errors import InvalidInput, TooLarge
from sieve.serve.holder import NoModelError, freeze_heap
from sieve.serve.hotpath import StoredAnswers
from sieve.serve.lane import Busy, limit_blas_threads
from sieve.serve.listing import MODEL_HEADER
from sieve.serve.routes import (
    dashboard,
    events,
    experiments,
    items,
    leaderboards,
    metrics,
    offpolicy,
    rank,
    recommendations,
    system,
    users,
)
from sieve.serve.service import Service
from sieve.settings import Settings
from sieve.storage import CacheError, StoreError, StoreUnavailable

log = logging.getLogger("sieve.serve")
access_log = logging.getLogger("sieve.serve.access")

DESCRIPTION = """\
A recommender service: catalog (items, users), an append-only event log, and
recommendations from the trained funnel.

**Authentication.** Send an API key as `Authorization: Bearer <key>` or
`X-API-Key: <key>`. Scopes: `read` (GET endpoints), `write` (catalog and
events), `admin` (model reload, precompute; implies both others). `/health`,
`/ready`, `/version` and `/metrics` (for Prometheus; keep it off the public
network) need no key.

**Errors** are `{"detail": ...}`; 422 lists `{loc, msg, type}` per problem.
"""


_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029\\]")


def printable(text: str, limit: int = 2048) -> str:
    """`text` as one safe log token: control characters, spaces, line separators
    and the backslash become escapes (`\\n`, `\\x20`, `\\\\`), and it is cut at
    `limit`.

    Whatever a client sends (a path with `%0A`, a NUL) then stays on its own log
    line and cannot pose as another entry."""

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        named = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
        return named.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    cut = text[:limit] + ("…" if len(text) > limit else "")
    return _UNPRINTABLE.sub(escape, cut)


class BodyTooLarge(HTTPException):
    """A request body (declared or chunked) over `max_body_bytes`: answered 413."""

    def __init__(self, limit: int, received: int | None = None) -> None:
        size = "more than" if received is None else f"{received} bytes,"
        super().__init__(
            413,
            f"request body of {size} exceeds the limit of {limit} bytes "
            "(max_body_bytes): send smaller batches",
        )


class TimingMiddleware:
    """Adds `Server-Timing`, enforces `max_body_bytes` and writes the access log."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ms = (time.perf_counter() - start) * 1000
                headers = MutableHeaders(scope=message)
                headers.append("Server-Timing", f"app;dur={ms:.3f}")
                if MODEL_HEADER not in headers:  # a list sets the version it was ranked by
                    version = _serving_version(scope)
                    if version is not None:
                        headers.append(MODEL_HEADER, version)
            await send(message)

        received = 0
        started = False

        async def bounded_receive() -> Message:
            """The body as it arrives, refused once it passes the limit (a chunked
            body has no Content-Length to check up front)."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await timed_send(message)

        try:
            length = self._content_length(scope)
            if length is not None and length > self.max_body_bytes:
                too_large = BodyTooLarge(self.max_body_bytes, length)
                response = JSONResponse({"detail": too_large.detail}, status_code=413)
                await response(scope, receive, timed_send)
                return
            try:
                await self.app(scope, bounded_receive, tracked_send)
            except BodyTooLarge as e:  # read outside a route (FastAPI answers inside one)
                if started:
                    raise
                await JSONResponse({"detail": e.detail}, status_code=413)(
                    scope, receive, timed_send
                )
        finally:
            seconds = time.perf_counter() - start
            _record(scope, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                state = scope.get("state") or {}
                access_log.info(
                    "%s %s %d %.1fms key=%s",
                    printable(scope["method"]),
                    printable(scope["path"]),
                    status,
                    seconds * 1000,
                    printable(str(state.get("principal", "-"))),
                )

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None


def _serving_version(scope: Scope) -> str | None:
    """The model version this process serves now (None before one is loaded)."""
    service = getattr(getattr(scope.get("app"), "state", None), "service", None)
    return None if service is None else service.model_version


def _record(scope: Scope, status: int, seconds: float) -> None:
    """Latency and errors in the engine's metrics, labelled by the route template
    the router matched (`scope["route"]`), never the raw path."""
    app = scope.get("app")
    service = getattr(getattr(app, "state", None), "service", None)
    if service is None:  # before the lifespan opened it
        return
    route = scope.get("route")
    endpoint = getattr(route, "path", None) or UNMATCHED
    try:
        service.metrics.request(endpoint, scope["method"], status, seconds)
    except Exception:  # a metric never fails a response
        log.debug("request metrics not recorded", exc_info=True)


#: Seconds a client is told to wait after a 503 (an outage or an overload).
RETRY_AFTER = "2"


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _clean(errors: Any) -> list[dict[str, Any]]:
    """pydantic's errors without `input`/`ctx`/`url`: readable, JSON-safe, no echo."""
    out = []
    for e in errors:
        out.append(
            {
                "loc": [x if isinstance(x, int | str) else str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "value_error")),
            }
        )
    cleaned: list[dict[str, Any]] = json.loads(json.dumps(out, default=str))
    return cleaned


def _install_error_handlers(app: FastAPI) -> None:
    async def validation(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, RequestValidationError)
        return _error(422, _clean(e.errors()))

    async def model_invalid(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ValidationError)
        return _error(422, _clean(e.errors()))

    async def invalid(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, InvalidInput | InvalidRecords)
        return _error(422, e.errors)

    async def too_large(_: Request, e: Exception) -> JSONResponse:
        return _error(413, str(e))

    async def no_model(_: Request, e: Exception) -> JSONResponse:
        return _error(503, str(e))

    async def unknown_id(_: Request, e: Exception) -> JSONResponse:
        return _error(404, str(e))

    async def store_error(_: Request, e: Exception) -> JSONResponse:
        if isinstance(e, StoreUnavailable):
            log.error("store unavailable: %s", e)
            return _error(
                503, "the store is unavailable; retry later", headers={"Retry-After": RETRY_AFTER}
            )
        if isinstance(e.__cause__, sa_exc.IntegrityError | sa_exc.DataError):
            return _error(422, f"the database refused the data: {e.__cause__.orig}")
        log.error("store error: %s", e)
        return _error(503, "the store failed; retry later", headers={"Retry-After": RETRY_AFTER})

    async def cache_error(_: Request, e: Exception) -> JSONResponse:
        log.error("cache error: %s", e)
        return _error(
            503, "the cache is unavailable; retry later", headers={"Retry-After": RETRY_AFTER}
        )

    async def busy(_: Request, e: Exception) -> JSONResponse:
        log.warning("%s", e)
        return _error(503, str(e), headers={"Retry-After": RETRY_AFTER})

    async def bad_text(_: Request, e: Exception) -> JSONResponse:
        return _error(422, f"text that cannot be stored (not valid Unicode): {e}")

    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception(
            "internal error on %s %s",
            printable(request.method),
            printable(request.url.path),
            exc_info=e,
        )
        return _error(500, "internal error; the server log has the details")

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(ValidationError, model_invalid)
    app.add_exception_handler(InvalidInput, invalid)
    app.add_exception_handler(InvalidRecords, invalid)
    app.add_exception_handler(TooLarge, too_large)
    app.add_exception_handler(NoModelError, no_model)
    app.add_exception_handler(UnknownIdError, unknown_id)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(CacheError, cache_error)
    app.add_exception_handler(Busy, busy)
    app.add_exception_handler(UnicodeError, bad_text)
    app.add_exception_handler(Exception, internal)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app serving `settings` (default: `Settings()` from the environment).

    The lifespan opens the store and the cache, loads the current funnel from
    `model_dir` (if one is trained) and, with `precompute`, fills the cache of
    precomputed lists; it closes them at shutdown.
    """
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.blas_threads:  # for the process's life (see the setting)
            limit_blas_threads(settings.blas_threads)
        service = await run_in_threadpool(Service.open, settings)
        app.state.service = service
        if settings.precompute and service.model_version is not None:
            start = time.perf_counter()
            # one replica per version computes the lists every replica reads
            count = await run_in_threadpool(service.precompute_once, settings.batch_n)
            if count is not None:
                log.info(
                    "precomputed %d lists of %d in %.1fs",
                    count,
                    settings.batch_n,
                    time.perf_counter() - start,
                )
        service.follow()
        unhook = add_stage_sink(service.metrics.stage)  # after the start-up precompute
        service.drift.start(settings.drift_check_seconds)
        freeze_heap()
        try:
            yield
        finally:
            service.follower.stop()
            unhook()
            service.drift.stop()
            await run_in_threadpool(service.close)

    # the docs pages' scripts and styles are served by the app itself, not a
    # CDN: /docs works on a machine without internet access
    app: FastAPI = FastAPIOffline(
        title="sieve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys)
    # inner to the timing: stored answers are timed, logged and counted too
    app.add_middleware(StoredAnswers)
    app.add_middleware(TimingMiddleware, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    # routes are matched in order: the hottest path first (each miss on the
    # way costs a regex match per request)
    for module in (
        recommendations,
        items,
        users,
        events,
        experiments,
        system,
        dashboard,
        offpolicy,
        metrics,
        leaderboards,
        rank,
    ):
        app.include_router(module.router(settings))
    return app


__all__ = ["BodyTooLarge", "TimingMiddleware", "create_app", "printable"]
