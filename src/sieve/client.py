"""`SieveClient` and `AsyncSieveClient`: the service's API from Python, on httpx.

Answers are parsed into the API's own pydantic models (`sieve.api`,
`sieve.data.records`), so a client sees the same types the service
validates, and this module imports nothing of the server.

- Retries: a 503 (the store or cache unavailable; the service says when to
  come back in `Retry-After`), a 429 and connection errors are retried up to
  `retries` times, waiting `Retry-After` when given, else an exponential
  backoff (`backoff` · 2^attempt, capped at `max_backoff`) with jitter. Every
  write is idempotent (events by id, catalog upserts by id), so a retry
  after a lost answer stores nothing twice.
- Batching: `send_events`, `upsert_items` and `upsert_users` split what they
  are given into requests of at most `batch_size` (the service refuses more
  than its `max_batch` with a 413), and add up the answers.
- Errors: any other non-2xx answer raises `SieveError` with the status and
  the service's `detail` (for a 422, its list of `{loc, msg, type}`).

    from sieve.client import SieveClient

    with SieveClient("http://localhost:8000", api_key="sk_...") as sieve:
        sieve.send_events([{"id": "e1", "user_id": "u1", "item_id": "i1", "type": "click"}])
        for item in sieve.recommend("u1", n=5).items:
            print(item.id, item.score, item.explanation)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from sieve.api import (
    BulkResult,
    ContextIn,
    EventsResult,
    Health,
    ItemPage,
    PopularItems,
    Readiness,
    RecommendationList,
    SessionRequest,
    SimilarItems,
    UserPage,
    VersionInfo,
)
from sieve.data.records import Event, Item, User

T = TypeVar("T", bound=BaseModel)
Record = TypeVar("Record", Event, Item, User)
#: Statuses worth another try: the service's "retry later" answers.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class SieveError(Exception):
    """A non-2xx answer: `status`, and the service's `detail` (a sentence, or
    for 422 the list of `{loc, msg, type}`)."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {path} → {status}: {detail}".strip())


class _Base:
    """What both clients share: settings, request building, answer parsing."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        batch_size: int = 1000,
    ) -> None:
        if retries < 0 or batch_size < 1:
            raise ValueError("retries must be >= 0 and batch_size >= 1")
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before the next try: `Retry-After` (seconds) when the
        service gives it, else exponential backoff with full jitter."""
        if response is not None:
            after = response.headers.get("Retry-After")
            if after is not None:
                try:
                    return min(max(float(after), 0.0), self.max_backoff * 10)
                except ValueError:
                    pass  # an HTTP date: fall back to the backoff
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _retry(self, attempt: int, response: httpx.Response | None) -> bool:
        if attempt >= self.retries:
            return False
        return response is None or response.status_code in RETRY_STATUSES

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise SieveError(
            response.status_code, detail, response.request.method, response.request.url.path
        )

    def _batches(self, records: Iterable[Any], kind: type[Record]) -> Iterator[list[Any]]:
        batch: list[Any] = []
        for r in records:
            batch.append(r.model_dump(mode="json", exclude_none=True) if isinstance(r, kind) else r)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    @staticmethod
    def _params(
        n: int,
        categories: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        context: ContextIn | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"n": n}
        if categories:
            params["categories"] = list(categories)
        if exclude:
            params["exclude"] = list(exclude)
        if context is not None:
            ctx = context if isinstance(context, ContextIn) else ContextIn(**context)
            params.update(ctx.model_dump(exclude_none=True))
        return params

    @staticmethod
    def _sum_events(results: Iterable[EventsResult]) -> EventsResult:
        total = EventsResult(received=0, inserted=0, duplicates=0, duplicate_ids=[])
        for r in results:
            total.received += r.received
            total.inserted += r.inserted
            total.duplicates += r.duplicates
            total.duplicate_ids.extend(r.duplicate_ids)
        return total


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


class SieveClient(_Base):
    """The API from synchronous code (see the module doc); a context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self.http = http or httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout
        )
        if http is not None:
            self.http.headers.update(self.headers)
        self._sleep = sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with retries (see the module doc); raises `SieveError` on non-2xx."""
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not self._retry(attempt, None):
                    raise
            if response is not None and not self._retry(attempt, response):
                return self._check(response)
            self._sleep(self._wait(attempt, response))
            attempt += 1

    def _get(self, model: type[T], path: str, **kwargs: Any) -> T:
        return model.model_validate_json(self.request("GET", path, **kwargs).content)

    # ---------------------------------------------------------------- events
    def send_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventsResult:
        """POST /events in batches of `batch_size`; the answers added up."""
        return self._sum_events(
            EventsResult.model_validate_json(
                self.request("POST", "/events", json={"events": batch}).content
            )
            for batch in self._batches(events, Event)
        )

    # --------------------------------------------------------------- catalog
    def upsert_items(self, items: Iterable[Item | Mapping[str, Any]]) -> int:
        """POST /items/bulk in batches; returns the ids written."""
        return sum(
            BulkResult.model_validate_json(
                self.request("POST", "/items/bulk", json={"items": batch}).content
            ).upserted
            for batch in self._batches(items, Item)
        )

    def upsert_users(self, users: Iterable[User | Mapping[str, Any]]) -> int:
        """POST /users/bulk in batches; returns the ids written."""
        return sum(
            BulkResult.model_validate_json(
                self.request("POST", "/users/bulk", json={"users": batch}).content
            ).upserted
            for batch in self._batches(users, User)
        )

    def get_item(self, item_id: str) -> Item | None:
        try:
            return self._get(Item, _path("items", item_id))
        except SieveError as e:
            if e.status == 404:
                return None
            raise

    def list_items(self, offset: int = 0, limit: int = 100) -> ItemPage:
        return self._get(ItemPage, "/items", params={"offset": offset, "limit": limit})

    def get_user(self, user_id: str) -> User | None:
        try:
            return self._get(User, _path("users", user_id))
        except SieveError as e:
            if e.status == 404:
                return None
            raise

    def list_users(self, offset: int = 0, limit: int = 100) -> UserPage:
        return self._get(UserPage, "/users", params={"offset": offset, "limit": limit})

    # ------------------------------------------------------- recommendations
    def recommend(
        self,
        user_id: str,
        n: int = 10,
        *,
        categories: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        context: ContextIn | Mapping[str, Any] | None = None,
    ) -> RecommendationList:
        """GET /recommendations/{user_id}."""
        params = self._params(n, categories, exclude, context)
        return self._get(RecommendationList, _path("recommendations", user_id), params=params)

    def recommend_session(self, request: SessionRequest) -> RecommendationList:
        """POST /recommendations: an anonymous session's list from its recent items."""
        body = request.model_dump(mode="json")
        answer = self.request("POST", "/recommendations", json=body)
        return RecommendationList.model_validate_json(answer.content)

    def similar(self, item_id: str, n: int = 10) -> SimilarItems:
        return self._get(SimilarItems, _path("items", item_id, "similar"), params={"n": n})

    def popular(self, n: int = 10, categories: Sequence[str] | None = None) -> PopularItems:
        return self._get(PopularItems, "/popular", params=self._params(n, categories))

    def experiment_report(self, name: str) -> dict[str, Any]:
        """GET /experiments/{name}/report: the arms' figures, as the service's JSON."""
        answer = self.request("GET", _path("experiments", name, "report"))
        report: dict[str, Any] = answer.json()
        return report

    # ---------------------------------------------------------------- system
    def health(self) -> Health:
        return self._get(Health, "/health")

    def ready(self) -> Readiness:
        """GET /ready (a 503 while not ready is an answer here, not retried)."""
        response = self.http.get("/ready")
        return Readiness.model_validate_json(response.content)

    def version(self) -> VersionInfo:
        return self._get(VersionInfo, "/version")


class AsyncSieveClient(_Base):
    """`SieveClient` for asyncio code: the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self.http = http or httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout
        )
        if http is not None:
            self.http.headers.update(self.headers)
        self._sleep = sleep

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with retries (see the module doc); raises `SieveError` on non-2xx."""
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not self._retry(attempt, None):
                    raise
            if response is not None and not self._retry(attempt, response):
                return self._check(response)
            await self._sleep(self._wait(attempt, response))
            attempt += 1

    async def _get(self, model: type[T], path: str, **kwargs: Any) -> T:
        return model.model_validate_json((await self.request("GET", path, **kwargs)).content)

    async def send_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventsResult:
        """POST /events in batches of `batch_size`; the answers added up."""
        results = []
        for batch in self._batches(events, Event):
            answer = await self.request("POST", "/events", json={"events": batch})
            results.append(EventsResult.model_validate_json(answer.content))
        return self._sum_events(results)

    async def upsert_items(self, items: Iterable[Item | Mapping[str, Any]]) -> int:
        total = 0
        for batch in self._batches(items, Item):
            answer = await self.request("POST", "/items/bulk", json={"items": batch})
            total += BulkResult.model_validate_json(answer.content).upserted
        return total

    async def upsert_users(self, users: Iterable[User | Mapping[str, Any]]) -> int:
        total = 0
        for batch in self._batches(users, User):
            answer = await self.request("POST", "/users/bulk", json={"users": batch})
            total += BulkResult.model_validate_json(answer.content).upserted
        return total

    async def get_item(self, item_id: str) -> Item | None:
        try:
            return await self._get(Item, _path("items", item_id))
        except SieveError as e:
            if e.status == 404:
                return None
            raise

    async def recommend(
        self,
        user_id: str,
        n: int = 10,
        *,
        categories: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        context: ContextIn | Mapping[str, Any] | None = None,
    ) -> RecommendationList:
        """GET /recommendations/{user_id}."""
        params = self._params(n, categories, exclude, context)
        return await self._get(RecommendationList, _path("recommendations", user_id), params=params)

    async def similar(self, item_id: str, n: int = 10) -> SimilarItems:
        return await self._get(SimilarItems, _path("items", item_id, "similar"), params={"n": n})

    async def popular(self, n: int = 10, categories: Sequence[str] | None = None) -> PopularItems:
        return await self._get(PopularItems, "/popular", params=self._params(n, categories))

    async def health(self) -> Health:
        return await self._get(Health, "/health")

    async def version(self) -> VersionInfo:
        return await self._get(VersionInfo, "/version")


__all__ = ["RETRY_STATUSES", "AsyncSieveClient", "SieveClient", "SieveError"]
