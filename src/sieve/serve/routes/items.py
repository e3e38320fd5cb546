"""`/items`: the catalog. Every write reaches the serving funnel at once (`add_items`).

Ids containing `/` cannot be addressed by the `/items/{id}` paths (use the
bulk endpoint to write them); the check-then-insert of `POST /items` is not
atomic against a concurrent create of the same id (the later write wins).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Response, status

from sieve.data.records import Item
from sieve.serve.auth import ReadAccess, WriteAccess
from sieve.serve.errors import TooLarge
from sieve.serve.routes import (
    AUTH_ERRORS,
    CONFLICT,
    NOT_FOUND,
    TOO_LARGE,
    ItemId,
    ServiceDep,
)
from sieve.serve.schemas import BulkResult, ItemBatch, ItemPage, ItemPatch
from sieve.settings import Settings

#: Longest page of `GET /items`.
MAX_PAGE = 1000
#: Largest offset accepted (keeps the value inside every database's integer range).
MAX_OFFSET = 1_000_000_000


def _missing(item_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown item id {item_id!r}")


def router(settings: Settings) -> APIRouter:
    """The items router; bulk writes are bounded by `settings.max_batch`."""
    r = APIRouter(prefix="/items", tags=["items"], responses=AUTH_ERRORS)

    @r.post("", status_code=status.HTTP_201_CREATED, responses=CONFLICT)
    def create_item(item: Item, service: ServiceDep, _: WriteAccess) -> Item:
        """Add an item to the catalog (409 if its id exists: use PUT to replace)."""
        if service.store.get_item(item.id) is not None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"item {item.id!r} exists already; PUT /items/{{id}} replaces it",
            )
        service.store.upsert_items([item])
        service.items_changed([item])
        return item

    @r.get("")
    def list_items(
        service: ServiceDep,
        _: ReadAccess,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> ItemPage:
        """A page of the catalog in id order, with the total count."""
        return ItemPage(
            items=service.store.list_items(offset, limit),
            offset=offset,
            limit=limit,
            total=service.store.count_items(),
        )

    @r.post("/bulk", responses=TOO_LARGE)
    def upsert_items(batch: ItemBatch, service: ServiceDep, _: WriteAccess) -> BulkResult:
        """Insert or replace many items in one transaction (at most `max_batch`)."""
        if len(batch.items) > settings.max_batch:
            raise TooLarge(
                f"{len(batch.items)} items in one request; the limit is {settings.max_batch} "
                "(max_batch): split the batch"
            )
        count = service.store.upsert_items(batch.items)
        service.items_changed(list({i.id: i for i in batch.items}.values()))
        return BulkResult(upserted=count)

    @r.get("/{item_id}", responses=NOT_FOUND)
    def get_item(item_id: ItemId, service: ServiceDep, _: ReadAccess) -> Item:
        """One item."""
        item = service.store.get_item(item_id)
        if item is None:
            raise _missing(item_id)
        return item

    @r.put("/{item_id}")
    def put_item(item_id: ItemId, item: Item, service: ServiceDep, _: WriteAccess) -> Item:
        """Create or replace an item (all fields); the body's id must be the path's."""
        if item.id != item_id:
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": ["body", "id"],
                        "msg": f"the body's id {item.id!r} differs from the path's {item_id!r}",
                        "type": "value_error",
                    }
                ],
            )
        service.store.upsert_items([item])
        service.items_changed([item])
        return item

    @r.patch("/{item_id}", responses=NOT_FOUND)
    def patch_item(
        item_id: ItemId,
        patch: Annotated[ItemPatch, Body()],
        service: ServiceDep,
        _: WriteAccess,
    ) -> Item:
        """Change some fields of an item; the fields given replace the stored ones."""
        current = service.store.get_item(item_id)
        if current is None:
            raise _missing(item_id)
        # null means "unchanged", except for created_at, where it clears the date
        changes = {
            k: v
            for k, v in patch.model_dump(exclude_unset=True).items()
            if v is not None or k == "created_at"
        }
        item = Item.model_validate({**current.model_dump(), **changes})
        service.store.upsert_items([item])
        service.items_changed([item])
        return item

    @r.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
    def delete_item(item_id: ItemId, service: ServiceDep, _: WriteAccess) -> Response:
        """Remove an item from the catalog (its events stay); it is no longer served."""
        current = service.store.get_item(item_id)
        if current is None or not service.store.delete_item(item_id):
            raise _missing(item_id)
        service.items_removed([current])
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return r


__all__ = ["MAX_OFFSET", "MAX_PAGE", "router"]
