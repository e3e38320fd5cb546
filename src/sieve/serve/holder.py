"""The model holder: immutable serving snapshots, hot swap, experiment variants.

A `ServingSnapshot` is a funnel bound to the live online counters, with the
version it serves. Readers take `holder.snapshot` by reference and never
lock: nothing reachable from a published snapshot changes afterwards.

- Catalog changes (`apply_catalog`) build new funnels (`Funnel.with_items`:
  copies of the catalog arrays, the fitted models shared) for the serving
  version and every loaded variant, then publish them with one assignment.
  Each change gets a number in the holder's catalog change sequence.
- A swap (`load`) loads the promoted version beside the serving one, brings
  it up to the store's catalog, then — holding the writers' lock, so no
  change can slip between — replays every catalog change numbered after its
  sync began and publishes it. A `POST /items` committed during a reload is
  therefore in the new funnel.
- Experiment variants (`funnel_for(version)`) come from the same holder,
  are synced and kept current the same way, and read the same live
  counters: arms differ in their model, never in the freshness of their
  features. A variant is loaded outside every lock that readers take.

Writers (catalog changes, swaps) take one lock among themselves; readers
take none.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sieve.data.records import Item
from sieve.data.schema import ITEM_COLUMNS, UnknownIdError
from sieve.realtime.counters import OnlineCounters
from sieve.registry import ModelRegistry, RegistryError
from sieve.storage import Store

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger("sieve.serve")

#: Model versions of experiment arms kept loaded beside the serving one.
VARIANTS_MAX = 4


class NoModelError(RuntimeError):
    """No trained funnel to serve."""

    def __init__(self, model_dir: Path | None = None) -> None:
        where = f" in {model_dir}" if model_dir is not None else ""
        super().__init__(f"no model trained yet{where}: run `sieve train`")


@dataclass(frozen=True)
class ServingSnapshot:
    """What one request reads: the funnel (live counters bound) and its version."""

    funnel: Funnel
    version: str
    path: Path | None


#: Young, middle and full collection thresholds of a server process (Python's
#: defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 20)


def freeze_heap() -> None:
    """Collect once, then put every object alive (the loaded model, the
    libraries) out of the cyclic garbage collector's reach (`gc.freeze`).

    A full collection walks every tracked object; with the model in the heap
    each one paused the process for tens of milliseconds, and under load
    (objects that outlive a young collection, such as queued impressions,
    trigger full ones) they were the tail of the latency: cached answers at 8
    connections, p99 170 ms with them and 44 ms frozen. Called at start-up and
    after each model swap, so the replaced model's cycles are collected then.

    The collector's thresholds are raised too (`GC_THRESHOLDS`): with the
    defaults a server answering a thousand stored answers a second ran a full
    collection every second or so, each walking every object alive since the
    freeze (queued impressions, kept answers), 0.15–0.8 s apiece on the loaded
    2-core machine; reference counting frees almost everything a request
    makes, so collecting 70× less often costs little memory."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def current_model_path(model_dir: Path) -> Path | None:
    """Where the serving version's model lies (the registry's CURRENT), or None."""
    if not Path(model_dir).is_dir():
        return None
    registry = ModelRegistry(model_dir)
    version = registry.current()
    if version is None:
        return None
    try:
        return registry.model_path(version)
    except RegistryError:
        log.warning("%s/CURRENT names %r, which is not registered", model_dir, version)
        return None


def items_frame(items: Sequence[Item], available: bool | None = None) -> pd.DataFrame:
    """Catalog rows in the funnel's `add_items` layout (ITEM_COLUMNS + `available`)."""
    frame = pd.DataFrame(
        {
            "item_id": pd.Series([i.id for i in items], dtype=str),
            "title": pd.Series([i.title for i in items], dtype=object),
            "text": pd.Series([i.text for i in items], dtype=object),
            "categories": pd.Series([list(i.categories) for i in items], dtype=object),
            "created_at": np.array(
                [np.nan if i.created_at is None else i.created_at.timestamp() for i in items],
                dtype=np.float64,
            ),
            "attributes": pd.Series([dict(i.attributes) for i in items], dtype=object),
            "available": np.array(
                [i.available if available is None else available for i in items], dtype=bool
            ),
        }
    )
    return frame[[*ITEM_COLUMNS, "available"]]


def sync_catalog(funnel: Funnel, frame: pd.DataFrame) -> Funnel:
    """`funnel` brought up to a catalog frame (the store's): rows it lacks or
    holds with another availability are added; items gone from the frame
    become unavailable. Returns a new funnel when anything changed."""
    stale = np.zeros(len(frame), dtype=bool)
    for r, (item_id, available) in enumerate(
        zip(frame["item_id"], frame["available"], strict=True)
    ):
        try:
            stale[r] = funnel.is_available(funnel.item_index(item_id)) != bool(available)
        except UnknownIdError:
            stale[r] = True
    in_store = set(frame["item_id"])
    gone = [
        str(item_id)
        for k, item_id in enumerate(funnel.item_ids)
        if item_id not in in_store and funnel.is_available(k)
    ]
    parts = []
    if stale.any():
        parts.append(frame.loc[stale])
        log.info("the model took %d catalog rows newer than it", int(stale.sum()))
    if gone:
        parts.append(pd.DataFrame({"item_id": gone, "available": False}))
        log.info("%d items of the model are gone from the catalog: not served", len(gone))
    if not parts:
        return funnel
    return funnel.with_items(pd.concat(parts, ignore_index=True))


class ModelHolder:
    """The serving snapshot, its variants and the catalog change sequence."""

    def __init__(self, model_dir: Path, store: Store, counters: OnlineCounters) -> None:
        self.model_dir = Path(model_dir)
        self.store = store
        self.counters = counters
        self._snapshot: ServingSnapshot | None = None
        self._variants: OrderedDict[str, Funnel] = OrderedDict()
        self._write = threading.Lock()  # writers only: catalog changes and publishing
        self._loading = threading.Lock()  # one model load from disk at a time
        self._seq = 0  # the catalog change sequence
        self._changes: list[tuple[int, pd.DataFrame]] = []
        self._syncing = 0  # loads in progress (changes are kept for them to replay)
        #: why the last load failed (None: it did not fail)
        self.load_error: str | None = None

    # --------------------------------------------------------------- reading
    @property
    def snapshot(self) -> ServingSnapshot:
        """The serving snapshot; `NoModelError` before any model is loaded."""
        snap = self._snapshot
        if snap is None:
            raise NoModelError(self.model_dir)
        return snap

    @property
    def version(self) -> str | None:
        snap = self._snapshot
        return None if snap is None else snap.version

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    def funnel_for(self, version: str | None) -> Funnel:
        """The funnel of a registered version (an experiment arm's): loaded on
        first use beside the serving one, synced to the catalog, reading the
        live counters. None or the serving version → the serving funnel."""
        snap = self.snapshot
        if version is None or version == snap.version:
            return snap.funnel
        funnel = self._variants.get(version)
        if funnel is not None:
            return funnel
        with self._loading:
            funnel = self._variants.get(version)
            if funnel is not None:
                return funnel
            path = ModelRegistry(self.model_dir).model_path(version)
            funnel, start = self._prepared(path)
            with self._write:
                funnel = self._replayed(funnel, start)
                variants = OrderedDict(self._variants)
                variants[version] = funnel
                while len(variants) > VARIANTS_MAX:
                    variants.popitem(last=False)
                self._variants = variants
        log.info("loaded model %s for an experiment arm", version)
        return funnel

    # --------------------------------------------------------------- loading
    def load(self) -> bool:
        """(Re)load the version `CURRENT` names and publish it; False if none is trained."""
        path = current_model_path(self.model_dir)
        if path is None:
            return False
        with self._loading:
            funnel, start = self._prepared(path)
            replaced = self._snapshot is not None
            with self._write:
                funnel = self._replayed(funnel, start)
                self._snapshot = ServingSnapshot(funnel, str(funnel.version), path)
                self._variants = OrderedDict(
                    (v, f) for v, f in self._variants.items() if v != str(funnel.version)
                )
            self.load_error = None
        if replaced:  # at start-up the app freezes once it is ready
            freeze_heap()
        log.info("serving funnel %s from %s", funnel.version, path)
        return True

    def _prepared(self, path: Path) -> tuple[Funnel, int]:
        """A funnel from disk, synced to the store's catalog, reading the live
        counters, and the change number its sync began at."""
        from sieve.pipeline import Funnel

        with self._write:
            start = self._seq
            self._syncing += 1
        try:
            funnel = sync_catalog(Funnel.load(path), self.store.items_frame())
        except BaseException:
            with self._write:
                self._syncing -= 1
            raise
        funnel.online = self.counters
        return funnel, start

    def _replayed(self, funnel: Funnel, start: int) -> Funnel:
        """`funnel` with the catalog changes numbered after `start` (the
        caller holds the writers' lock)."""
        todo = [frame for seq, frame in self._changes if seq > start]
        self._syncing -= 1
        if not self._syncing:
            self._changes = []
        if todo:
            funnel = funnel.with_items(pd.concat(todo, ignore_index=True))
            log.info("replayed %d catalog changes made during the load", len(todo))
        return funnel

    # --------------------------------------------------------------- catalog
    def apply_catalog(self, frame: pd.DataFrame) -> None:
        """Catalog rows committed to the store: publish funnels that serve them
        (the serving one and each variant). Best effort: a funnel that cannot
        take them is caught up by the next reload."""
        if frame.empty:
            return
        with self._write:
            self._seq += 1
            if self._syncing:
                self._changes.append((self._seq, frame))
            snap = self._snapshot
            if snap is None:
                return
            try:
                funnel = snap.funnel.with_items(frame)
                variants = OrderedDict((v, f.with_items(frame)) for v, f in self._variants.items())
            except Exception:
                log.exception("the serving funnel could not take %d catalog rows", len(frame))
                return
            self._snapshot = ServingSnapshot(funnel, snap.version, snap.path)
            self._variants = variants

    def apply_changes(self, items: Sequence[Item], deleted: Sequence[str]) -> None:
        """Catalog changes read from the store's change sequence (another
        replica's writes, or this one's again): `items` as they are now, and
        the ids of deleted items, which the serving funnel stops serving."""
        funnel = self._snapshot.funnel if self._snapshot is not None else None
        known: list[str] = []
        for item_id in deleted:
            if funnel is None:
                break
            try:
                funnel.item_index(item_id)
            except UnknownIdError:
                continue
            known.append(item_id)
        parts = [items_frame(items)] if items else []
        if known:
            parts.append(pd.DataFrame({"item_id": known, "available": False}))
        if parts:
            self.apply_catalog(pd.concat(parts, ignore_index=True))


__all__ = [
    "VARIANTS_MAX",
    "ModelHolder",
    "NoModelError",
    "ServingSnapshot",
    "current_model_path",
    "freeze_heap",
    "items_frame",
    "sync_catalog",
]
