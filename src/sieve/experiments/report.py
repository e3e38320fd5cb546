"""The analysis of a running service's experiment, as the API, the CLI and the dashboard show it.

`experiment_report` turns the impression log and the events that cite its
requests into the per-unit frame of `sieve.experiments.analysis.analyze` and
the JSON the API, the CLI and the dashboard show, with each shadow arm
compared with the served lists (`sieve.experiments.shadows`). Interleaving
experiments get a per-request credit and a sign test instead
(`interleaving_summary`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from sieve.data.sessions import session_table
from sieve.experiments.analysis import AnalysisConfig, analyze
from sieve.experiments.assignment import Experiment
from sieve.experiments.interleaving import TEAM_A, TEAM_B, credit_many, interleaving_test
from sieve.experiments.online import TEAM_PREFIX, ExperimentRecord
from sieve.experiments.sequential import always_valid_pvalues
from sieve.experiments.shadows import shadow_summary
from sieve.settings import DEFAULT_SEMANTICS, EventSemantics
from sieve.storage.base import Store
from sieve.storage.cache import Cache, CacheError

log = logging.getLogger(__name__)

#: Fewer units than this in an arm: the verdict says it is too early.
MIN_UNITS = 100


def _interval(iv: Any) -> dict[str, float] | None:
    if iv is None:
        return None
    return {"estimate": float(iv.mean), "low": float(iv.low), "high": float(iv.high)}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def unit_frame(
    slots: pd.DataFrame, events: pd.DataFrame, semantics: EventSemantics = DEFAULT_SEMANTICS
) -> pd.DataFrame:
    """One row per (unit, arm): impressions (shown slots), requests, clicks,
    conversions and revenue (the conversions' values) from the events that
    cite the unit's requests, clicks and conversions as `semantics` says."""
    if slots.empty:
        return pd.DataFrame(
            columns=["unit", "arm", "impressions", "requests", "clicks", "conversions", "revenue"]
        )
    unit = slots["user_id"].fillna(slots["request_id"])
    shown = (
        slots.assign(unit=unit)
        .groupby(["unit", "arm"], sort=True)
        .agg(impressions=("item_id", "count"), requests=("request_id", "nunique"))
    )
    arm_of = slots.drop_duplicates("request_id").set_index("request_id")["arm"]
    unit_of = pd.Series(unit.to_numpy(), index=slots["request_id"]).groupby(level=0).first()
    ev = events.loc[events["request_id"].isin(arm_of.index)].copy()
    ev["unit"] = ev["request_id"].map(unit_of)
    ev["arm"] = ev["request_id"].map(arm_of)
    ev["clicks"] = ev["type"].isin(semantics.click_types).astype(float)
    ev["conversions"] = ev["type"].isin(semantics.conversion_types).astype(float)
    ev["revenue"] = np.where(ev["conversions"] > 0, ev["value"].fillna(0.0), 0.0)
    is_dwell = ev["type"].isin(semantics.dwell_types)
    ev["dwell_seconds"] = np.where(is_dwell, ev["value"].fillna(0.0), 0.0)
    measured = ["clicks", "conversions", "revenue"]
    if bool((is_dwell & ev["value"].notna()).any()):  # no dwell sent: no dwell metric
        measured.append("dwell_seconds")
    got = ev.groupby(["unit", "arm"], sort=True)[measured].sum()
    frame = shown.join(got, how="left").fillna(0.0).reset_index()
    return frame


def session_units(
    slots: pd.DataFrame, activity: pd.DataFrame, semantics: EventSemantics, now: float
) -> pd.DataFrame:
    """Per (unit, arm): `sessions`, the ended sessions (`sieve.data.sessions`,
    over the users' whole `activity`) in which the arm served a list, and
    `bounces`, those of them that bounced. Requests without a user have no
    session to follow."""
    columns = ["unit", "arm", "sessions", "bounces"]
    requests = slots.dropna(subset=["user_id"]).drop_duplicates("request_id")
    if requests.empty or activity.empty:
        return pd.DataFrame(columns=columns)
    table = session_table(
        activity["user_id"],
        activity["timestamp"],
        gap=semantics.session_gap_seconds,
        bounce=semantics.bounce_seconds,
        now=now,
    )
    placed = pd.merge_asof(
        requests[["user_id", "arm", "timestamp"]].astype({"user_id": str}).sort_values("timestamp"),
        table.sort_values("start"),
        left_on="timestamp",
        right_on="start",
        by="user_id",
    )
    placed = placed.loc[placed["ended"].eq(True) & (placed["timestamp"] <= placed["last"])]
    placed = placed.drop_duplicates(["user_id", "arm", "session"])
    if placed.empty:
        return pd.DataFrame(columns=columns)
    out = (
        placed.assign(bounced=placed["bounced"].astype(float))
        .groupby(["user_id", "arm"], sort=True)
        .agg(sessions=("session", "size"), bounces=("bounced", "sum"))
        .reset_index()
        .rename(columns={"user_id": "unit"})
    )
    return out.astype({"sessions": float, "bounces": float})


def _teams(sources: Any) -> str | None:
    if not isinstance(sources, list | tuple):
        return None  # an empty list's placeholder row
    for s in sources:
        if isinstance(s, str) and s.startswith(TEAM_PREFIX):
            return s[len(TEAM_PREFIX) :]
    return None


def interleaving_summary(
    exp: Experiment,
    slots: pd.DataFrame,
    events: pd.DataFrame,
    alpha: float,
    semantics: EventSemantics = DEFAULT_SEMANTICS,
) -> dict[str, Any]:
    """Per-request credit of an interleaving experiment: the arm whose team got
    more clicks (events of `semantics.click_types`) wins the request; a sign
    test over decided requests."""
    a_name, b_name = (v.name for v in exp.served)
    is_click = events["type"].isin(semantics.click_types)
    clicked = set(
        zip(events.loc[is_click, "request_id"], events.loc[is_click, "item_id"], strict=True)
    )
    outcomes: list[int] = []
    for request_id, group in slots.groupby("request_id", sort=False):
        team = [_teams(s) for s in group["sources"]]
        teams = np.array([TEAM_A if t == a_name else TEAM_B if t == b_name else -1 for t in team])
        clicks = np.array([(request_id, i) in clicked for i in group["item_id"]], dtype=float)
        outcomes.append(int(credit_many(teams[None, :], clicks[None, :])[0]))
    result = interleaving_test(np.asarray(outcomes, dtype=np.int64), alpha=alpha)
    winner = {"A": a_name, "B": b_name}.get(result.winner or "")
    return {
        "wins": {a_name: result.wins_a, b_name: result.wins_b},
        "ties": result.ties,
        "requests": len(outcomes),
        "preference": _interval(result.preference),
        "p_value": result.p_value,
        "winner": winner,
    }


def experiment_report(
    store: Store,
    record: ExperimentRecord,
    *,
    alpha: float = 0.05,
    catalog_size: int | None = None,
    cache: Cache | None = None,
    semantics: EventSemantics = DEFAULT_SEMANTICS,
    now: float | None = None,
) -> dict[str, Any]:
    """The analysis of one experiment as JSON-able data (see the module doc);
    clicks and conversions as `semantics` defines them (stated in the report);
    `shadows`: each shadow arm against the served lists (`shadow_summary`).

    Signals per arm: `mean_dwell` (dwell seconds per unit, from dwell events
    citing the arm's lists) once any dwell was sent, and `bounce_rate`
    (bounced / ended sessions in which the arm served a list, sessions decided
    at `now`, the current time by default) once a session has ended.

    Always-valid p-values: the mSPRT p-value of the primary difference at this
    look, with τ = the difference's own minimum detectable effect; with a
    `cache` the running minimum over all looks so far is kept, which is what
    makes looking early safe.
    """
    exp = record.experiment
    slots, events = store.experiment_frames(exp.name)
    units = unit_frame(slots, events, semantics)
    if exp.kind != "interleaving" and not slots.empty:
        activity = store.experiment_activity(exp.name, semantics.session_gap_seconds)
        at = time.time() if now is None else now
        sessions = session_units(slots, activity, semantics, at)
        if not sessions.empty and sessions["sessions"].sum() > 0:
            units = units.merge(sessions, on=["unit", "arm"], how="left").fillna(
                {"sessions": 0.0, "bounces": 0.0}
            )
    shadows = (
        shadow_summary(exp, slots, events, store.experiment_contexts(exp.name), semantics)
        if exp.shadows
        else []
    )
    out: dict[str, Any] = {
        "experiment": exp.name,
        "semantics": semantics.describe(),
        "kind": exp.kind,
        "allocation": exp.allocation,
        "status": record.status,
        "created_at": record.created_at,
        "stopped_at": record.stopped_at,
        "arms": [],
        "comparisons": [],
        "srm": None,
        "interleaving": None,
        "shadows": shadows,
        "verdict": "",
    }
    if exp.kind == "interleaving":
        summary = interleaving_summary(exp, slots, events, alpha, semantics)
        out["interleaving"] = summary
        out["arms"] = [
            {"arm": name, "units": 0, "impressions": 0, "clicks": 0, "wins": wins}
            for name, wins in summary["wins"].items()
        ]
        out["verdict"] = _interleaving_verdict(summary, alpha)
        return out
    served = {v.name for v in exp.served}
    units = units.loc[units["arm"].isin(served)]
    if units.empty:
        out["verdict"] = "No impressions of this experiment have been logged yet."
        return out
    extra = _shown_extras(slots, catalog_size)
    adaptive = exp.allocation != "fixed"  # shares drift by design: no SRM check
    report = analyze(
        units,
        None if adaptive else exp,
        config=AnalysisConfig(alpha=alpha, control=exp.served[0].name),
        extra=extra,
    )
    for arm in report.arms.values():
        out["arms"].append(
            {
                "arm": arm.arm,
                "units": arm.units,
                "requests": int(arm.totals.get("requests", 0)),
                "impressions": int(arm.totals.get("impressions", 0)),
                "clicks": int(arm.totals.get("clicks", 0)),
                "conversions": int(arm.totals.get("conversions", 0)),
                "revenue": float(arm.totals.get("revenue", 0.0)),
                "ctr": _interval(arm.ctr),
                "conversion_rate": _interval(arm.conversion_rate),
                "revenue_per_user": _interval(arm.revenue_per_user),
                "mean_dwell": _interval(arm.mean_dwell),
                "bounce_rate": _interval(arm.bounce_rate),
                "dwell_seconds": float(arm.totals.get("dwell_seconds", 0.0)),
                "sessions": int(arm.totals.get("sessions", 0)),
                "bounces": int(arm.totals.get("bounces", 0)),
                **{k: _finite(v) for k, v in arm.extra.items()},
            }
        )
    for c in report.comparisons:
        r = c.result
        avp = None
        if c.primary:
            tau = abs(c.mde * c.control_value) if math.isfinite(c.mde) else 0.0
            avp = _always_valid(cache, exp.name, c.treatment, r.diff, tau, alpha)
        out["comparisons"].append(
            {
                "metric": c.metric,
                "control": c.control,
                "treatment": c.treatment,
                "control_value": _finite(c.control_value),
                "treatment_value": _finite(c.treatment_value),
                "estimate": _finite(r.diff.mean),
                "low": _finite(r.diff.low),
                "high": _finite(r.diff.high),
                "relative": _finite(r.lift.mean),
                "relative_low": _finite(r.lift.low),
                "relative_high": _finite(r.lift.high),
                "p_value": _finite(r.p_value),
                "p_adjusted": _finite(c.p_adjusted),
                "always_valid_p": avp,
                "significant": bool(c.significant),
                "primary": bool(c.primary),
                "mde": _finite(c.mde),
                "test": c.test,
            }
        )
    if report.srm is not None:
        out["srm"] = {
            "p_value": float(report.srm.p_value),
            "ok": not report.srm.mismatch,
            "counts": report.srm.counts,
            "message": report.srm.describe(),
        }
    verdict = report.verdict()
    smallest = min(report.arms.values(), key=lambda a: a.units)
    out["early"] = smallest.units < MIN_UNITS
    if out["early"]:
        verdict = (
            f"Too early to conclude: arm {smallest.arm} has {smallest.units} units (fewer "
            f"than {MIN_UNITS} per arm); fixed-horizon p-values this early are unreliable and "
            "acting on them is peeking — only the always-valid p-value may be acted on. " + verdict
        )
    if exp.allocation == "thompson":
        verdict += (
            " Arms were allocated adaptively (Thompson sampling): shares drifted toward the "
            "better arm by design, so no sample-ratio check applies, and later, larger "
            "samples weigh more than under a fixed split."
        )
    out["verdict"] = verdict
    return out


def _shown_extras(slots: pd.DataFrame, catalog_size: int | None) -> dict[str, dict[str, float]]:
    """Per arm: distinct items shown, catalog coverage and mean list length."""
    out: dict[str, dict[str, float]] = {}
    for arm, group in slots.groupby("arm", sort=True):
        distinct = float(group["item_id"].nunique())
        row = {
            "distinct_items": distinct,
            "mean_list_length": float(group.groupby("request_id")["item_id"].count().mean()),
        }
        if catalog_size:
            row["coverage"] = distinct / catalog_size
        out[str(arm)] = row
    return out


def _always_valid(
    cache: Cache | None,
    experiment: str,
    treatment: str,
    interval: Any,
    tau_guess: float,
    alpha: float,
) -> float | None:
    """mSPRT p-value of this look, min-accumulated over looks in the cache.

    τ (the effect size the mixture is tuned to) must not change between looks,
    so it is fixed at the first look (the absolute minimum detectable effect
    then) and kept with the running minimum."""
    z = float(scipy.stats.norm.ppf(1 - alpha / 2))
    se = (interval.high - interval.low) / (2 * z)
    diff = float(interval.mean)
    if not (math.isfinite(se) and se > 0 and math.isfinite(diff)):
        return None
    key = f"avp:{experiment}:{treatment}"
    state: Any = None
    if cache is not None:
        try:
            state = cache.get_json(key)
        except CacheError:
            log.warning("cache unavailable: always-valid p-value of %r not kept", experiment)
    if not isinstance(state, dict):
        state = {"tau": tau_guess if tau_guess > 0 else 2.8 * se, "p": 1.0}
    p = float(always_valid_pvalues(np.array([diff]), np.array([se * se]), state["tau"])[0])
    p = min(p, float(state["p"]))
    if cache is not None:
        try:
            cache.set_json(key, {"tau": state["tau"], "p": p})
        except CacheError:
            log.warning("cache unavailable: always-valid p-value of %r not kept", experiment)
    return p


def _interleaving_verdict(summary: Mapping[str, Any], alpha: float) -> str:
    wins = summary["wins"]
    (a, wa), (b, wb) = wins.items()
    decided = wa + wb
    if summary["requests"] == 0:
        return "No interleaved impressions have been logged yet."
    if decided == 0:
        return (
            f"{summary['requests']} interleaved requests, none with more clicks on one "
            "team: nothing can be concluded yet."
        )
    share = wa / decided
    p = summary["p_value"]
    p_text = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    if summary["winner"]:
        loser = b if summary["winner"] == a else a
        return (
            f"{summary['winner']} wins the interleaving against {loser}: it got more clicks "
            f"in {max(wa, wb)} of {decided} decided requests ({100 * max(share, 1 - share):.1f}%, "
            f"sign test {p_text}); the preference is significant at α={alpha:g}."
        )
    return (
        f"No significant preference between {a} and {b}: {a} won {wa} and {b} won {wb} "
        f"of {decided} decided requests ({summary['ties']} ties; sign test {p_text}); "
        "keep running or accept that any difference is small."
    )


__all__ = [
    "MIN_UNITS",
    "experiment_report",
    "interleaving_summary",
    "session_units",
    "unit_frame",
]
