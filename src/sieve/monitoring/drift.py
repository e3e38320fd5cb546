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

Several server processes on one shared cache check as one: each interval
one of them (the first to claim `drift:running`) runs the checks, the
latest results are kept in the cache (`drift:latest`) for every replica's
`GET /monitoring/drift` and gauges, and "asked once per version and check"
is a claim in the cache too, so N replicas never ask for N retrains.

The statistics (PSI, popularity bins, CTR drop) are pure functions in
`sieve.monitoring.psi`, re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prometheus_client import CollectorRegistry, Gauge

from sieve.monitoring.metrics import click_types
from sieve.monitoring.psi import (
    EPS,
    PopularityBins,
    binned_psi,
    categorical_psi,
    clicked_slots,
    popularity_psi,
    psi,
    quantile_edges,
    relative_drop,
)
from sieve.registry import ModelRegistry, RegistryError

if TYPE_CHECKING:
    from sieve.settings import Settings
    from sieve.storage import Cache, Store

log = logging.getLogger(__name__)

#: The checks in the order they are reported.
CHECKS = ("item_popularity", "event_types", "served_scores", "ctr_drop")
#: The retraining trigger's file name (`sieve.training.worker.TRIGGER`; not imported:
#: monitoring sits below training).
TRIGGER = "RETRAIN"
#: Cache keys of the latest results, of the claim of a run and of an asked retrain.
LATEST_KEY = "drift:latest"
RUNNING_KEY = "drift:running"
ASKED_TTL = 30 * 86_400.0


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
        cache: Cache | None = None,
    ) -> None:
        self.settings = settings
        #: shared with the other server processes (None: this process alone)
        self.cache = cache
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
        """The latest results (empty before the first check): any replica's,
        from the shared cache, when there is one."""
        if self.cache is not None:
            try:
                raw = self.cache.get_json(LATEST_KEY)
            except Exception:  # the cache's failure: this process's own results
                raw = None
            if isinstance(raw, list):
                return [CheckResult(**r) for r in raw]
        return list(self._results)

    def latest(self) -> list[dict[str, Any]]:
        """The latest results as JSON-able dicts (empty before the first check)."""
        return [r.as_dict() for r in self.last()]

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
                    if self._claim(interval):
                        self.check()
                    else:  # another replica checks this interval
                        self._export(self.last(), self._clock())
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
            self._publish(results)
            self._trigger(version, results)
            return results

    def _claim(self, interval: float) -> bool:
        """Whether this process runs this interval's checks (the first replica
        to claim it; always, with no shared cache)."""
        if self.cache is None:
            return True
        try:
            return self.cache.add(RUNNING_KEY, b"1", max(0.5 * interval, interval - 1.0))
        except Exception:  # the cache's failure: check here
            return True

    def _publish(self, results: Sequence[CheckResult]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.set_json(LATEST_KEY, [r.as_dict() for r in results])
        except Exception:
            log.warning("drift results not shared: cache unavailable", exc_info=True)

    def _ask(self, version: str, check: str) -> bool:
        """True the first time a retrain is asked for this version and check,
        in this process and (with a shared cache) in every replica."""
        if (version, check) in self._triggered:
            return False
        self._triggered.add((version, check))
        if self.cache is None:
            return True
        try:
            return self.cache.add(f"drift:asked:{version}:{check}", b"1", ASKED_TTL)
        except Exception:
            return True

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
        fired = [r for r in results if r.fired and self._ask(version, r.check)]
        if not fired:
            return
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
