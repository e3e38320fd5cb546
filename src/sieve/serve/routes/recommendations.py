"""Recommendations: per user, per anonymous session, similar items, popular items.

All answer 503 "no model trained yet: run `sieve train`" until a funnel is
trained (there is no fallback: an empty or store-popularity list would hide
that the service is not set up). An unknown user is not an error: they get
the cold-start list (trending items), marked `cold_start: true`.

`categories` and `exclude` take repeated parameters or comma-separated lists
(`?categories=a&categories=b` or `?categories=a,b`); an id containing a comma
cannot be excluded through the query string.
"""

# No `from __future__ import annotations`: FastAPI must see the closure-local
# parameter types (bounds from the settings) as objects, not as strings.

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from sieve.data.records import MAX_ID_LENGTH
from sieve.data.schema import UnknownIdError
from sieve.serve.auth import ReadAccess
from sieve.serve.hotpath import handed_over, live_response
from sieve.serve.listing import MODEL_HEADER, Filters, list_response
from sieve.serve.routes import AUTH_ERRORS, NO_MODEL, NOT_FOUND, ItemId, ServiceDep, UserId
from sieve.serve.schemas import (
    MAX_FILTER,
    MAX_LABEL,
    PopularItems,
    RecommendationList,
    SessionRequest,
    SimilarItems,
)
from sieve.settings import Settings
from sieve.types import Context


def _split(values: list[str] | None, what: str, longest: int) -> tuple[str, ...]:
    """Repeated and comma-separated values, stripped, blanks dropped, order kept."""
    out: list[str] = []
    for value in values or ():
        out.extend(v.strip() for v in value.split(",") if v.strip())
    out = list(dict.fromkeys(out))
    problems = []
    if len(out) > MAX_FILTER:
        problems.append(f"at most {MAX_FILTER} values, got {len(out)}")
    too_long = [v for v in out if len(v) > longest]
    if too_long:
        problems.append(f"values must have at most {longest} characters")
    if problems:
        raise HTTPException(
            422,
            detail=[{"loc": ["query", what], "msg": "; ".join(problems), "type": "value_error"}],
        )
    return tuple(out)


def _check_n(n: int, limit: int, loc: list[str | int]) -> None:
    if n > limit:
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": loc,
                    "msg": f"Input should be less than or equal to {limit} (max_n)",
                    "type": "less_than_equal",
                }
            ],
        )


def router(settings: Settings) -> APIRouter:
    """The recommendation router; list lengths are bounded by `settings.max_n`."""
    r = APIRouter(tags=["recommendations"], responses={**AUTH_ERRORS, **NO_MODEL})
    max_n = settings.max_n
    N = Annotated[int, Query(ge=1, le=max_n, description=f"list length, 1 to {max_n} (max_n)")]
    default_n = min(10, max_n)
    Categories = Annotated[
        list[str] | None,
        Query(description="only items of these categories (repeat, or comma-separated)"),
    ]
    Exclude = Annotated[
        list[str] | None,
        Query(description="item ids never to return (repeat, or comma-separated)"),
    ]
    Label = Annotated[str | None, Query(min_length=1, max_length=MAX_LABEL)]

    @r.get("/recommendations/{user_id}", response_model=RecommendationList)
    async def recommend_user(
        request: Request,
        user_id: UserId,
        service: ServiceDep,
        principal: ReadAccess,
        n: N = default_n,
        categories: Categories = None,
        exclude: Exclude = None,
        hour: Annotated[int | None, Query(ge=0, le=23, description="0-23")] = None,
        weekday: Annotated[int | None, Query(ge=0, le=6, description="0 = Monday")] = None,
        device: Label = None,
        page: Label = None,
        trace: Annotated[
            bool,
            Query(
                description="admin keys only: answer live and include the query and the "
                "ranker's features (`trace`)"
            ),
        ] = False,
        explain: Annotated[
            bool,
            Query(
                description="answer live and give each ranked item the ranker's largest "
                "feature contributions to its score (`contributions`)"
            ),
        ] = False,
    ) -> Response:
        """The top-n items for a user, each with its score, sources and a reason.

        Served from the batch precompute (`cached: true`) when it is current for
        this user and the request has no filter or context, and no explanation
        is asked for; otherwise live. A share `random_share` of requests gets a
        list drawn uniformly from the top candidates instead (`slot: "random"`,
        each with its propensity).
        """
        filters = Filters(
            categories=_split(categories, "categories", MAX_LABEL),
            exclude=_split(exclude, "exclude", MAX_ID_LENGTH),
            context=Context(hour=hour, weekday=weekday, device=device, page=page),
        )
        if trace:
            if not principal.allows("admin"):
                raise HTTPException(403, detail="trace needs a key with the 'admin' scope")
            found: dict[str, Any] = {}
            result = await run_in_threadpool(
                service.recommend_user, user_id, n, filters, True, found, explain
            )
            return list_response(result.model_copy(update={"trace": found}), explain)
        if explain:
            return list_response(
                await run_in_threadpool(
                    service.recommend_user, user_id, n, filters, True, None, True
                ),
                True,
            )
        # a request of the random slice is drawn first: it skips the cache, so
        # the slice is a share of all traffic, precomputed users included (a
        # plain request was drawn and looked up already: `sieve.serve.hotpath`)
        decided = handed_over(request.scope)
        uniform = decided == "uniform" if decided else service.in_random_slice()
        # a stored answer is one non-blocking cache read, on the event loop;
        # the live funnel (store reads, CPU work) goes to the thread pool
        cached = None
        if not uniform and decided != "miss":
            cached = await service.cached_answer(user_id, n, filters)
        if cached is not None:
            return Response(
                cached.body,
                media_type="application/json",
                headers={MODEL_HEADER: cached.model_version},
            )
        # the answer is kept in the cache once it is sent
        return await live_response(service, user_id, n, filters, uniform)

    @r.post("/recommendations")
    def recommend_session(
        body: SessionRequest, service: ServiceDep, _: ReadAccess, response: Response
    ) -> RecommendationList:
        """The top-n items for an anonymous session, from the items it just viewed
        (most recent first; each must be in the catalog)."""
        _check_n(body.n, max_n, ["body", "n"])
        context = body.context
        filters = Filters(
            categories=tuple(dict.fromkeys(body.categories)),
            exclude=tuple(body.exclude),
            context=Context(
                hour=context.hour, weekday=context.weekday, device=context.device, page=context.page
            ),
        )
        result = service.recommend_session(body.recent_items, body.n, filters)
        response.headers[MODEL_HEADER] = result.model_version
        return result

    @r.get("/items/{item_id}/similar", responses=NOT_FOUND)
    def similar_items(
        item_id: ItemId, service: ServiceDep, _: ReadAccess, n: N = default_n
    ) -> SimilarItems:
        """Items similar to this one, most similar first."""
        try:
            items = service.similar(item_id, n)
        except UnknownIdError:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"unknown item id {item_id!r}"
            ) from None
        return SimilarItems(item_id=item_id, items=items, model_version=service.funnel.version)

    @r.get("/popular")
    def popular(
        service: ServiceDep, _: ReadAccess, n: N = default_n, categories: Categories = None
    ) -> PopularItems:
        """The trending items now (what a new user gets), optionally of some categories."""
        cats = _split(categories, "categories", MAX_LABEL)
        return PopularItems(
            items=service.popular(n, cats),
            categories=list(cats),
            model_version=service.funnel.version,
        )

    return r


__all__ = ["router"]
