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

The lane keeps the wall time and the CPU time (the computing thread's own)
of its computations (`seconds`, `cpu_seconds`: Prometheus's
`sieve_live_lane_seconds` and `sieve_live_lane_cpu_seconds`). Their ratio
tells an operator where a live answer's time goes under load: near 1, in
its own computation; well below 1, waiting for the interpreter lock that
the process's other threads hold (HTTP, event batches, background writers),
or for the cache's reads inside it. A process whose lane waits more than it
computes answers more with more processes (`workers`), not with more slots.

Waiting requests are also answered together (`submit`): the one that gets a
slot computes, as one block, every waiting request of the same kind (the
same funnel), up to `BLOCK` of them, through the funnel's block path
(`Funnel.recommend_queries`: one ranker call, each stage over the block, a
list the same as the request's alone). Most of a small live answer's CPU is
a fixed cost per stage, so under load a block costs little more than one
answer; with no one waiting a block is one request and nothing changes.

Writes take their turn too (`yield_to_live`): an event batch first waits,
within `ingest_yield_seconds`, for the computations that arrived before it,
since its Python work beside a computation slowed every answer of the block.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import threadpoolctl

T = TypeVar("T")
R = TypeVar("R")

#: The most waiting requests one computation answers together: bounds the
#: wait of the block's first request behind the others.
BLOCK = 32


class Busy(RuntimeError):
    """Every lane slot stayed taken for the longest allowed wait (HTTP 503)."""


@dataclass(eq=False)
class _Job(Generic[T, R]):
    """One request submitted to the lane: its input, then its result or error."""

    key: Hashable
    item: T
    #: its place in arrival order (`Lane.yield_to_live`)
    ticket: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None
    #: a computation has taken it (it is no longer waiting)
    taken: bool = False

    def outcome(self) -> R:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Lane:
    """At most `width` funnel computations at once; a waiter gives up after
    `wait_seconds` (None: waits as long as it takes)."""

    def __init__(
        self,
        width: int,
        wait_seconds: float | None,
        *,
        wall_clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if width < 1:
            raise ValueError(f"a lane needs a width of at least 1, got {width}")
        self.width = width
        self.wait_seconds = wait_seconds
        self._wall_clock = wall_clock
        #: the calling thread's CPU time (a computation runs in one thread)
        self._cpu_clock = cpu_clock
        # one slot is a plain lock: acquiring and releasing it is C code, where
        # a semaphore's waiters go through a Python-level condition
        self._slots: threading.Lock | threading.BoundedSemaphore = (
            threading.Lock() if width == 1 else threading.BoundedSemaphore(width)
        )
        self._lock = threading.Lock()
        self._pending: list[_Job[object, object]] = []
        #: requests waiting for a slot now, and requests turned away so far
        self.waiting = 0
        self.refused = 0
        #: computations run, and the requests they answered (their ratio is
        #: the mean block)
        self.blocks = 0
        self.answered = 0
        #: wall and CPU seconds spent in computations so far (see the module doc)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        #: arrival tickets of the computations not finished yet, oldest first
        #: (a dict keeps insertion order), and writes waiting for them
        self._tickets = itertools.count()
        self._open: dict[int, None] = {}
        self._finished = threading.Condition(self._lock)
        #: writes waiting for earlier computations now
        self.yielding = 0
        #: writes that waited for earlier computations (`yield_to_live`), and
        #: the seconds they waited
        self.yields = 0
        self.yield_seconds = 0.0

    def _acquire(self) -> bool:
        """Take a slot, waiting at most `wait_seconds`; False if none freed up."""
        if self._slots.acquire(blocking=False):  # the common case costs no lock dance
            return True
        with self._lock:
            self.waiting += 1
        try:
            if self.wait_seconds is None:
                return self._slots.acquire()
            return self._slots.acquire(timeout=self.wait_seconds)
        finally:
            with self._lock:
                self.waiting -= 1

    def _arrive(self) -> int:
        """A ticket for a computation arriving now (under `_lock`)."""
        ticket = next(self._tickets)
        self._open[ticket] = None
        return ticket

    def _finish(self, tickets: Sequence[int]) -> None:
        with self._lock:
            self._close(tickets)

    def _close(self, tickets: Sequence[int]) -> None:
        """Close these computations' tickets and wake the writes waiting for
        them (under `_lock`)."""
        for t in tickets:
            self._open.pop(t, None)
        if self.yielding:
            self._finished.notify_all()

    def yield_to_live(self, max_seconds: float) -> float:
        """Wait until every live computation that arrived before this call
        has finished, at most `max_seconds`; the seconds waited. A write (an
        event batch) calls it before its work: the interpreter runs one
        thread at a time, so a batch's Python work running beside a
        computation delayed it by about as much as the batch cost, and with
        it every answer of its block. Requests then take the interpreter in
        arrival order; the wait is bounded, and it holds no slot, so a write
        stuck on its store never holds up a computation."""
        with self._lock:
            if max_seconds <= 0 or not self._open:
                return 0.0
            mine = next(self._tickets)
            start = self._wall_clock()
            self.yielding += 1
            try:
                self._finished.wait_for(
                    lambda: not self._open or next(iter(self._open)) > mine, max_seconds
                )
            finally:
                self.yielding -= 1
            waited = self._wall_clock() - start
            self.yields += 1
            self.yield_seconds += waited
        return waited

    def _busy(self) -> Busy:
        self.refused += 1  # under self._lock
        return Busy(
            f"the server is busy: {self.width} live computation(s) at a time "
            f"(live_concurrency) and none freed up within {self.wait_seconds:g} s "
            "(live_wait_seconds); retry later"
        )

    @contextmanager
    def _timed(self) -> Iterator[None]:
        """Add the wall and CPU time of the block to `seconds` and `cpu_seconds`."""
        wall, cpu = self._wall_clock(), self._cpu_clock()
        try:
            yield
        finally:
            wall, cpu = self._wall_clock() - wall, self._cpu_clock() - cpu
            with self._lock:
                self.seconds += wall
                self.cpu_seconds += cpu

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block in one of the lane's slots (`Busy` when none frees
        up within `wait_seconds`): for a computation that is not submitted."""
        with self._lock:
            ticket = self._arrive()
        try:
            if not self._acquire():
                with self._lock:
                    raise self._busy()
            try:
                with self._timed():
                    yield
            finally:
                self._slots.release()
        finally:
            self._finish([ticket])

    def submit(self, key: Hashable, item: T, compute: Callable[[list[T]], Sequence[R]]) -> R:
        """`compute([item])[0]`, computed in a slot, together with the other
        waiting items of the same `key` (`compute` maps a block of items to
        their results, each as if alone). If a block fails, each of its items
        is computed alone, so one bad request fails no other. `Busy` when no
        slot freed up within `wait_seconds` and no block took the item."""
        job: _Job[T, R] = _Job(key, item)
        with self._lock:
            job.ticket = self._arrive()
            self._pending.append(job)  # type: ignore[arg-type]
        if not self._acquire():
            with self._lock:
                if not job.taken:
                    self._pending.remove(job)  # type: ignore[arg-type]
                    self._close([job.ticket])
                    raise self._busy()
            return job.outcome()  # a block that took it is computing it now
        try:
            if not job.taken:  # no block took it while this request waited: lead one
                with self._lock:
                    block: list[_Job[T, R]] = [job]
                    for other in self._pending:
                        if len(block) == BLOCK:
                            break
                        if other is not job and other.key == key:
                            block.append(other)  # type: ignore[arg-type]
                    for j in block:
                        j.taken = True
                        self._pending.remove(j)  # type: ignore[arg-type]
                    self.blocks += 1
                    self.answered += len(block)
                try:
                    with self._timed():
                        _run(block, compute)
                finally:
                    self._finish([j.ticket for j in block])
        finally:
            self._slots.release()
        return job.outcome()


def _run(block: list[_Job[T, R]], compute: Callable[[list[T]], Sequence[R]]) -> None:
    """Compute a block's results; if it fails, each item alone."""
    try:
        try:
            for j, r in zip(block, compute([j.item for j in block]), strict=True):
                j.result = r
        except Exception as e:
            if len(block) == 1:
                block[0].error = e
            else:  # one bad request must not fail the others
                for j in block:
                    try:
                        j.result = compute([j.item])[0]
                    except Exception as alone:
                        j.error = alone
    finally:
        for j in block:
            if j.result is None and j.error is None:
                j.error = RuntimeError("the computation of this request was interrupted")
            j.done.set()


def limit_blas_threads(threads: int) -> None:
    """Give NumPy's and SciPy's BLAS `threads` threads for the rest of the
    process's life (`Settings.blas_threads`): one computation runs at a time,
    and a threaded matrix product took every core from the event loop and the
    requests' threads. threadpoolctl lets only the first thread that limited
    OpenBLAS change it again; the server's limit overrides whoever that was."""
    clear = getattr(threadpoolctl.OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    threadpoolctl.threadpool_limits(threads, user_api="blas")


__all__ = ["BLOCK", "Busy", "Lane", "limit_blas_threads"]
