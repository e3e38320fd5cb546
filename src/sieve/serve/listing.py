"""Served lists: a request's filters, its id, and funnel results as served items."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import Response

from sieve.serve.schemas import Contribution, RecommendationList, RecommendedItem
from sieve.types import Context, Recommended

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

#: The response header naming the model version that served the answer.
MODEL_HEADER = "X-Sieve-Model"


@dataclass(frozen=True)
class Filters:
    """What a request asks beyond "the top n for this user"."""

    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    context: Context = field(default_factory=Context)

    @property
    def empty(self) -> bool:
        return not self.categories and not self.exclude and self.context == Context()


def context_dict(filters: Filters) -> dict[str, Any]:
    """The request context and filters as logged with an impression."""
    c = filters.context
    return {
        "hour": c.hour,
        "weekday": c.weekday,
        "device": c.device,
        "page": c.page,
        "categories": list(filters.categories) or None,
    }


# Request ids correlate a list with the events that cite it; they need to be
# unique, not secret, and `uuid4` costs a system call (urandom) per id, which
# showed up in profiles. A process-local generator seeded from urandom (again
# in a forked child) gives 128 random bits for a fraction of that.
_ids = random.Random(int.from_bytes(os.urandom(16), "big"))
os.register_at_fork(after_in_child=lambda: _ids.seed(int.from_bytes(os.urandom(16), "big")))


def new_request_id() -> str:
    """A new 32-hex-digit request id."""
    return f"{_ids.getrandbits(128):032x}"


def list_response(result: RecommendationList, explain: bool = False) -> Response:
    """A list as its response, serialised once: it was built from validated
    parts, so the response model's second validation (FastAPI's default for
    a returned model) is skipped. Items carry `contributions` only when
    explained; `trace` only when there is one."""
    exclude: dict[str, Any] = {} if explain else {"items": {"__all__": {"contributions"}}}
    if result.trace is None:
        exclude["trace"] = True
    body = result.model_dump_json(exclude=exclude or None)
    return Response(
        body, media_type="application/json", headers={MODEL_HEADER: result.model_version}
    )


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: such scores travel as null."""
    value = float(x)
    return value if math.isfinite(value) else None


def listed(
    funnel: Funnel, recs: Sequence[Recommended], explain: bool = False
) -> list[RecommendedItem]:
    """Funnel results as served items (`explain`: with their feature
    contributions). The items are checked once, as a block, and read from
    the catalog directly (a numpy check per field of each item was a
    twentieth of a live answer's CPU). The models are validated as they are
    built (pydantic's validation is faster than its `model_construct`)."""
    shown = funnel.shown(np.fromiter((r.item for r in recs), np.int64, len(recs)))
    return [
        RecommendedItem(
            id=item_id,
            score=_finite(r.score),
            title=title,
            categories=categories,
            explanation=r.explanation,
            sources={k: _finite(v) for k, v in r.sources.items()},
            contributions=(
                [Contribution(feature=f, value=v) for f, v in r.contributions] if explain else None
            ),
        )
        for r, (item_id, title, categories) in zip(recs, shown, strict=True)
    ]


__all__ = ["MODEL_HEADER", "Filters", "context_dict", "list_response", "listed", "new_request_id"]
