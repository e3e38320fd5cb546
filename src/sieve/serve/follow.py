"""What a server process reads from the shared stores on a short poll, so
that any number of processes (on one host or many) behave as one service.

One background thread (`Follower`) polls:

- the registry's serving version (`model_dir/CURRENT`) every
  `model_poll_seconds`: a promoted version is loaded beside the serving one
  and swapped in (`ModelHolder.load`); every response names the version
  that served it (`X-Sieve-Model`);
- the store's catalog change sequence every `catalog_poll_seconds`: items
  written or deleted through another replica (`POST /items` there) reach
  this one's funnel without a reload. Changes are read after the number
  this process last saw, a page at a time, with the items as they are now;
  its own writes come back too and are applied again (same rows, no harm);
- the experiments (`ExperimentBook.refresh`) every `EXPERIMENTS_POLL_SECONDS`;
- and nudges the online counters' fold every tick (the log may have grown
  through another replica).

Everything else a request reads is shared already: events, impressions and
experiments in the store; sessions (the stored events), online counters,
precomputed lists, bandit state and served-request records in the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sieve.experiments.online import ExperimentBook
from sieve.registry import ModelRegistry
from sieve.serve.holder import ModelHolder
from sieve.settings import Settings
from sieve.storage import Store

log = logging.getLogger("sieve.serve")

#: How often experiments are re-read.
EXPERIMENTS_POLL_SECONDS = 2.0
#: Catalog changes read per page.
CATALOG_PAGE = 5_000


class Follower:
    """The polling thread of one server process (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        holder: ModelHolder,
        experiments: ExperimentBook,
        load_model: Callable[[], bool],
        nudge: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.holder = holder
        self.experiments = experiments
        self._load_model = load_model
        self._nudge = nudge
        self._clock = clock
        #: the last catalog change number this process has applied
        self.catalog_seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------- jobs
    def poll_model(self) -> bool:
        """Swap to a newly promoted version; True when one was loaded."""
        current = ModelRegistry(self.settings.model_dir).current()
        if current is None or current == self.holder.version:
            return False
        log.info("model %s promoted: loading it", current)
        return self._load_model()

    def poll_catalog(self) -> int:
        """Apply the catalog changes numbered after `catalog_seq`; returns how
        many items were applied."""
        applied = 0
        while True:
            changes = self.store.catalog_changes(self.catalog_seq, limit=CATALOG_PAGE)
            if not changes:
                return applied
            ids = list(dict.fromkeys(item_id for _, item_id in changes))
            found = self.store.get_items(ids)
            self.holder.apply_changes(list(found.values()), [i for i in ids if i not in found])
            self.catalog_seq = changes[-1][0]
            applied += len(ids)
            if len(changes) < CATALOG_PAGE:
                return applied

    # ------------------------------------------------------------ running
    def start(self) -> threading.Event:
        """Start the thread; returns the event that stops it."""
        s = self.settings
        periods = {
            "model": s.model_poll_seconds,
            "catalog": s.catalog_poll_seconds,
            "experiments": EXPERIMENTS_POLL_SECONDS,
        }
        active = {job: p for job, p in periods.items() if p > 0}
        tick = min(active.values())
        jobs: dict[str, Callable[[], object]] = {
            "model": self.poll_model,
            "catalog": self.poll_catalog,
            "experiments": lambda: self.experiments.refresh(force=True),
        }

        def loop() -> None:
            due = dict.fromkeys(active, self._clock())
            while not self._stop.wait(tick):
                now = self._clock()
                for job, period in active.items():
                    if now < due[job]:
                        continue
                    due[job] = now + period
                    try:
                        jobs[job]()
                    except Exception:  # keep serving what is loaded; say why in the log
                        log.exception("could not follow the shared stores (%s)", job)
                self._nudge()

        self._thread = threading.Thread(target=loop, name="sieve-follower", daemon=True)
        self._thread.start()
        return self._stop

    def stop(self) -> None:
        self._stop.set()


__all__ = ["CATALOG_PAGE", "EXPERIMENTS_POLL_SECONDS", "Follower"]
