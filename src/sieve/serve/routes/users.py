"""`/users`: users and their attributes.

Users are also created implicitly, with no attributes, by the first event
that names them (`POST /events`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from sieve.data.records import User
from sieve.serve.auth import ReadAccess, WriteAccess
from sieve.serve.errors import TooLarge
from sieve.serve.routes import AUTH_ERRORS, CONFLICT, NOT_FOUND, TOO_LARGE, ServiceDep, UserId
from sieve.serve.routes.items import MAX_OFFSET, MAX_PAGE
from sieve.serve.schemas import BulkResult, UserBatch, UserPage, UserPatch
from sieve.settings import Settings


def _missing(user_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown user id {user_id!r}")


def router(settings: Settings) -> APIRouter:
    """The users router; bulk writes are bounded by `settings.max_batch`."""
    r = APIRouter(prefix="/users", tags=["users"], responses=AUTH_ERRORS)

    @r.post("", status_code=status.HTTP_201_CREATED, responses=CONFLICT)
    def create_user(user: User, service: ServiceDep, _: WriteAccess) -> User:
        """Add a user (409 if the id exists: use PUT to replace)."""
        if service.store.get_user(user.id) is not None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"user {user.id!r} exists already; PUT /users/{{id}} replaces it",
            )
        service.store.upsert_users([user])
        service.users_changed([user.id])
        return user

    @r.get("")
    def list_users(
        service: ServiceDep,
        _: ReadAccess,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> UserPage:
        """A page of users in id order, with the total count."""
        return UserPage(
            users=service.store.list_users(offset, limit),
            offset=offset,
            limit=limit,
            total=service.store.count_users(),
        )

    @r.post("/bulk", responses=TOO_LARGE)
    def upsert_users(batch: UserBatch, service: ServiceDep, _: WriteAccess) -> BulkResult:
        """Insert or replace many users in one transaction (at most `max_batch`)."""
        if len(batch.users) > settings.max_batch:
            raise TooLarge(
                f"{len(batch.users)} users in one request; the limit is {settings.max_batch} "
                "(max_batch): split the batch"
            )
        upserted = service.store.upsert_users(batch.users)
        service.users_changed([u.id for u in batch.users])
        return BulkResult(upserted=upserted)

    @r.get("/{user_id}", responses=NOT_FOUND)
    def get_user(user_id: UserId, service: ServiceDep, _: ReadAccess) -> User:
        """One user."""
        user = service.store.get_user(user_id)
        if user is None:
            raise _missing(user_id)
        return user

    @r.put("/{user_id}")
    def put_user(user_id: UserId, user: User, service: ServiceDep, _: WriteAccess) -> User:
        """Create or replace a user; the body's id must be the path's."""
        if user.id != user_id:
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": ["body", "id"],
                        "msg": f"the body's id {user.id!r} differs from the path's {user_id!r}",
                        "type": "value_error",
                    }
                ],
            )
        service.store.upsert_users([user])
        service.users_changed([user_id])
        return user

    @r.patch("/{user_id}", responses=NOT_FOUND)
    def patch_user(user_id: UserId, patch: UserPatch, service: ServiceDep, _: WriteAccess) -> User:
        """Merge attributes into a user's (keys given replace, others stay)."""
        current = service.store.get_user(user_id)
        if current is None:
            raise _missing(user_id)
        user = User(id=user_id, attributes={**current.attributes, **patch.attributes})
        service.store.upsert_users([user])
        service.users_changed([user_id])
        return user

    @r.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
    def delete_user(user_id: UserId, service: ServiceDep, _: WriteAccess) -> Response:
        """Remove a user (their events stay in the log)."""
        if not service.store.delete_user(user_id):
            raise _missing(user_id)
        service.users_changed([user_id])
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return r


__all__ = ["router"]
