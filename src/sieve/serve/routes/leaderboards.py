"""`/leaderboards`: named non-personalised lists (most bought, top rated,
newest, per category), configured in the settings (`[leaderboards.NAME]`)
and computed periodically into the shared cache (`sieve.serve.leaderboards`).

- `GET /leaderboards` (`read`): the configured boards and their definitions;
- `GET /leaderboards/{name}?n=` (`read`): the board's first `n` items with
  their scores and titles (404 naming the configured boards for another name).
"""

# No `from __future__ import annotations`: FastAPI must see the closure-local
# bound (`longest`, from the settings) as an object, not as a string.

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as PathParam
from pydantic import BaseModel

from sieve.serve.auth import ReadAccess
from sieve.serve.leaderboards import UnknownLeaderboard
from sieve.serve.routes import AUTH_ERRORS, NOT_FOUND, ServiceDep
from sieve.settings import Settings

BoardName = Annotated[str, PathParam(min_length=1, max_length=64, description="the board's name")]


class BoardItem(BaseModel):
    """One item of a board: its score (events, Bayesian average, or creation time)."""

    id: str
    title: str
    score: float | None
    count: int | None = None


class BoardBody(BaseModel):
    """A board as last computed (`computed_at`, Unix seconds)."""

    name: str
    kind: str
    category: str | None
    computed_at: float
    items: list[BoardItem]


def router(settings: Settings) -> APIRouter:
    """The leaderboards router."""
    r = APIRouter(prefix="/leaderboards", tags=["leaderboards"], responses=AUTH_ERRORS)
    longest = max((b.n for b in settings.leaderboards.values()), default=1)

    @r.get("")
    def boards(_: ReadAccess) -> dict[str, dict[str, Any]]:
        """The configured boards and their definitions."""
        return {name: b.model_dump() for name, b in settings.leaderboards.items()}

    @r.get("/{name}", responses=NOT_FOUND)
    def board(
        name: BoardName,
        service: ServiceDep,
        _: ReadAccess,
        n: Annotated[int | None, Query(ge=1, le=longest, description="items to return")] = None,
    ) -> BoardBody:
        """The board's items, best first (recomputed at most every
        `leaderboard_refresh_seconds`, shared by every server process)."""
        try:
            got = service.leaderboards.get(name)
        except UnknownLeaderboard as e:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(e)) from None
        rows = got["items"][:n] if n is not None else got["items"]
        items = service.store.get_items([row["id"] for row in rows])
        return BoardBody(
            name=got["name"],
            kind=got["kind"],
            category=got["category"],
            computed_at=got["computed_at"],
            items=[
                BoardItem(
                    id=row["id"],
                    title=items[row["id"]].title if row["id"] in items else "",
                    score=row["score"] if row["score"] == row["score"] else None,
                    count=row.get("count"),
                )
                for row in rows
            ],
        )

    return r


__all__ = ["router"]
