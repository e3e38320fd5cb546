"""Drift checks: has the traffic moved away from what the serving model learned?

The population stability index (PSI) of a recent distribution `a` against a
reference `e` over the same bins is

    PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)

with `a_i`, `e_i` the shares of bin i; an empty bin's share is replaced by
`eps` (1e-4; no renormalisation), so a bin that appears or vanishes adds a
large but finite term. Rules of thumb: < 0.1 stable, 0.1–0.25 moderate,
> 0.25 a real shift (the settings' `drift_psi_threshold` is 0.2).

Checks (`DriftMonitor.check`), each against the serving model:

- `item_popularity`: the *reference* is the model's training snapshot, the
  newest `sample_events` (200,000) events with `seq <= max_seq` of its
  manifest; *recent* is the newest `sample_events` events stored since.
  Items are ranked by their reference event count (ties by id) and cut into
  `bins` (10) bins of about equal reference event mass — bin 0 the head, the
  last bin the long tail; items the snapshot never saw count in the tail
  bin. PSI of the share of events per bin. Binning by popularity rather than
  comparing per-item shares keeps the index stable under sampling noise (a
  per-item PSI over thousands of items with few recent events is large even
  without drift) and measures what matters to a model trained on that
  snapshot: attention moving between head, torso and tail, or to items it
  does not know.
- `event_types`: PSI of the event-type mix, the same reference and recent
  events (a client that stops sending clicks, a new event source).
- `served_scores`: PSI of the scores of shown slots (quantile bins of the
  reference) — the model's output distribution; recent and reference as
  for the CTR below.
- `ctr_drop`: slots shown by the serving model version, split by time:
  *recent* = served in `[now − delay − window, now − delay)` (the delay,
  60 s, lets clicks on the newest slots arrive), *reference* = served before
  that, back to `reference_seconds` (7 days) or the model's registration.
  Each side is its newest `sample_slots` (100,000) slots.
  CTR = distinct clicked slots / shown slots, a slot being clicked when an
  event of the settings' `semantics.click_types` (`EventSemantics`, the
  definition of every CTR) cites its request and item; relative drop =
  (reference − recent) / reference.

Cost: every read is bounded and aggregated in the database — event counts
per item and per type over a `seq` range of at most `sample_events` (the
reference once per serving version), and at most `sample_slots` shown slots
per side through the model-version/time index — so a check costs the same
on a log of 40K events as on one of 400K.

Every check needs at least `drift_min_impressions` recent samples (events,
or shown slots; and as many reference slots for the impression checks);
with fewer it is reported with `value: null` and does not fire. A PSI above
`drift_psi_threshold` or a drop above `ctr_drop_threshold` fires: the
monitor writes the retraining trigger `model_dir/RETRAIN` with a one-line
reason, once per serving version and check (a rejected retrain leaves the
same version serving; it is not asked again every few minutes), and never
over a trigger already waiting.

Only the serving version's impressions are compared, so after a retrain the
CTR and score checks wait until the new model has served
`drift_min_impressions` slots before the window.

Size: the PSI and CTR-drop statistics (pure functions) and the monitor that
runs them over bounded windows of the store; the statistics are a third of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from prometheus_client import CollectorRegistry, Gauge

from sieve.monitoring.metrics import click_types
from sieve.registry import ModelRegistry, RegistryError

if TYPE_CHECKING:
    from sieve.settings import Settings
    from sieve.storage import Store

log = logging.getLogger(__name__)

#: The share an empty bin gets, so its log term stays finite.
EPS = 1e-4
#: The checks in the order they are reported.
CHECKS = ("item_popularity", "event_types", "served_scores", "ctr_drop")
#: The retraining trigger's file name (`sieve.training.worker.TRIGGER`; not imported:
#: monitoring sits below training).
TRIGGER = "RETRAIN"


# ------------------------------------------------------------------ PSI
def psi(expected: ArrayLike, actual: ArrayLike, eps: float = EPS) -> float:
    """PSI of `actual` against `expected`, two counts (or shares) over the same bins."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape:
        raise ValueError(f"two 1-d arrays over the same bins expected, got {e.shape}, {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Inner edges of `bins` quantile bins of `reference` (ties merged, so a
    reference with few distinct values gets fewer bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if len(ref) == 0:
        raise ValueError("the reference has no finite value")
    qs = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(qs)


def binned_psi(reference: ArrayLike, recent: ArrayLike, bins: int = 10, eps: float = EPS) -> float:
    """PSI of a numeric sample against a reference sample, over the reference's
    quantile bins (bin k holds values in [edge_{k-1}, edge_k); the outer bins
    are open-ended, so recent values beyond the reference's range still count)."""
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(recent, dtype=np.float64)
    ref, new = ref[np.isfinite(ref)], new[np.isfinite(new)]
    edges = quantile_edges(ref, bins)
    k = len(edges) + 1
    e = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k)
    a = np.bincount(np.searchsorted(edges, new, side="right"), minlength=k)
    return psi(e, a, eps)


def categorical_psi(reference: Iterable[Any], recent: Iterable[Any], eps: float = EPS) -> float:
    """PSI of the category mix of `recent` against `reference` (one value per event)."""
    e = pd.Series(list(reference)).value_counts()
    a = pd.Series(list(recent)).value_counts()
    keys = sorted(set(e.index) | set(a.index), key=str)
    return psi(e.reindex(keys, fill_value=0), a.reindex(keys, fill_value=0), eps)


@dataclass(frozen=True)
class PopularityBins:
    """Items cut into bins of about equal reference event mass (see the module doc)."""

    bin_of: pd.Series  # item id → bin (0 = the head)
    expected: NDArray[np.float64]  # reference events per bin

    @classmethod
    def fit(cls, items: Iterable[Any], bins: int = 10) -> PopularityBins:
        """Bins from the reference events' item ids (one per event)."""
        return cls.from_counts(pd.Series(list(items), dtype=object).value_counts(), bins)

    @property
    def bins(self) -> int:
        return len(self.expected)

    @classmethod
    def from_counts(cls, counts: pd.Series, bins: int = 10) -> PopularityBins:
        """Bins from reference event counts per item id (`Store.event_counts`):
        by count, most popular first; ties by id, so the cut is deterministic."""
        counts = counts.loc[counts > 0]
        if counts.empty:
            raise ValueError("no reference events")
        order = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        n = order.to_numpy(dtype=np.int64)
        before = np.cumsum(n) - n  # events of the items ranked above
        b = np.minimum(before * bins // int(n.sum()), bins - 1)
        expected = np.bincount(b, weights=n, minlength=bins).astype(np.float64)
        return cls(pd.Series(b, index=order.index), expected)

    def counts_of(self, per_item: pd.Series) -> NDArray[np.float64]:
        """Events per bin from event counts per item id (unknown items in the tail bin)."""
        b = pd.Series(per_item.index, dtype=object).map(self.bin_of)
        k = b.fillna(self.bins - 1).to_numpy(dtype=np.int64)
        w = per_item.to_numpy(dtype=np.float64)
        return np.bincount(k, weights=w, minlength=self.bins).astype(np.float64)

    def counts(self, items: Iterable[Any]) -> NDArray[np.float64]:
        """Events per bin of `items` (unknown items in the tail bin)."""
        b = pd.Series(list(items), dtype=object).map(self.bin_of)
        k = b.fillna(self.bins - 1).to_numpy(dtype=np.int64)
        return np.bincount(k, minlength=self.bins).astype(np.float64)

    def psi(self, items: Iterable[Any], eps: float = EPS) -> float:
        return psi(self.expected, self.counts(items), eps)


def popularity_psi(
    reference: Iterable[Any], recent: Iterable[Any], bins: int = 10, eps: float = EPS
) -> float:
    """PSI of recent events' items over the reference's popularity bins."""
    return PopularityBins.fit(reference, bins).psi(recent, eps)


# ------------------------------------------------------------------ CTR
def clicked_slots(
    impressions: pd.DataFrame, events: pd.DataFrame, kinds: Sequence[str]
) -> NDArray[np.bool_]:
    """Per shown slot (impressions_frame rows): whether a click event of `kinds`
    cites its request and item."""
    if impressions.empty:
        return np.zeros(0, dtype=bool)
    clicks = events.loc[events["request_id"].notna() & events["type"].isin(list(kinds))]
    if clicks.empty:
        return np.zeros(len(impressions), dtype=bool)
    pairs = pd.MultiIndex.from_arrays(
        [clicks["request_id"].astype(str), clicks["item_id"].astype(str)]
    )
    slots = pd.MultiIndex.from_arrays(
        [impressions["request_id"].astype(str), impressions["item_id"].astype(str)]
    )
    return np.asarray(slots.isin(pairs), dtype=bool)


def relative_drop(reference: float, recent: float) -> float:
    """(reference − recent) / reference; positive when the recent value is lower."""
    if reference <= 0:
        raise ValueError("the reference must be positive")
    return (reference - recent) / reference


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class CheckResult:
    """One check's outcome; `value` is None when the check could not run."""

    check: str
    value: float | None
    threshold: float
    fired: bool
    detail: str
    checked_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Reference:
    """What the serving version was trained on, read once per version."""

    version: str
    max_seq: int
    created_at: float
    events: int
    popularity: PopularityBins
    types: pd.Series  # event type → count
    first_seq: int  # the sample: seq in (first_seq, max_seq]


class DriftMonitor:
    """Runs the checks of the module doc against a store, keeps the latest
    results, exports them as gauges and writes the retraining trigger.

    `version` says which model is serving (None: nothing to compare); `flush`
    writes queued impressions before a check."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        version: Callable[[], str | None],
        registry: CollectorRegistry | None = None,
        flush: Callable[[], None] | None = None,
        window_seconds: float = 3600.0,
        delay_seconds: float = 60.0,
        reference_seconds: float = 7 * 86400.0,
        bins: int = 10,
        eps: float = EPS,
        clock: Callable[[], float] = time.time,
        sample_events: int = 200_000,
        sample_slots: int = 100_000,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model_dir = Path(settings.model_dir)
        self.window_seconds = window_seconds
        self.delay_seconds = delay_seconds
        self.reference_seconds = reference_seconds
        self.bins = bins
        self.eps = eps
        self.sample_events = sample_events
        self.sample_slots = sample_slots
        self._version = version
        self._flush = flush
        self._clock = clock
        self._clicks = click_types(settings)
        self._lock = threading.Lock()
        self._reference: _Reference | None = None
        self._results: list[CheckResult] = []
        self._triggered: set[tuple[str, str]] = set()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        r = registry if registry is not None else CollectorRegistry()
        self._psi = Gauge(
            "sieve_drift_psi",
            "Population stability index of the latest drift check",
            ["check"],
            registry=r,
        )
        self._ctr_drop = Gauge(
            "sieve_drift_ctr_relative_drop",
            "Relative CTR drop of the recent window against the reference",
            registry=r,
        )
        self._fired = Gauge(
            "sieve_drift_fired",
            "1 when the check's latest value is over its threshold",
            ["check"],
            registry=r,
        )
        self._checked_at = Gauge(
            "sieve_drift_last_check_timestamp_seconds",
            "When the drift checks last ran (Unix time)",
            registry=r,
        )

    # ------------------------------------------------------------ running
    def last(self) -> list[CheckResult]:
        """The latest results (empty before the first check)."""
        return list(self._results)

    def latest(self) -> list[dict[str, Any]]:
        """The latest results as JSON-able dicts (empty before the first check)."""
        return [r.as_dict() for r in self._results]

    def start(self, interval: float | None = None) -> threading.Event | None:
        """Check every `interval` seconds (default `drift_check_seconds`) in a
        daemon thread; returns the event that stops it (None when 0)."""
        interval = self.settings.drift_check_seconds if interval is None else interval
        if interval <= 0 or self._thread is not None:
            return None
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.check()
                except Exception:  # a failed check must not end the loop
                    log.exception("drift check failed")

        self._stop = stop
        self._thread = threading.Thread(target=loop, name="sieve-drift", daemon=True)
        self._thread.start()
        return stop

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background checks (waits up to `timeout` for one in progress)."""
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop = self._thread = None

    def check(self) -> list[CheckResult]:
        """Run every check now; fire the trigger if one is over its threshold."""
        with self._lock:
            now = self._clock()
            version = self._version()
            if version is None:
                results = [self._skipped(c, "no serving model", now) for c in CHECKS]
            else:
                results = self._run(version, now)
            self._results = results
            self._export(results, now)
            self._trigger(version, results)
            return results

    # ------------------------------------------------------------ checks
    def _threshold(self, check: str) -> float:
        s = self.settings
        return s.ctr_drop_threshold if check == "ctr_drop" else s.drift_psi_threshold

    def _skipped(self, check: str, why: str, now: float) -> CheckResult:
        return CheckResult(check, None, self._threshold(check), False, why, now)

    def _result(self, check: str, value: float, detail: str, now: float) -> CheckResult:
        threshold = self._threshold(check)
        return CheckResult(check, float(value), threshold, bool(value > threshold), detail, now)

    def _load_reference(self, version: str) -> _Reference | str:
        """The serving version's training snapshot (cached), or why there is none."""
        ref = self._reference
        if ref is not None and ref.version == version:
            return ref
        try:
            manifest = ModelRegistry(self.model_dir).manifest(version)
        except RegistryError as e:
            return f"no manifest for the serving model: {e}"
        if "max_seq" not in manifest.data:
            return f"the manifest of {version} does not say which events it saw (max_seq)"
        max_seq = int(manifest.data["max_seq"])
        first = max(0, max_seq - self.sample_events)
        per_item = self.store.event_counts(first, max_seq, "item_id")
        if per_item.empty:
            return f"no stored event with seq <= {max_seq} (the training snapshot)"
        ref = _Reference(
            version=version,
            max_seq=max_seq,
            created_at=float(manifest.created_at),
            events=int(per_item.sum()),
            popularity=PopularityBins.from_counts(per_item, self.bins),
            types=self.store.event_counts(first, max_seq, "type"),
            first_seq=first,
        )
        self._reference = ref
        return ref

    def _run(self, version: str, now: float) -> list[CheckResult]:
        ref = self._load_reference(version)
        if isinstance(ref, str):
            return [self._skipped(c, ref, now) for c in CHECKS]
        if self._flush is not None:
            self._flush()
        return [
            *self._event_checks(ref, now),
            *self._impression_checks(version, ref, now),
        ]

    def _event_checks(self, ref: _Reference, now: float) -> list[CheckResult]:
        need = self.settings.drift_min_impressions
        top = self.store.max_seq()
        first = max(ref.max_seq, top - self.sample_events)
        per_item = self.store.event_counts(first, top, "item_id")
        n = int(per_item.sum())
        if n < need:
            why = (
                f"{n} events since the training snapshot (seq > {ref.max_seq}); "
                f"{need} needed (drift_min_impressions)"
            )
            return [self._skipped(c, why, now) for c in ("item_popularity", "event_types")]
        value = psi(ref.popularity.expected, ref.popularity.counts_of(per_item), self.eps)
        popularity = self._result(
            "item_popularity",
            value,
            f"PSI over {ref.popularity.bins} popularity bins: {ref.events} training events "
            f"(seq {ref.first_seq + 1}..{ref.max_seq}) vs {n} since (seq {first + 1}..{top})",
            now,
        )
        got = self.store.event_counts(first, top, "type")
        keys = sorted(set(ref.types.index) | set(got.index))
        value = psi(ref.types.reindex(keys, fill_value=0), got.reindex(keys, fill_value=0))
        shares = ", ".join(f"{k} {got.get(k, 0) / n:.3f}" for k in keys)
        types = self._result(
            "event_types",
            value,
            f"PSI of the event-type mix; recent shares: {shares}",
            now,
        )
        return [popularity, types]

    def _impression_checks(self, version: str, ref: _Reference, now: float) -> list[CheckResult]:
        end = now - self.delay_seconds
        cut = end - self.window_seconds
        since = max(ref.created_at, cut - self.reference_seconds)
        clicks = self._clicks
        new = self.store.shown_slots(version, cut, end, clicks, self.sample_slots)
        old = self.store.shown_slots(version, since, cut, clicks, self.sample_slots)
        need = self.settings.drift_min_impressions
        if len(new) < need or len(old) < need:
            why = (
                f"{len(new)} slots shown by {version} in the last window and {len(old)} "
                f"before it; {need} of each needed (drift_min_impressions)"
            )
            return [self._skipped(c, why, now) for c in ("served_scores", "ctr_drop")]
        scores = self._result(
            "served_scores",
            binned_psi(old["score"], new["score"], self.bins, self.eps),
            f"PSI of shown slots' scores: {len(new)} in the window vs {len(old)} before",
            now,
        )
        ctr_old, ctr_new = float(old["clicked"].mean()), float(new["clicked"].mean())
        if ctr_old <= 0:
            ctr = self._skipped(
                "ctr_drop", f"no click on the {len(old)} reference slots: no CTR to compare", now
            )
        else:
            ctr = self._result(
                "ctr_drop",
                relative_drop(ctr_old, ctr_new),
                f"CTR {ctr_new:.4f} on {len(new)} slots in the last "
                f"{self.window_seconds:.0f}s vs {ctr_old:.4f} on {len(old)} before",
                now,
            )
        return [scores, ctr]

    # ------------------------------------------------------------ outputs
    def _export(self, results: Sequence[CheckResult], now: float) -> None:
        self._checked_at.set(now)
        for r in results:
            self._fired.labels(r.check).set(1.0 if r.fired else 0.0)
            if r.check == "ctr_drop":
                self._ctr_drop.set(float("nan") if r.value is None else r.value)
            elif r.value is not None:
                self._psi.labels(r.check).set(r.value)
            else:
                with contextlib.suppress(KeyError):  # never set: nothing to remove
                    self._psi.remove(r.check)

    def _trigger(self, version: str | None, results: Sequence[CheckResult]) -> None:
        """Write `model_dir/RETRAIN` for checks that fired and have not asked yet."""
        if version is None:
            return
        fired = [r for r in results if r.fired and (version, r.check) not in self._triggered]
        if not fired:
            return
        self._triggered.update((version, r.check) for r in fired)
        path = self.model_dir / TRIGGER
        if path.exists():  # a trigger is waiting already: keep its reason
            return
        reason = f"drift on model {version}: " + "; ".join(
            f"{r.check} {r.value:.4f} > {r.threshold:g}" for r in fired
        )
        self.model_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.model_dir, prefix=f".{TRIGGER}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(reason + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.warning("retraining requested: %s", reason)


__all__ = [
    "CHECKS",
    "EPS",
    "TRIGGER",
    "CheckResult",
    "DriftMonitor",
    "PopularityBins",
    "binned_psi",
    "categorical_psi",
    "clicked_slots",
    "popularity_psi",
    "psi",
    "quantile_edges",
    "relative_drop",
]
