"""Operations: liveness, readiness, versions, and the admin actions.

`/health`, `/ready` and `/version` need no key (load balancers and probes call
them). `/health` does nothing but answer: it is the latency reference of the
benchmarks. Reload and precompute need the `admin` scope.
"""

# No `from __future__ import annotations`: FastAPI must see the closure-local
# parameter types (bounds from the settings) as objects, not as strings.

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from sieve import __version__
from sieve.serve.auth import AdminAccess
from sieve.serve.holder import NoModelError
from sieve.serve.routes import AUTH_ERRORS, NO_MODEL, ServiceDep
from sieve.serve.schemas import (
    Health,
    PrecomputeResult,
    Readiness,
    ReloadResult,
    VersionInfo,
)
from sieve.settings import Settings

_HEALTH = Health(status="ok")


def router(settings: Settings) -> APIRouter:
    """The system router."""
    r = APIRouter(tags=["system"])

    @r.get("/health")
    async def health() -> Health:
        """Liveness: answers while the process runs (no store, cache or model access)."""
        return _HEALTH

    @r.get(
        "/ready",
        responses={503: {"model": Readiness, "description": "not ready; `reason` says why"}},
    )
    def ready(service: ServiceDep) -> JSONResponse:
        """Readiness: the store answers and a trained model is loaded (503 otherwise)."""
        ok, store, reason = service.readiness()
        body = Readiness(ready=ok, store=store, model_version=service.model_version, reason=reason)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @r.get("/version")
    def version(service: ServiceDep) -> VersionInfo:
        """The package version, the serving model's version and the replica
        (`host:pid`) that answered."""
        path = service.model_path
        return VersionInfo(
            version=__version__,
            model_version=service.model_version,
            model_path=None if path is None else str(path),
            replica=service.replica,
        )

    @r.post("/admin/reload", responses={**AUTH_ERRORS, **NO_MODEL})
    def reload(service: ServiceDep, _: AdminAccess) -> ReloadResult:
        """Load the model `model_dir/CURRENT` names (after `sieve train`) and serve it;
        if it cannot be loaded, the model served so far stays (503 saying why)."""
        try:
            loaded = service.load_model()
        except Exception as e:  # the model served so far stays
            raise HTTPException(503, detail=f"the model could not be loaded: {e}") from e
        if not loaded:
            raise NoModelError(settings.model_dir)
        path = service.model_path
        return ReloadResult(
            model_version=service.model_version, model_path=None if path is None else str(path)
        )

    @r.post(
        "/admin/precompute",
        responses={**AUTH_ERRORS, **NO_MODEL},
    )
    def precompute(
        service: ServiceDep,
        _: AdminAccess,
        n: Annotated[int, Query(ge=1, le=settings.max_n)] = min(settings.batch_n, settings.max_n),
    ) -> PrecomputeResult:
        """Precompute every known user's top-n into the cache (what `sieve batch` does,
        inside this process: the way to use it with a `memory://` cache)."""
        import time

        start = time.perf_counter()
        users = service.precompute(n)
        return PrecomputeResult(
            users=users,
            n=n,
            model_version=service.funnel.version,
            seconds=round(time.perf_counter() - start, 3),
        )

    return r


__all__ = ["router"]
