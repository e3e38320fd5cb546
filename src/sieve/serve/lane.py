"""How many funnel computations one server process runs at once.

A live answer is CPU work in Python: candidates, features, the ranker, the
re-ranking. CPython runs one thread's bytecode at a time, so N requests
computing in N pool threads do not finish sooner than one after the other;
they take turns on the interpreter lock, and every turn is a context switch
(on the 2-core benchmark machine half the server's CPU went to the kernel
switching threads, and the live throughput was 0.6× that of one thread at a
time). The lane lets `width` computations run; the others wait on a
semaphore, which costs no CPU, and take their turn in arrival order.

Only the computation holds the lane: the store reads (a request's events
and attributes) happen before, in the request's own thread, so a slow
database never holds it; the online counters' cache reads happen inside,
each within the cache's own time limit. A request that waited `wait_seconds` for it
is answered 503 with `Retry-After` (`Busy`) rather than queued without end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Busy(RuntimeError):
    """Every lane slot stayed taken for the longest allowed wait (HTTP 503)."""


class Lane:
    """At most `width` funnel computations at once; a waiter gives up after
    `wait_seconds` (None: waits as long as it takes)."""

    def __init__(self, width: int, wait_seconds: float | None) -> None:
        if width < 1:
            raise ValueError(f"a lane needs a width of at least 1, got {width}")
        self.width = width
        self.wait_seconds = wait_seconds
        # one slot is a plain lock: acquiring and releasing it is C code, where
        # a semaphore's waiters go through a Python-level condition
        self._slots: threading.Lock | threading.BoundedSemaphore = (
            threading.Lock() if width == 1 else threading.BoundedSemaphore(width)
        )
        self._lock = threading.Lock()
        #: requests waiting for a slot now, and requests turned away so far
        self.waiting = 0
        self.refused = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block in one of the lane's slots (`Busy` when none frees
        up within `wait_seconds`)."""
        if not self._slots.acquire(blocking=False):  # the common case costs no lock dance
            with self._lock:
                self.waiting += 1
            try:
                if self.wait_seconds is None:
                    got = self._slots.acquire()
                else:
                    got = self._slots.acquire(timeout=self.wait_seconds)
            finally:
                with self._lock:
                    self.waiting -= 1
            if not got:
                with self._lock:
                    self.refused += 1
                raise Busy(
                    f"the server is busy: {self.width} live computation(s) at a time "
                    f"(live_concurrency) and none freed up within {self.wait_seconds:g} s "
                    "(live_wait_seconds); retry later"
                )
        try:
            yield
        finally:
            self._slots.release()


__all__ = ["Busy", "Lane"]
