"""One active retraining worker: a lease in the shared store.

Any number of `sieve worker` processes may run beside the replicas (a hot
standby, a second host); the one holding the lease `sieve-retrain-worker`
(`Store.acquire_lease`: a row with an expiry, on PostgreSQL and SQLite
alike) trains and promotes, the others wait and say so. The holder renews
it every `seconds / 3` while it trains (a heartbeat thread) and on every
poll while it idles; a worker that dies or hangs loses it after `seconds`,
and a standby takes over. A training whose lease was lost meanwhile (a
stall longer than the lease, another worker took over) registers its
candidate but does not promote it: two workers never promote at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sieve.storage import Store, StoreError

log = logging.getLogger(__name__)

#: The lease's name in the store.
LEASE_NAME = "sieve-retrain-worker"


class LeaseHeld(RuntimeError):
    """Another worker holds the retraining lease; the message names it."""


class WorkerLease:
    """The retraining lease as one worker holds it (see the module doc)."""

    def __init__(self, store: Store, seconds: float = 60.0, holder: str | None = None) -> None:
        if seconds <= 0:
            raise ValueError(f"a lease lasts a positive number of seconds, got {seconds}")
        self.store = store
        self.seconds = seconds
        #: who holds it: host, process and a random part (two workers in one process differ)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"

    def acquire(self) -> bool:
        """Take or renew the lease; False when another worker holds it (or
        the store cannot be reached: nobody can be sure to hold it then)."""
        try:
            return self.store.acquire_lease(LEASE_NAME, self.holder, self.seconds)
        except StoreError:
            log.warning("retraining lease not renewed: store unavailable", exc_info=True)
            return False

    def release(self) -> None:
        try:
            self.store.release_lease(LEASE_NAME, self.holder)
        except StoreError:  # it expires on its own
            log.warning("retraining lease not released: store unavailable", exc_info=True)

    def other(self) -> str:
        """Who holds the lease now, in words (for the waiting worker's message)."""
        found = self.store.lease(LEASE_NAME)
        if found is None:
            return "nobody (it just expired)"
        holder, left = found
        return f"{holder}, {left:.0f} s left unless renewed"

    @contextmanager
    def heartbeat(self) -> Iterator[Callable[[], bool]]:
        """Renew the lease every `seconds / 3` for the duration of the block;
        yields a check that the lease is still held (renewing it once more)."""
        stop = threading.Event()
        lost = threading.Event()

        def beat() -> None:
            while not stop.wait(self.seconds / 3):
                if not self.acquire():
                    lost.set()

        thread = threading.Thread(target=beat, name="sieve-worker-lease", daemon=True)
        thread.start()
        try:
            yield lambda: not lost.is_set() and self.acquire()
        finally:
            stop.set()
            thread.join()


__all__ = ["LEASE_NAME", "LeaseHeld", "WorkerLease"]
