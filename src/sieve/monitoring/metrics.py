"""The service's Prometheus metrics, in a registry per engine.

Every metric lives in `ServingMetrics.registry` (a `CollectorRegistry` of
its own, never the module-global default), so tests can build many apps in
one process and `GET /metrics` shows only its app. The families:

- `sieve_http_request_duration_seconds{endpoint,method,status}`: histogram
  of request latency; `endpoint` is the route template
  (`/recommendations/{user_id}`, `unmatched` when no route matched), `status`
  the class (`2xx`, `4xx`, …);
- `sieve_http_errors_total{endpoint,method,status}`: 4xx and 5xx answers by
  exact status code;
- `sieve_stage_duration_seconds{stage}`: funnel stages (see
  `sieve.monitoring.stages`);
- `sieve_cache_lookups_total{result}`: `hit` / `miss` of the precomputed-list
  cache (hit rate = hit / (hit + miss); requests with filters or context
  never look it up and are not counted);
- `sieve_model_info{version}` = 1 for the serving model, and
  `sieve_model_loaded_timestamp_seconds`;
- `sieve_events_ingested_total{type}`: newly stored events (duplicates not
  counted);
- `sieve_served_lists_total{experiment,arm}` and
  `sieve_impressions_total{experiment,arm}`: lists served and slots shown
  (`none` when a request was in no experiment; a request in several
  experiments counts once in each);
- `sieve_clicks_total{experiment,arm}`: newly stored click events that cite
  a served request (given or attributed); the arm comes from an in-memory
  map of recently served requests, else from the stored impression, else
  `unknown`;
- `sieve_arm_ctr{experiment,arm}` = clicks / impressions, computed at scrape
  time (clicks are events, so a slot clicked twice counts twice; the drift
  check's CTR counts distinct clicked slots);
- `sieve_dwell_seconds{experiment,arm}`: histogram of newly stored dwell
  events' seconds (`semantics.dwell_types`), by the arm of the request they
  cite (`none` for a dwell citing no request);
- `sieve_sessions{state}` (`started`, `ended`, `bounced`), `sieve_bounce_rate`
  (bounced / ended) and `sieve_mean_dwell_seconds`: the sessions started in
  the last hour, from the store at most every 30 s (`watch_sessions`; every
  process shows the same numbers: they come from the shared log).

"Clicks" are events of the settings' `semantics.click_types`
(`sieve.settings.EventSemantics`, the one definition every CTR reads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sieve.data.records import Event, Impression
    from sieve.settings import Settings
    from sieve.storage import Store

log = logging.getLogger(__name__)

#: The label value of "no experiment" / "no arm".
NONE = "none"
#: The label value of a click whose request this process cannot place.
UNKNOWN = "unknown"
#: Label of a request no route matched (its raw path would explode the series).
UNMATCHED = "unmatched"

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: Request latency buckets (seconds): sub-millisecond answers up to slow batches.
REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Funnel stage buckets (seconds): stages take tens of microseconds to tens of ms.
STAGE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
#: Most stored impressions read to place the clicks of one batch of events.
MAX_LOOKUPS = 100

#: Dwell buckets (seconds): a glance to a long read.
DWELL_BUCKETS = (1.0, 3.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

Arms = tuple[tuple[str, str], ...]


class LaneCounters(Protocol):
    """What the metrics read of the live lane (`sieve.serve.lane.Lane`)."""

    @property
    def waiting(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def answered(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def cpu_seconds(self) -> float: ...
    @property
    def yields(self) -> int: ...
    @property
    def yield_seconds(self) -> float: ...


@dataclass(frozen=True)
class SessionSummary:
    """Sessions started in the last `window` seconds as of `at`: how many,
    how many ended, bounced, and the dwell events' count and seconds."""

    window: int
    at: float
    sessions: int
    ended: int
    bounces: int
    dwell_events: int
    dwell_seconds: float


class _SessionCollector(Collector):
    """`sieve_sessions{state}`, `sieve_bounce_rate`, `sieve_mean_dwell_seconds`
    from a provider of the latest `SessionSummary` (None: not known yet)."""

    def __init__(self, provider: Callable[[], SessionSummary | None]) -> None:
        self._provider = provider

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "sieve_sessions",
                "Sessions started in the last hour, by state (started, ended, bounced)",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "sieve_bounce_rate", "Bounced / ended sessions started in the last hour"
            ),
            GaugeMetricFamily(
                "sieve_mean_dwell_seconds", "Mean seconds of the last hour's dwell events"
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        try:
            summary = self._provider()
        except Exception:  # a scrape must not fail on a store problem
            log.debug("session gauges unavailable", exc_info=True)
            summary = None
        if summary is None:
            return
        sessions, bounce, dwell = self._families()
        sessions.add_metric(["started"], summary.sessions)
        sessions.add_metric(["ended"], summary.ended)
        sessions.add_metric(["bounced"], summary.bounces)
        bounce.add_metric([], summary.bounces / summary.ended if summary.ended else 0.0)
        dwell.add_metric(
            [], summary.dwell_seconds / summary.dwell_events if summary.dwell_events else 0.0
        )
        yield from (sessions, bounce, dwell)


def click_types(settings: Settings) -> tuple[str, ...]:
    """The event types that count as clicks: `settings.semantics.click_types`."""
    return tuple(settings.semantics.click_types)


def impression_arms(impression: Impression) -> Arms:
    """The (experiment, arm) pairs of a served list; `(none, none)` outside experiments."""
    arms = getattr(impression, "arms", None) or ()
    if arms:
        return tuple((str(a.experiment), str(a.arm)) for a in arms)
    if impression.experiment is not None:
        return ((str(impression.experiment), str(impression.arm or NONE)),)
    return ((NONE, NONE),)


class _CtrCollector(Collector):
    """`sieve_arm_ctr` from the impression and click counters at scrape time."""

    def __init__(self, impressions: Counter, clicks: Counter) -> None:
        self._impressions = impressions
        self._clicks = clicks

    @staticmethod
    def _totals(counter: Counter) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for family in counter.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["experiment"], s.labels["arm"])] = s.value
        return out

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "sieve_arm_ctr",
            "Clicks per shown slot, by experiment arm",
            labels=["experiment", "arm"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        shown = self._totals(self._impressions)
        clicked = self._totals(self._clicks)
        family = self._family()
        for key, n in sorted(shown.items()):
            family.add_metric(list(key), clicked.get(key, 0.0) / n if n > 0 else 0.0)
        yield family


class ServingMetrics:
    """The metrics of one engine (see the module doc) and the hooks that feed them.

    `lookup` reads a stored impression by request id (the store's
    `get_impression`); it places clicks on requests this process did not
    serve. `remember` bounds the in-memory map request id → arms."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        click_types: Sequence[str] = ("click",),
        dwell_types: Sequence[str] = ("dwell",),
        lookup: Callable[[str], Impression | None] | None = None,
        remember: int = 100_000,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.click_types = frozenset(click_types)
        self.dwell_types = frozenset(dwell_types)
        self._lookup = lookup
        self._remember = remember
        self._arms: OrderedDict[str, Arms] = OrderedDict()
        self._arms_lock = threading.Lock()
        # label lookups cost more than the observation: children are kept
        self._latency_children: dict[tuple[str, str, int], Any] = {}
        self._stage_children: dict[str, Any] = {}

        self.request_seconds = Histogram(
            "sieve_http_request_duration_seconds",
            "Request latency by route template, method and status class",
            ["endpoint", "method", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.request_errors = Counter(
            "sieve_http_errors",
            "4xx and 5xx answers by route template, method and status code",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "sieve_stage_duration_seconds",
            "Time spent in each funnel stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "sieve_cache_lookups",
            "Lookups of the precomputed-list cache by result (hit, miss)",
            ["result"],
            registry=r,
        )
        self.impressions_dropped = Gauge(
            "sieve_impression_log_dropped",
            "Served lists whose impression was dropped since the start: the "
            "impression log was max_backlog lists behind",
            registry=r,
        )
        self.lane_waiting = Gauge(
            "sieve_live_lane_waiting",
            "Requests waiting for their turn to compute a live answer (live_concurrency)",
            registry=r,
        )
        self.lane_refused = Gauge(
            "sieve_live_lane_refused",
            "Requests answered 503 since the start: they waited live_wait_seconds for their turn",
            registry=r,
        )
        self.lane_computations = Gauge(
            "sieve_live_lane_computations",
            "Live computations run since the start (each answers a block of waiting requests)",
            registry=r,
        )
        self.lane_answered = Gauge(
            "sieve_live_lane_answered",
            "Requests answered by those computations (over computations: the mean block)",
            registry=r,
        )
        self.lane_seconds = Gauge(
            "sieve_live_lane_seconds",
            "Wall seconds spent in live computations since the start",
            registry=r,
        )
        self.lane_cpu_seconds = Gauge(
            "sieve_live_lane_cpu_seconds",
            "CPU seconds of those computations' threads since the start (over "
            "sieve_live_lane_seconds: the share not spent waiting for the interpreter "
            "lock or the cache; a low share under load asks for more worker processes)",
            registry=r,
        )
        self.ingest_yields = Gauge(
            "sieve_ingest_yields",
            "Event batches that waited for the live computations that arrived before "
            "them since the start (ingest_yield_seconds)",
            registry=r,
        )
        self.ingest_yield_seconds = Gauge(
            "sieve_ingest_yield_seconds",
            "Seconds those event batches waited in all since the start",
            registry=r,
        )
        self._hit = self.cache_lookups.labels("hit")
        self._miss = self.cache_lookups.labels("miss")
        self.model = Info("sieve_model", "The serving model's version", registry=r)
        self.model_loaded_at = Gauge(
            "sieve_model_loaded_timestamp_seconds",
            "When the serving model was loaded (Unix time)",
            registry=r,
        )
        self.events = Counter(
            "sieve_events_ingested",
            "Newly stored events by type",
            ["type"],
            registry=r,
        )
        self.lists = Counter(
            "sieve_served_lists",
            "Recommendation lists served, by experiment arm",
            ["experiment", "arm"],
            registry=r,
        )
        self.impressions = Counter(
            "sieve_impressions",
            "Slots shown (items in served lists), by experiment arm",
            ["experiment", "arm"],
            registry=r,
        )
        self.clicks = Counter(
            "sieve_clicks",
            "Click events citing a served request, by experiment arm",
            ["experiment", "arm"],
            registry=r,
        )
        r.register(_CtrCollector(self.impressions, self.clicks))
        self.dwell = Histogram(
            "sieve_dwell_seconds",
            "Seconds of newly stored dwell events, by the experiment arm of the cited request",
            ["experiment", "arm"],
            buckets=DWELL_BUCKETS,
            registry=r,
        )
        self._sessions_watched = False

    def watch_sessions(self, provider: Callable[[], SessionSummary | None]) -> None:
        """Show the sessions `provider` gives (the latest, cached by it) as gauges."""
        if not self._sessions_watched:
            self.registry.register(_SessionCollector(provider))
            self._sessions_watched = True

    @classmethod
    def for_settings(cls, settings: Settings, store: Store | None = None) -> ServingMetrics:
        """Metrics in a fresh registry, with the settings' click types and the
        store's impressions to place clicks on requests served elsewhere."""
        return cls(
            click_types=click_types(settings),
            dwell_types=tuple(settings.semantics.dwell_types),
            lookup=None if store is None else store.get_impression,
        )

    # ------------------------------------------------------------ requests
    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One answered request (called by the app's middleware)."""
        if method not in _METHODS:
            method = "OTHER"
        key = (endpoint, method, status)
        child = self._latency_children.get(key)
        if child is None:
            child = self.request_seconds.labels(endpoint, method, f"{status // 100}xx")
            self._latency_children[key] = child
        child.observe(seconds)
        if status >= 400:
            self.request_errors.labels(endpoint, method, str(status)).inc()

    def stage(self, name: str, seconds: float) -> None:
        """One funnel stage's time (a `StageSink`)."""
        child = self._stage_children.get(name)
        if child is None:
            child = self._stage_children[name] = self.stage_seconds.labels(name)
        child.observe(seconds)

    def watch_impression_drops(self, read: Callable[[], float]) -> None:
        """Report what `read` says of the impression log's drops at each scrape."""
        self.impressions_dropped.set_function(read)

    def watch_lane(self, lane: LaneCounters) -> None:
        """Report the live lane's queue, refusals, blocks and time
        (`sieve.serve.lane`) at each scrape."""
        self.lane_waiting.set_function(lambda: lane.waiting)
        self.lane_refused.set_function(lambda: lane.refused)
        self.lane_computations.set_function(lambda: lane.blocks)
        self.lane_answered.set_function(lambda: lane.answered)
        self.lane_seconds.set_function(lambda: lane.seconds)
        self.lane_cpu_seconds.set_function(lambda: lane.cpu_seconds)
        self.ingest_yields.set_function(lambda: lane.yields)
        self.ingest_yield_seconds.set_function(lambda: lane.yield_seconds)

    def cache_lookup(self, hit: bool) -> None:
        """One lookup of the precomputed-list cache."""
        (self._hit if hit else self._miss).inc()

    def model_loaded(self, version: str) -> None:
        """The engine now serves `version`."""
        self.model.info({"version": str(version)})
        self.model_loaded_at.set(time.time())

    # ------------------------------------------------------------ traffic
    def served(self, impression: Impression) -> None:
        """A served list: counted per arm, and remembered to place its clicks."""
        self.served_list(
            str(impression.request_id), impression_arms(impression), len(impression.items)
        )

    def served_list(self, request_id: str, arms: Arms = ((NONE, NONE),), n: int = 0) -> None:
        """A served list of `n` items given its (experiment, arm) pairs."""
        for experiment, arm in arms:
            self.lists.labels(experiment, arm).inc()
            if n:
                self.impressions.labels(experiment, arm).inc(n)
        self._remember_arms(request_id, arms)

    def events_ingested(self, events: Sequence[Event]) -> None:
        """Newly stored events: counted by type; clicks citing a request by
        arm; dwell seconds by the arm of the request they cite."""
        by_type: dict[str, int] = {}
        clicks: list[str] = []
        dwells: list[Event] = []
        for e in events:
            by_type[e.type] = by_type.get(e.type, 0) + 1
            if e.request_id is not None and e.type in self.click_types:
                clicks.append(e.request_id)
            if e.type in self.dwell_types and e.value is not None:
                dwells.append(e)
        for kind, n in by_type.items():
            self.events.labels(kind).inc(n)
        if dwells:
            self._dwell(dwells)
        if not clicks:
            return
        counts: dict[tuple[str, str], int] = {}
        for arms in self._arms_of(clicks):
            for key in arms:
                counts[key] = counts.get(key, 0) + 1
        for (experiment, arm), n in counts.items():
            self.clicks.labels(experiment, arm).inc(n)

    def _dwell(self, dwells: Sequence[Event]) -> None:
        cited = [e.request_id for e in dwells if e.request_id is not None]
        arms_of = dict(zip(cited, self._arms_of(cited), strict=True))
        for e in dwells:
            arms = arms_of[e.request_id] if e.request_id is not None else ((NONE, NONE),)
            for experiment, arm in arms:
                self.dwell.labels(experiment, arm).observe(float(e.value or 0.0))

    def _remember_arms(self, request_id: str, arms: Arms) -> None:
        with self._arms_lock:
            self._arms[request_id] = arms
            self._arms.move_to_end(request_id)
            while len(self._arms) > self._remember:
                self._arms.popitem(last=False)

    def _arms_of(self, request_ids: Sequence[str]) -> Iterator[Arms]:
        """The arms of each request: remembered, else read from the store
        (at most `MAX_LOOKUPS` distinct reads), else `(unknown, unknown)`."""
        lookups = 0
        for request_id in request_ids:
            with self._arms_lock:
                arms = self._arms.get(request_id)
            if arms is None and self._lookup is not None and lookups < MAX_LOOKUPS:
                lookups += 1
                try:
                    stored = self._lookup(request_id)
                except Exception:  # a metric is not worth failing an ingest
                    log.debug("impression %s unreadable", request_id, exc_info=True)
                    stored = None
                if stored is not None:
                    arms = impression_arms(stored)
                    self._remember_arms(request_id, arms)
            yield arms if arms is not None else ((UNKNOWN, UNKNOWN),)


__all__ = [
    "NONE",
    "UNKNOWN",
    "UNMATCHED",
    "LaneCounters",
    "ServingMetrics",
    "SessionSummary",
    "click_types",
    "impression_arms",
]
