"""The web dashboard: its page, its static files and the JSON it reads.

- `GET /dashboard`: the page (`sieve/serve/dashboard/index.html`); its script
  and styles come from `/dashboard/static/…`, served by the app itself (no CDN,
  no build step): the page works on a machine without internet access.
- `GET /dashboard/api/meta` (no key): what the page needs before it has a key —
  whether reads are open, the serving model, and which optional endpoints
  (experiments, drift monitoring) this app has, so the page never requests
  one that is absent.
- `GET /dashboard/api/kpis`: traffic over time from the store, per bucket and
  in total: shown slots (impressions), served lists (requests), clicks (events
  of the settings' `semantics.click_types` that cite a request — the
  definition of experiment reports, Prometheus and drift), CTR, events by
  type, distinct users; aggregated in the database over the window only
  (`Store.window_counts`), so a call costs the window's rows, not the log's.
- `GET /dashboard/api/models`: the model registry: versions, their training
  snapshot and offline metrics, which one serves, promotion history.
- `GET /dashboard/api/users/{user_id}`: the user inspector: recent events,
  the list the user gets now (live, with explanations and sources) and their
  online features.

The JSON endpoints need the `read` scope; the page sends the key the user
typed as `X-API-Key`.

Size: one router for the page and its JSON endpoints, with the in-memory KPI
reference that the windowed SQL is tested against.

Longer than most modules: the dashboard's JSON endpoints, each small, kept with
the page they feed.
"""

# No `from __future__ import annotations`: FastAPI must see the closure-local
# parameter types (bounds from the settings) as objects, not as strings.

import math
import re
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from sieve import __version__
from sieve.registry import ModelRegistry
from sieve.serve.auth import ReadAccess
from sieve.serve.holder import NoModelError
from sieve.serve.listing import Filters
from sieve.serve.routes import AUTH_ERRORS, ServiceDep, UserId
from sieve.serve.signals import read_signals, signal_series
from sieve.settings import DEFAULT_SEMANTICS, EventSemantics, Settings
from sieve.storage import CacheError
from sieve.storage.base import SignalCounts, WindowCounts

#: The folder of the page and its assets (package data).
ASSETS = Path(__file__).resolve().parents[1] / "dashboard"
#: Files served under /dashboard/static/, with their media types.
STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: Longest KPI window (7 days) and most buckets in one answer.
MAX_MINUTES = 7 * 24 * 60
MAX_BUCKETS = 1440
#: Events listed by the user inspector.
INSPECTOR_EVENTS = 20
#: Promotion history entries returned (newest first).
HISTORY_LIMIT = 50
#: How often the page refreshes (seconds); sent to it by /dashboard/api/meta.
REFRESH_SECONDS = 5.0

_NO_STORE = {"Cache-Control": "no-store"}
_REPORT_PATH = re.compile(r"^/experiments/\{[^/{}]+\}/report$")


# ------------------------------------------------------------------ bodies
class Features(BaseModel):
    """Optional endpoints this app has (built by other modules)."""

    experiments: bool
    monitoring: bool


class DashboardMeta(BaseModel):
    """What the page needs before it has a key."""

    version: str
    model_version: str | None
    open_read: bool
    refresh_seconds: float
    click_types: list[str]
    semantics: dict[str, Any]
    max_n: int
    features: Features


class KpiBucket(BaseModel):
    """Counts of one time bucket `[start, start + bucket_seconds)` (or of the window).

    Sessions are those starting in the bucket (`semantics.session_gap_seconds`
    of inactivity end one); `ended_sessions` those over by now, `bounces`
    the ended ones that lasted at most `semantics.bounce_seconds`;
    `bounce_rate` = bounces / ended sessions. Dwell: events of
    `semantics.dwell_types` with a value, and their mean seconds.
    """

    start: float
    impressions: int
    requests: int
    clicks: int
    ctr: float | None
    events: dict[str, int]
    users: int
    sessions: int = 0
    ended_sessions: int = 0
    bounces: int = 0
    bounce_rate: float | None = None
    dwell_events: int = 0
    mean_dwell_seconds: float | None = None


class KpiReport(BaseModel):
    """KPIs over `[start, end)`, per bucket (oldest first) and in total."""

    start: float
    end: float
    minutes: int
    bucket_seconds: int
    click_types: list[str]
    semantics: dict[str, Any]
    generated_at: float
    totals: KpiBucket
    series: list[KpiBucket]


class ModelVersion(BaseModel):
    """One registered version: what it was trained on and how well it did offline."""

    version: str
    model: str
    created_at: float
    status: str
    data: dict[str, Any]
    metrics: dict[str, float | None]
    notes: list[str]
    current: bool
    serving: bool


class ModelsReport(BaseModel):
    """The registry: versions newest first, the promoted one, the served one, history."""

    current: str | None
    serving: str | None
    versions: list[ModelVersion]
    history: list[dict[str, Any]]


class InspectedEvent(BaseModel):
    """One of the user's recent events."""

    id: str
    item_id: str
    type: str
    value: float | None
    timestamp: float | None
    request_id: str | None


class InspectedItem(BaseModel):
    """One item of the user's list, with why it is there."""

    id: str
    title: str
    score: float | None
    categories: list[str]
    explanation: str
    sources: dict[str, float | None]


class UserInspection(BaseModel):
    """What a user did lately, what they get now and why.

    `recommendations` is None (and `recommendations_error` says why) when no
    model serves; `features` is None when the online counters are unreadable.
    A preview is served live but not logged: it counts as no traffic.
    """

    user_id: str
    known: bool
    attributes: dict[str, Any]
    events: list[InspectedEvent]
    request_id: str | None
    model_version: str | None
    cold_start: bool | None
    recommendations: list[InspectedItem] | None
    recommendations_error: str | None
    features: dict[str, float | None] | None


# ----------------------------------------------------------------- helpers
def _finite(value: Any) -> float | None:
    """A float JSON can carry (NaN and infinities become None)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def kpi_window(now: float, minutes: int, bucket_seconds: int) -> tuple[float, float, int]:
    """(start, end, buckets): whole buckets aligned to multiples of `bucket_seconds`,
    the last one holding `now`, together covering at least `minutes`."""
    count = max(1, math.ceil(minutes * 60 / bucket_seconds))
    end = (math.floor(now / bucket_seconds) + 1) * bucket_seconds
    return float(end - count * bucket_seconds), float(end), count


def _bucket(timestamps: pd.Series, start: float, bucket_seconds: int) -> np.ndarray:
    values = timestamps.to_numpy(dtype=np.float64)
    return ((values - start) // bucket_seconds).astype(np.int64)


def frame_counts(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    *,
    start: float,
    end: float,
    bucket_seconds: int,
) -> WindowCounts:
    """`Store.window_counts` computed in memory from `impressions_frame` rows
    (one per shown slot) and `events_frame` rows: the reference the database
    aggregation is tested against."""
    count = max(1, round((end - start) / bucket_seconds))
    imp = impressions.loc[(impressions["timestamp"] >= start) & (impressions["timestamp"] < end)]
    ev = events.loc[(events["timestamp"] >= start) & (events["timestamp"] < end)]
    imp = imp.assign(bucket=np.clip(_bucket(imp["timestamp"], start, bucket_seconds), 0, count - 1))
    ev = ev.assign(
        bucket=np.clip(_bucket(ev["timestamp"], start, bucket_seconds), 0, count - 1),
        cited=ev["request_id"].notna().astype(np.int64),
    )
    slots = (
        imp.groupby("bucket")
        .agg(impressions=("request_id", "size"), requests=("request_id", "nunique"))
        .reset_index()
    )
    by_type = (
        ev.groupby(["bucket", "type"]).agg(events=("cited", "size"), cited=("cited", "sum"))
    ).reset_index()
    who = pd.concat(
        [imp[["bucket", "user_id"]].dropna(), ev[["bucket", "user_id"]].dropna()],
        ignore_index=True,
    )
    users = who.groupby("bucket")["user_id"].nunique().rename("users").reset_index()
    return WindowCounts(
        start=start,
        end=end,
        bucket_seconds=bucket_seconds,
        slots=slots,
        events=by_type,
        users=users,
        total_users=int(who["user_id"].nunique()),
    )


def kpis_from_counts(
    counts: WindowCounts, semantics: EventSemantics
) -> tuple[KpiBucket, list[KpiBucket]]:
    """Totals and per-bucket KPIs from window counts.

    A request is a served list with at least one item (an empty list has no
    slot to count); a click is an event of `semantics.click_types` that cites
    a request (the definition of experiment reports and Prometheus, so the
    overall CTR is the impression-weighted mean of the arms' CTR); users are
    the distinct users of impressions and events in the bucket.
    """
    width = counts.bucket_seconds
    count = max(1, round((counts.end - counts.start) / width))

    def per_bucket(frame: pd.DataFrame, column: str) -> np.ndarray:
        out = np.zeros(count, dtype=np.int64)
        if not frame.empty:
            k = np.clip(frame["bucket"].to_numpy(dtype=np.int64), 0, count - 1)
            np.add.at(out, k, frame[column].to_numpy(dtype=np.int64))
        return out

    shown = per_bucket(counts.slots, "impressions")
    requests = per_bucket(counts.slots, "requests")
    ev = counts.events
    is_click = np.array([semantics.is_click(str(t)) for t in ev["type"]], dtype=bool)
    clicks = per_bucket(ev.loc[is_click], "cited")
    types = sorted(str(t) for t in ev["type"].unique())
    by_type = {t: per_bucket(ev.loc[ev["type"] == t], "events") for t in types}
    users = per_bucket(counts.users, "users")

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    series = [
        KpiBucket(
            start=counts.start + k * width,
            impressions=int(shown[k]),
            requests=int(requests[k]),
            clicks=int(clicks[k]),
            ctr=ratio(int(clicks[k]), int(shown[k])),
            events={t: int(c[k]) for t, c in by_type.items() if c[k]},
            users=int(users[k]),
        )
        for k in range(count)
    ]
    totals = KpiBucket(
        start=counts.start,
        impressions=int(shown.sum()),
        requests=int(requests.sum()),
        clicks=int(clicks.sum()),
        ctr=ratio(int(clicks.sum()), int(shown.sum())),
        events={t: int(c.sum()) for t, c in by_type.items()},
        users=counts.total_users,
    )
    return totals, series


def compute_kpis(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    *,
    start: float,
    end: float,
    bucket_seconds: int,
    semantics: EventSemantics = DEFAULT_SEMANTICS,
) -> tuple[KpiBucket, list[KpiBucket]]:
    """`kpis_from_counts` of in-memory frames (`frame_counts`): the brute-force
    path, for tests and offline use; the endpoint aggregates in the database."""
    counts = frame_counts(impressions, events, start=start, end=end, bucket_seconds=bucket_seconds)
    return kpis_from_counts(counts, semantics)


def with_signals(
    totals: KpiBucket, series: list[KpiBucket], counts: SignalCounts
) -> tuple[KpiBucket, list[KpiBucket]]:
    """The KPIs with the sessions, bounces and dwell of `counts` (same buckets)."""
    s = signal_series(counts)

    def fill(bucket: KpiBucket, k: slice | int) -> KpiBucket:
        ended, bounces = int(s["ended"][k].sum()), int(s["bounces"][k].sum())
        dwells, seconds = int(s["dwell_events"][k].sum()), float(s["dwell_seconds"][k].sum())
        return bucket.model_copy(
            update={
                "sessions": int(s["sessions"][k].sum()),
                "ended_sessions": ended,
                "bounces": bounces,
                "bounce_rate": bounces / ended if ended else None,
                "dwell_events": dwells,
                "mean_dwell_seconds": seconds / dwells if dwells else None,
            }
        )

    return fill(totals, slice(None)), [fill(b, k) for k, b in enumerate(series)]


def _unprocessable(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _asset(name: str) -> Path:
    path = ASSETS / name
    if not path.is_file():  # a broken install: say which file is missing
        raise HTTPException(500, detail=f"dashboard asset {name} is missing from {ASSETS}")
    return path


# ------------------------------------------------------------------ router
def router(settings: Settings) -> APIRouter:
    """The dashboard router; the inspector's list length is bounded by `settings.max_n`."""
    r = APIRouter(tags=["dashboard"])
    max_n = settings.max_n
    semantics = settings.semantics
    click_types = tuple(semantics.click_types)

    @r.get("/dashboard", include_in_schema=False)
    def page() -> HTMLResponse:
        """The dashboard page."""
        return HTMLResponse(_asset("index.html").read_text(encoding="utf-8"), headers=_NO_STORE)

    @r.get("/dashboard/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        """The page's script and styles (only the files in `STATIC`)."""
        if name not in STATIC:
            raise HTTPException(404, detail=f"no dashboard asset {name!r}")
        return FileResponse(_asset(name), media_type=STATIC[name], headers=_NO_STORE)

    @r.get("/dashboard/api/meta")
    async def meta(request: Request, service: ServiceDep) -> DashboardMeta:
        """What the page needs before it has a key (no key needed): whether reads
        are open, the serving model and which optional endpoints exist."""
        # the OpenAPI document lists every included route (and is built once, then cached)
        paths = set(request.app.openapi().get("paths", {}))
        return DashboardMeta(
            version=__version__,
            model_version=service.model_version,
            open_read=settings.open_read,
            refresh_seconds=REFRESH_SECONDS,
            click_types=list(click_types),
            semantics=semantics.describe(),
            max_n=max_n,
            features=Features(
                experiments="/experiments" in paths and any(_REPORT_PATH.match(p) for p in paths),
                monitoring="/monitoring/drift" in paths,
            ),
        )

    @r.get("/dashboard/api/kpis", responses=AUTH_ERRORS)
    def kpis(
        service: ServiceDep,
        _: ReadAccess,
        minutes: Annotated[
            int, Query(ge=1, le=MAX_MINUTES, description=f"window length, 1 to {MAX_MINUTES}")
        ] = 60,
        bucket_seconds: Annotated[
            int, Query(ge=1, le=86_400, description="bucket width in seconds, 1 to 86400")
        ] = 60,
    ) -> KpiReport:
        """KPIs over the last `minutes`, per bucket of `bucket_seconds` and in total:
        impressions (shown slots), requests (served lists), clicks (events of the
        settings' `semantics.click_types` citing a request), CTR, events by type,
        distinct users, sessions started, ended and bounced, bounce rate, dwell
        events and mean dwell. Aggregated in the database over the window only
        (sessions: one session gap before it too).

        Buckets are aligned to multiples of `bucket_seconds`; the last one holds
        now. At most 1440 buckets, and a bucket no wider than the window.
        """
        if bucket_seconds > minutes * 60:
            raise _unprocessable(
                ["query", "bucket_seconds"],
                f"bucket_seconds ({bucket_seconds}) exceeds the window "
                f"({minutes} minutes = {minutes * 60} s)",
            )
        buckets = math.ceil(minutes * 60 / bucket_seconds)
        if buckets > MAX_BUCKETS:
            raise _unprocessable(
                ["query", "bucket_seconds"],
                f"{minutes} minutes in buckets of {bucket_seconds} s make {buckets} buckets; "
                f"at most {MAX_BUCKETS}: use a bucket of at least "
                f"{math.ceil(minutes * 60 / MAX_BUCKETS)} s",
            )
        now = time.time()
        start, end, _count = kpi_window(now, minutes, bucket_seconds)
        # lists served a moment ago count too
        service.impressions.flush()
        # aggregated in the database over the window only: the cost follows
        # the window's traffic, not the length of the log
        counts = service.store.window_counts(start, end, bucket_seconds)
        totals, series = kpis_from_counts(counts, semantics)
        # sessions and dwell: the window's rows plus one session gap before it
        signals = read_signals(service.store, start, end, bucket_seconds, semantics, now)
        totals, series = with_signals(totals, series, signals)
        return KpiReport(
            start=start,
            end=end,
            minutes=minutes,
            bucket_seconds=bucket_seconds,
            click_types=list(click_types),
            semantics=semantics.describe(),
            generated_at=now,
            totals=totals,
            series=series,
        )

    @r.get("/dashboard/api/models", responses=AUTH_ERRORS)
    def models(service: ServiceDep, _: ReadAccess) -> ModelsReport:
        """The model registry: every version (newest first) with its training data
        snapshot and offline metrics, the promoted and the served version, and the
        promotion history (newest first)."""
        root = Path(settings.model_dir)
        serving = service.model_version
        if not root.is_dir():  # nothing trained yet; a read does not create the folder
            return ModelsReport(current=None, serving=serving, versions=[], history=[])
        registry = ModelRegistry(root)
        current = registry.current()
        versions = [
            ModelVersion(
                version=m.version,
                model=m.model,
                created_at=m.created_at,
                status=m.status,
                data=json_safe(dict(m.data)),
                metrics={str(k): _finite(v) for k, v in m.metrics.items()},
                notes=[str(n) for n in m.notes],
                current=m.version == current,
                serving=m.version == serving,
            )
            for m in reversed(registry.list())
        ]
        history = [json_safe(h) for h in reversed(registry.history()[-HISTORY_LIMIT:])]
        return ModelsReport(current=current, serving=serving, versions=versions, history=history)

    @r.get("/dashboard/api/users/{user_id}", responses=AUTH_ERRORS)
    def inspect_user(
        user_id: UserId,
        service: ServiceDep,
        _: ReadAccess,
        n: Annotated[int, Query(ge=1, le=max_n, description=f"list length, 1 to {max_n}")] = 10,
    ) -> UserInspection:
        """A user's last 20 events, the list they get now (live, never the
        precomputed one: each item's explanation and sources) and their online
        features. An unknown user is no error: `known` is false and the list is
        what a new user gets. Runs in the thread pool (store, funnel and cache work)."""
        user = service.store.get_user(user_id)
        recent = service.store.user_events(user_id, INSPECTOR_EVENTS)
        problem: str | None = None
        listed = None
        try:
            listed = service.recommend_user(user_id, n, Filters(), log=False)
        except NoModelError as e:
            problem = str(e)
        features: dict[str, float | None] | None
        try:
            raw = service.counters.user_features(user_id, time.time())
            features = {k: _finite(v) for k, v in raw.items()}
        except (CacheError, ValueError):
            features = None
        return UserInspection(
            user_id=user_id,
            known=user is not None,
            attributes=json_safe(dict(user.attributes)) if user is not None else {},
            events=[
                InspectedEvent(
                    id=e.id,
                    item_id=e.item_id,
                    type=e.type,
                    value=e.value,
                    timestamp=None if e.timestamp is None else e.timestamp.timestamp(),
                    request_id=e.request_id,
                )
                for e in recent
            ],
            request_id=None if listed is None else listed.request_id,
            model_version=None if listed is None else listed.model_version,
            cold_start=None if listed is None else listed.cold_start,
            recommendations=None
            if listed is None
            else [
                InspectedItem(
                    id=i.id,
                    title=i.title,
                    score=i.score,
                    categories=list(i.categories),
                    explanation=i.explanation,
                    sources=dict(i.sources),
                )
                for i in listed.items
            ],
            recommendations_error=problem,
            features=features,
        )

    return r


__all__ = [
    "compute_kpis",
    "frame_counts",
    "json_safe",
    "kpi_window",
    "kpis_from_counts",
    "router",
    "with_signals",
]
