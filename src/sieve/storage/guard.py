"""A time limit on every store call, so a hanging database cannot hang a request.

A database that stops answering (a frozen server, a dead network path) leaves
a blocking driver waiting on its socket for as long as the kernel keeps the
connection: no driver option bounds that wait for a query already sent. So
every call of a `GuardedStore` runs on a bounded pool of its own threads and
the caller waits at most `timeout` seconds; past it the caller gets
`StoreUnavailable` (a 503 with `Retry-After` at the HTTP layer) while the
stuck thread finishes, or not, on its own. An exhausted connection pool is
reported the same way. Calls that finish in time cost one thread hand-off.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from sqlalchemy import exc

from sieve.storage.base import StoreUnavailable

#: Store methods that are not calls to the database (run in the caller's thread).
_LOCAL = frozenset({"close", "url", "engine", "dialect", "__enter__", "__exit__"})


class GuardedStore:
    """A store whose every database call has a time limit (see the module doc).

    `timeout` seconds per call (None: the wrapped store as it is); `workers`
    bounds the threads that may wait on the database at once."""

    def __init__(self, store: Any, timeout: float, workers: int = 16) -> None:
        self._store = store
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sieve-store")
        self._closed = threading.Event()

    @property
    def inner(self) -> Any:
        """The wrapped store (for work off the request path with no time limit)."""
        return self._store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name in _LOCAL or name.startswith("_") or not callable(attr):
            return attr
        return functools.partial(self._call, name, attr)

    def _call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closed.is_set():
            return fn(*args, **kwargs)
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except RuntimeError:  # the pool was shut down (interpreter exit)
            return fn(*args, **kwargs)
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout:
            future.cancel()  # not started yet: it never runs
            raise StoreUnavailable(
                f"{name}: the database at {getattr(self._store, 'url', '?')} did not answer "
                f"within {self._timeout:g} s (store_timeout_seconds)"
            ) from None
        except exc.TimeoutError as e:  # the connection pool had nothing to lend
            raise StoreUnavailable(f"{name}: every database connection is busy ({e})") from e

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._store.close()

    def __repr__(self) -> str:
        return f"GuardedStore({self._store!r}, timeout={self._timeout:g})"


__all__ = ["GuardedStore"]
