"""Impression logging off the request path.

Every served list is logged (request id, user, items with positions, scores,
sources and propensities, model version, experiment arm). Writing each one in
the request would add a database commit to every response, so a background
thread batches them: a response waits for nothing, and the log is at most
`flush_seconds` behind. A click never misses the impression it answers: the
lists of its user still waiting to be written are matched in memory
(`unwritten_shown`) beside the stored ones, so an event batch neither waits
for the log's write nor forces a small one (a forced write per event batch
had turned the log's batches of a 0.2-s window into one commit per batch).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sieve.data.records import Impression, ImpressionArm, ImpressionItem
from sieve.experiments.online import TEAM_PREFIX, Arm
from sieve.explore.random_slice import RANDOM_SOURCE
from sieve.serve.schemas import RecommendationList, RecommendedItem
from sieve.storage.base import Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

#: An impression, or a function that builds it (in the logger's thread, off
#: the request path).
Pending = Impression | Callable[[], Impression]
#: A queued list: its sequence number, its user (None: anonymous) and itself.
_Queued = tuple[int, str | None, Pending]


class ImpressionLogger:
    """Batches impressions into the store from a background thread."""

    def __init__(
        self,
        store: Store,
        flush_seconds: float = 0.2,
        max_batch: int = 500,
        flush_timeout: float | None = None,
        max_backlog: int = 100_000,
    ) -> None:
        self._store = store
        #: lists waiting to be written beyond which new ones are dropped (and
        #: counted in `dropped`): memory stays bounded when the store writes
        #: slower than the service serves, for as long as that lasts
        self._max_backlog = max_backlog
        self._flush_timeout = flush_timeout
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self.dropped = 0
        # counts of impressions queued and written (or dropped): `flush` waits
        # for the background thread's batch in flight, not only for the queue
        self._queued = 0
        self._handled = 0
        self._progress = threading.Condition()
        # the lists queued and not yet handled, by user (under `_progress`)
        self._unwritten: dict[str, dict[int, Pending]] = {}
        # set by `flush`: write what is queued now instead of gathering a batch
        self._hurry = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sieve-impressions", daemon=True)
        self._thread.start()

    def log(self, impression: Pending, user_id: str | None) -> None:
        """Queue one served list (of `user_id`, None when anonymous), or a
        function that builds it (never blocks the request); dropped, counted
        and warned of once per thousand, when `max_backlog` lists are waiting
        already."""
        with self._progress:
            if self._queued - self._handled >= self._max_backlog:
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning(
                        "impression log %d lists behind: %d impressions dropped so far",
                        self._queued - self._handled,
                        self.dropped,
                    )
                return
            seq = self._queued
            self._queued += 1
            if user_id is not None:
                self._unwritten.setdefault(user_id, {})[seq] = impression
            self._queue.put((seq, user_id, impression))

    def unwritten_shown(
        self, wanted: Collection[tuple[str, str]]
    ) -> list[tuple[str, str, datetime, str]]:
        """(user, item, served at, request id) of every (user, item) of
        `wanted` in a list queued and not yet written: what attribution adds
        to the stored impressions (those lists are written soon, or dropped
        with the store's outage)."""
        users = {u for u, _ in wanted}
        with self._progress:
            pending = [p for u in users for p in self._unwritten.get(u, {}).values()]
        out: list[tuple[str, str, datetime, str]] = []
        for p in pending:
            try:
                imp = p if isinstance(p, Impression) else p()
            except Exception:  # the writer drops it and says so
                continue
            user = imp.user_id
            if user is None:
                continue
            served = imp.timestamp or datetime.now(UTC)  # as the store logs it
            out.extend(
                (user, it.item_id, served, imp.request_id)
                for it in imp.items
                if (user, it.item_id) in wanted
            )
        return out

    def flush(self) -> None:
        """Wait until every impression queued so far is written by the
        background thread (before attribution, reports, drift checks);
        `StoreUnavailable` when the store has not taken them within
        `flush_timeout` seconds (None: wait), so a request never hangs on a
        stuck database."""
        timeout = self._flush_timeout
        self._hurry.set()
        with self._progress:
            target = self._queued
            done = self._progress.wait_for(lambda: self._handled >= target, timeout=timeout)
            behind = target - self._handled
        if not done:
            raise StoreUnavailable(
                f"the impression log is {behind} impressions behind: the database did not "
                f"take them within {timeout:g} s"
            )

    def _write(self, pending: list[_Queued]) -> None:
        """Write queued lists in batches of `max_batch`. A list that cannot be
        built, or a batch the store refuses, is dropped and counted: the
        writer's thread lives on, and nothing waits for lists that never come."""
        if not pending:
            return
        parts = [pending[k : k + self._max_batch] for k in range(0, len(pending), self._max_batch)]
        built = [self._build(part) for part in parts]
        with self._write_lock:
            for part, impressions in zip(parts, built, strict=True):
                try:
                    if impressions:
                        self._store.log_impressions(impressions)
                except Exception as e:  # an outage is expected; anything else is a bug
                    self.dropped += len(impressions)
                    log.log(
                        logging.WARNING if isinstance(e, StoreError) else logging.ERROR,
                        "impression log failed: %d impressions lost",
                        len(impressions),
                        exc_info=True,
                    )
                finally:
                    self._handled_part(part)

    def _build(self, part: list[_Queued]) -> list[Impression]:
        """The impressions of queued lists; one whose function fails is dropped."""
        out: list[Impression] = []
        for _, _, p in part:
            try:
                out.append(p if isinstance(p, Impression) else p())
            except Exception:
                self.dropped += 1
                log.exception("an impression could not be built: dropped")
        return out

    def _handled_part(self, part: list[_Queued]) -> None:
        """Count queued lists as handled (written or dropped) and forget them."""
        with self._progress:
            self._handled += len(part)
            for seq, user, _ in part:
                mine = None if user is None else self._unwritten.get(user)
                if user is not None and mine is not None:
                    mine.pop(seq, None)
                    if not mine:
                        del self._unwritten[user]
            self._progress.notify_all()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                first = self._queue.get(timeout=self._flush_seconds)
            except queue.Empty:
                continue
            if first is None:
                break
            # gather for up to `flush_seconds` (one commit for many lists, not
            # one each: the writes were ~5% of a loaded server's CPU), unless
            # a flush is waiting for this batch or a full batch is waiting
            # already: under load the queue must not grow (every queued list
            # is objects that each full garbage collection walks; a backlog
            # of 10K lists made those collections pause the process ~1 s)
            if not self._closed.is_set() and self._queue.qsize() < self._max_batch:
                self._hurry.wait(self._flush_seconds)
            self._hurry.clear()
            batch: list[_Queued] = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._closed.set()
                    break
                batch.append(item)
            self._write(batch)

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._closed.set()
        self._hurry.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
        batch: list[_Queued] = []  # what the thread left, written here
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        self._write(batch)


def slot_sources(item: RecommendedItem) -> list[str]:
    """The sources logged for a slot: the candidate sources, plus `explore`
    for an exploration slot, `random` for a slot of the random slice and
    `team:<arm>` for an interleaved one."""
    return logged_sources(item.sources, item.slot, item.team)


def logged_sources(sources: Iterable[str], slot: str, team: str | None) -> list[str]:
    """`slot_sources` from a slot's parts."""
    out = sorted(sources)
    if slot in ("explore", RANDOM_SOURCE):
        out.append(slot)
    if team is not None:
        out.append(f"{TEAM_PREFIX}{team}")
    return out


def build_impression(
    request_id: str,
    user_id: str | None,
    model_version: str,
    timestamp: datetime,
    context: Mapping[str, Any],
    arms: Sequence[Arm],
    slots: Iterable[tuple[str, float | None, list[str], float]],
) -> Impression:
    """An impression from validated parts (no re-validation); `slots` are
    (item id, score, logged sources, propensity) in list order."""
    return Impression.model_construct(
        request_id=request_id,
        user_id=user_id,
        timestamp=timestamp,
        model_version=model_version,
        experiment=arms[0].experiment.name if arms else None,
        arm=arms[0].name if arms else None,
        context={k: v for k, v in context.items() if v is not None},
        items=[
            ImpressionItem.model_construct(
                item_id=item_id,
                position=pos,
                score=score if score is not None else 0.0,
                sources=sources,
                propensity=propensity,
            )
            for pos, (item_id, score, sources, propensity) in enumerate(slots)
        ],
        arms=[
            ImpressionArm.model_construct(
                experiment=a.experiment.name, arm=a.name, propensity=a.propensity
            )
            for a in arms
        ],
    )


def impression_of(
    result: RecommendationList,
    context: Mapping[str, Any],
    arms: Sequence[Arm] = (),
    served_at: datetime | None = None,
) -> Impression:
    """The impression a served list logs (served now unless `served_at`)."""
    return build_impression(
        result.request_id,
        result.user_id,
        result.model_version,
        served_at if served_at is not None else datetime.now(UTC),
        context,
        arms,
        ((i.id, i.score, slot_sources(i), i.propensity) for i in result.items),
    )
