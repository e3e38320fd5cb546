"""Experiments: create, list, stop, report.

Experiments are stored in the store, so every server process and
`sieve experiment` share them; a running server applies a new or stopped
experiment within `model_poll_seconds` (2 s when polling is off). Creating
and stopping need the `admin` scope; listing and reports need `read`.

Errors: a bad definition → 422 naming the problem (shares that do not sum
to 1, an unknown model version, a full layer, a bad variant config key);
an existing name → 409; an unknown name → 404.
"""

# No `from __future__ import annotations`: FastAPI must see the parameter types.

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from sieve.experiments.online import (
    ExperimentError,
    ExperimentExists,
    ExperimentNotFound,
    ExperimentRecord,
)
from sieve.serve.auth import AdminAccess, ReadAccess
from sieve.serve.routes import AUTH_ERRORS, CONFLICT, NOT_FOUND, ServiceDep
from sieve.serve.schemas import ExperimentIn, ExperimentOut
from sieve.settings import Settings


def _out(record: ExperimentRecord) -> ExperimentOut:
    return ExperimentOut.model_validate(record.to_dict())


def _problem(e: ExperimentError) -> HTTPException:
    if isinstance(e, ExperimentNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(e))
    if isinstance(e, ExperimentExists):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(e))
    return HTTPException(422, detail=[{"loc": ["body"], "msg": str(e), "type": "value_error"}])


def router(settings: Settings) -> APIRouter:
    """The experiments router."""
    r = APIRouter(prefix="/experiments", tags=["experiments"], responses=AUTH_ERRORS)

    @r.post("", status_code=201, responses=CONFLICT)
    def create(body: ExperimentIn, service: ServiceDep, _: AdminAccess) -> ExperimentOut:
        """Start an experiment: its units are assigned from the next refresh."""
        try:
            record = service.create_experiment(body.model_dump(exclude_none=True))
        except ExperimentError as e:
            raise _problem(e) from None
        return _out(record)

    @r.get("")
    def list_experiments(service: ServiceDep, _: ReadAccess) -> list[ExperimentOut]:
        """Every experiment, running and stopped, oldest first."""
        return [_out(x) for x in service.experiments.records()]

    @r.get("/{name}", responses=NOT_FOUND)
    def get(name: str, service: ServiceDep, _: ReadAccess) -> ExperimentOut:
        """One experiment."""
        try:
            return _out(service.experiments.get(name))
        except ExperimentError as e:
            raise _problem(e) from None

    @r.post("/{name}/stop", responses=NOT_FOUND)
    def stop(name: str, service: ServiceDep, _: AdminAccess) -> ExperimentOut:
        """Stop an experiment: its units get the default experience; its log stays."""
        try:
            return _out(service.experiments.stop(name))
        except ExperimentError as e:
            raise _problem(e) from None

    @r.get("/{name}/report", responses=NOT_FOUND)
    async def report(
        name: str,
        service: ServiceDep,
        _: ReadAccess,
        alpha: Annotated[float, Query(gt=0.0, lt=0.5)] = 0.05,
    ) -> dict[str, Any]:
        """Per-arm metrics with intervals, comparisons with p-values (fixed-horizon
        and always-valid), the sample-ratio check and a verdict in words."""
        try:
            return await run_in_threadpool(service.experiment_report, name, alpha)
        except ExperimentError as e:
            raise _problem(e) from None

    return r


__all__ = ["router"]
