"""Monitoring: Prometheus metrics and the drift checks.

- `GET /metrics` (no key): the service's metrics in Prometheus' text
  exposition format (see `sieve.monitoring.metrics` for the families).
  Prometheus scrapes without credentials, so like `/health` it is open: it
  shows traffic volumes, latencies, experiment and arm names and the model
  version, nothing about users or items — still, keep it off the public
  network (bind the service to an internal interface, or block the path at
  the proxy).
- `GET /monitoring/drift` (`read`): the latest drift checks, one object per
  check (an empty list before the first run; see `sieve.monitoring.drift`).
- `POST /admin/drift-check` (`admin`): run the checks now (writes the
  retraining trigger when one fires) and return their results.
"""

# No `from __future__ import annotations`: FastAPI must see the parameter
# types as objects, not as strings (as in the other route modules).

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from sieve.monitoring.drift import CheckResult
from sieve.serve.auth import AdminAccess, ReadAccess
from sieve.serve.routes import AUTH_ERRORS, ServiceDep
from sieve.settings import Settings


class DriftCheck(BaseModel):
    """One drift check's latest outcome."""

    check: str = Field(description="item_popularity, event_types, served_scores or ctr_drop")
    value: float | None = Field(
        description="PSI, or the relative CTR drop; null when the check could not run"
    )
    threshold: float = Field(description="the value above which the check fires")
    fired: bool = Field(description="the value is above the threshold")
    detail: str = Field(description="what was compared, or why the check could not run")
    checked_at: float = Field(description="when it ran (Unix time, seconds)")


def _checks(results: list[CheckResult]) -> list[DriftCheck]:
    return [DriftCheck(**r.as_dict()) for r in results]


def router(settings: Settings) -> APIRouter:
    """The monitoring router."""
    r = APIRouter(tags=["monitoring"])

    @r.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format",
            }
        },
    )
    def metrics(service: ServiceDep) -> Response:
        """The service's Prometheus metrics (no key: Prometheus scrapes without one;
        keep the path off the public network)."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @r.get("/monitoring/drift", responses=AUTH_ERRORS)
    def drift(service: ServiceDep, _: ReadAccess) -> list[DriftCheck]:
        """The latest drift checks (run every `drift_check_seconds`; an empty list
        before the first run)."""
        return _checks(service.drift.last())

    @r.post("/admin/drift-check", responses=AUTH_ERRORS)
    def drift_check(service: ServiceDep, _: AdminAccess) -> list[DriftCheck]:
        """Run the drift checks now; a check over its threshold writes the
        retraining trigger `model_dir/RETRAIN` (once per serving model and check)."""
        return _checks(service.drift.check())

    return r


__all__ = ["DriftCheck", "router"]
