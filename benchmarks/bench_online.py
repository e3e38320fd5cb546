"""Online experiments end to end: synthetic users drive a running `sieve serve`.

Builds a synthetic world (known click probabilities), imports it into a fresh
SQLite store and registers three model versions: the default funnel ("full",
promoted, serving), a deliberately weak one ("popular-only": only the
`popular` candidate source, ranker off) and a mildly weaker one
("small-ranker": the ranker with 10 trees instead of 100, about 15% lower true
CTR), the last two with ``promote=False``. One real server process is started,
and experiments are created and stopped with `sieve experiment` on the store,
as an operator would; simulated users request lists over HTTP and send their
clicks back citing the request id. One after the other:

a. an A/B test full vs popular-only (arms pinned to model versions): per-arm
   CTR with its interval from the service's report, the simulator's true CTR,
   the z-test p-value, the always-valid p-value and the verdict;
b. an interleaving test of the same two versions (a new experiment in another
   layer once the A/B is stopped): after how many requests its sign test first
   reaches p < .05 against the A/B's z-test, both computed per request from
   the simulator's own log with the service's formulas (cross-checked with the
   service's report, polled every --poll requests);
   a and b again for full vs small-ranker (a smaller difference) unless --no-subtle;
c. exploration: control vs ``exploration_slots: 2`` (Thompson), the explore
   slots' CTR against the control's CTR in the same two positions, and the
   overall CTR cost or benefit (true CTR from the simulator);
d. requests per second of the simulated traffic (one client thread, client
   and server on the same machine; report polls excluded).

Every report is checked against the simulator's ground truth (shown slots,
clicks, purchases, units, requests, interleaving wins); mismatches are printed
and saved with the results (--out), and the plot goes to docs/img/online_ab.png.

    .venv/bin/python benchmarks/bench_online.py              # 8-10 min on 2 cores
    .venv/bin/python benchmarks/bench_online.py --quick      # about 2 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
from matplotlib.axes import Axes
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sieve.data.io import load_data
from sieve.data.synthetic import SyntheticWorld
from sieve.experiments.interleaving import sign_test_pvalues
from sieve.experiments.sequential import always_valid_pvalues
from sieve.serve.launch import running_server
from sieve.settings import Settings
from sieve.simulator import SimulationResult, Simulator, examination, world_from_spec
from sieve.storage import open_store
from sieve.training.snapshot import import_data
from sieve.training.train import train

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.05
EXPLORE_SLOTS = 2
#: minimum detectable effect / its standard error at α = .05, power .8 (the τ rule)
MDE_Z = float(scipy.stats.norm.ppf(1 - ALPHA / 2) + scipy.stats.norm.ppf(0.8))
CONTROL = "full"
#: the weaker versions: name → funnel TOML
WEAKER = {
    "popular-only": """
[sources]
ann = 0
item_to_item = 0
content = 0
ease = 0
popular = 50
trending = 0
fresh = 0

[ranker]
enabled = false
""",
    "small-ranker": """
[ranker]
n_estimators = 10
""",
}
console = Console(width=120)


# ------------------------------------------------------------ request log
@dataclass
class Served:
    """One simulated request as the client saw it (ground truth included)."""

    user: str
    arm: str  # "experiment/arm", or "default"
    impressions: int
    clicks: int
    expected: float  # Σ true click probability × examination
    purchases: int
    revenue: float  # Σ value of the purchases sent
    team_clicks: dict[str, int]  # interleaving: clicks per team
    explore: tuple[int, int, float]  # explore slots: shown, clicked, expected clicks
    tail: tuple[int, int, float]  # the last EXPLORE_SLOTS positions, any slot kind
    head: tuple[int, int, float]  # the positions before them
    seconds: float  # client-side latency of the GET


class RecordingSimulator(Simulator):
    """A `Simulator` that also keeps a per-request log (via httpx event hooks)."""

    def __init__(self, world: SyntheticWorld, base_url: str, **kwargs: Any) -> None:
        super().__init__(world, base_url, **kwargs)
        self.log: list[Served] = []
        self._user_index = {str(u): k for k, u in enumerate(world.user_ids)}
        self._items = {str(i): k for k, i in enumerate(world.item_ids)}
        self._body: dict[str, Any] | None = None
        self._elapsed = 0.0
        self._posted: list[dict[str, Any]] = []
        hooks = {"request": [self._on_request], "response": [self._on_response]}
        self.client.http.event_hooks = hooks

    def _on_request(self, request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path == "/events":
            self._posted.extend(json.loads(request.content)["events"])

    def _on_response(self, response: httpx.Response) -> None:
        request = response.request
        if request.method == "GET" and request.url.path.startswith("/recommendations/"):
            response.read()
            self._elapsed = response.elapsed.total_seconds()
            if response.status_code == 200:
                self._body = response.json()

    def _one(self, result: SimulationResult) -> None:
        self._body, self._posted = None, []
        super()._one(result)
        if self._body is not None:
            self.log.append(self._record(self._body, self._posted))

    def _record(self, body: dict[str, Any], posted: Sequence[dict[str, Any]]) -> Served:
        u = self._user_index[str(body["user_id"])]
        clicked = {e["item_id"] for e in posted if e["type"] == "click"}
        items = body["items"]
        arms = [f"{a['experiment']}/{a['arm']}" for a in body.get("experiments", [])]
        out = Served(
            user=str(body["user_id"]),
            arm=arms[0] if arms else "default",
            impressions=len(items),
            clicks=0,
            expected=0.0,
            purchases=sum(e["type"] == "purchase" for e in posted),
            revenue=sum(float(e.get("value") or 0.0) for e in posted if e["type"] == "purchase"),
            team_clicks={},
            explore=(0, 0, 0.0),
            tail=(0, 0, 0.0),
            head=(0, 0, 0.0),
            seconds=self._elapsed,
        )
        ex, tl, hd = [0, 0, 0.0], [0, 0, 0.0], [0, 0, 0.0]
        for position, item in enumerate(items):
            index = self._items.get(item["id"])
            p = (
                0.0
                if index is None
                else float(self.world.click_probability(u, index)) * examination(position)
            )
            c = int(item["id"] in clicked)
            out.clicks += c
            out.expected += p
            if item.get("team"):
                out.team_clicks[item["team"]] = out.team_clicks.get(item["team"], 0) + c
            if item.get("slot") == "explore":
                ex = [ex[0] + 1, ex[1] + c, ex[2] + p]
            if position >= self.n - EXPLORE_SLOTS:
                tl = [tl[0] + 1, tl[1] + c, tl[2] + p]
            else:
                hd = [hd[0] + 1, hd[1] + c, hd[2] + p]
        out.explore = (int(ex[0]), int(ex[1]), float(ex[2]))
        out.tail = (int(tl[0]), int(tl[1]), float(tl[2]))
        out.head = (int(hd[0]), int(hd[1]), float(hd[2]))
        return out


# ------------------------------------------------------------ statistics
def running_ab(
    log: Sequence[Served], control: str, treatment: str
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per request: the CTR difference (treatment − control), its standard error
    and the z-test p-value over everything logged so far, with users as units
    and the delta method: the service's formula (`sieve.experiments.analysis`),
    updated in O(1) per request. Like the service's report, a user counts as a
    unit once shown at least one slot."""
    # per arm: units, Σx, Σy, Σx², Σy², Σxy over users (x = clicks, y = shown)
    sums = {control: [0.0] * 6, treatment: [0.0] * 6}
    per_user: dict[tuple[str, str], tuple[float, float]] = {}
    diff = np.full(len(log), np.nan)
    se = np.full(len(log), np.nan)
    est: list[tuple[float, float]] = [(math.nan, math.nan)] * 2
    for k, r in enumerate(log):
        if r.impressions > 0:
            s = sums[r.arm]
            key = (r.arm, r.user)
            if key not in per_user:
                s[0] += 1
            ox, oy = per_user.get(key, (0.0, 0.0))
            x, y = ox + r.clicks, oy + r.impressions
            per_user[key] = (x, y)
            s[1] += x - ox
            s[2] += y - oy
            s[3] += x * x - ox * ox
            s[4] += y * y - oy * oy
            s[5] += x * y - ox * oy
            est = []
            for n, sx, sy, sxx, syy, sxy in (sums[control], sums[treatment]):
                if n < 2 or sy <= 0:
                    est.append((math.nan, math.nan))
                    continue
                ratio = sx / sy
                ss = max(sxx - 2 * ratio * sxy + ratio * ratio * syy, 0.0)
                est.append((ratio, math.sqrt(ss / (n - 1)) / (sy / n) / math.sqrt(n)))
        (ea, sa), (eb, sb) = est
        diff[k], se[k] = eb - ea, math.hypot(sa, sb)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(diff) / se
    p = np.where(np.isfinite(z), 2 * scipy.stats.norm.sf(z), 1.0)
    p = np.where((se == 0) & (diff != 0), 0.0, p)
    return diff, se, p


def always_valid_from(
    diff: NDArray[np.float64], se: NDArray[np.float64], start: int, tau: float
) -> NDArray[np.float64]:
    """mSPRT p-values monitored at every request from request `start` on (1 before)."""
    avp = np.ones_like(diff)
    var = np.where(np.isfinite(se), se**2, 0.0)
    avp[start - 1 :] = always_valid_pvalues(np.nan_to_num(diff[start - 1 :]), var[start - 1 :], tau)
    return avp


def outcomes(log: Sequence[Served], a: str, b: str) -> NDArray[np.int64]:
    """Per interleaved request: +1 team `a` got more clicks, −1 team `b`, 0 a tie."""
    return np.array(
        [np.sign(r.team_clicks.get(a, 0) - r.team_clicks.get(b, 0)) for r in log], dtype=np.int64
    )


def running_sign_test(log: Sequence[Served], a: str, b: str) -> NDArray[np.float64]:
    """Per request: the exact sign test over the requests decided so far."""
    o = outcomes(log, a, b)
    return sign_test_pvalues(np.cumsum(o > 0), np.cumsum(o < 0))


def first_below(p: NDArray[np.float64], alpha: float = ALPHA) -> int | None:
    """Requests after which `p` first falls below `alpha` (None: never)."""
    hit = np.flatnonzero(p < alpha)
    return int(hit[0]) + 1 if hit.size else None


def stays_below(p: NDArray[np.float64], alpha: float = ALPHA) -> int | None:
    """Requests from which `p` stays below `alpha` to the end (None: it ends above)."""
    if p.size == 0 or p[-1] >= alpha:
        return None
    above = np.flatnonzero(p >= alpha)
    return int(above[-1]) + 2 if above.size else 1


def wilson(k: int, n: int) -> list[float] | None:
    """95% Wilson interval of a proportion (slot-level: ignores user clustering)."""
    if n == 0:
        return None
    z = 1.959963984540054
    c = k / n
    d = 1 + z * z / n
    mid = (c + z * z / (2 * n)) / d
    half = z * math.sqrt(c * (1 - c) / n + z * z / (4 * n * n)) / d
    return [mid - half, mid + half]


def latency(log: Sequence[Served]) -> dict[str, float]:
    ms = 1000 * np.array([r.seconds for r in log])
    return {"latency_ms_p50": float(np.median(ms)), "latency_ms_p99": float(np.percentile(ms, 99))}


# ------------------------------------------------------------ the service
@dataclass
class World:
    """A built store with its registered model versions."""

    spec: str
    store_url: str
    model_dir: Path
    versions: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def build(workdir: Path, spec: str, weaker: Sequence[str]) -> World:
    """Import the synthetic world into a fresh SQLite store; train every version."""
    store_url = f"sqlite:///{workdir / 'sieve.db'}"
    model_dir = workdir / "models"
    timings: dict[str, float] = {}
    versions: dict[str, str] = {}
    t = time.perf_counter()
    raw = load_data(spec)
    with open_store(store_url) as store:
        items, users, events = import_data(store, raw)
        timings["import_s"] = time.perf_counter() - t
        console.print(f"imported {items} items, {users} users, {events} events")
        t = time.perf_counter()
        funnel, _ = train(Settings(store_url=store_url, model_dir=model_dir), store)
        timings[f"train_{CONTROL}_s"] = time.perf_counter() - t
        versions[CONTROL] = str(funnel.version)
        console.print(f"trained {CONTROL} {funnel.version} in {timings['train_full_s']:.1f}s")
        for name in weaker:
            config = workdir / f"{name}.toml"
            config.write_text(WEAKER[name])
            settings = Settings(store_url=store_url, model_dir=model_dir, funnel_config=config)
            t = time.perf_counter()
            funnel, _ = train(settings, store, promote=False)
            timings[f"train_{name}_s"] = time.perf_counter() - t
            versions[name] = str(funnel.version)
            console.print(
                f"trained {name} {funnel.version} in {timings[f'train_{name}_s']:.1f}s "
                "(registered, not promoted)"
            )
    counts = {"items": items, "users": users, "events": events}
    return World(spec, store_url, model_dir, versions, timings, counts)


def cli(world: World, *args: str) -> str:
    """`sieve ARGS… --store STORE` in a separate process, as an operator runs it."""
    cmd = [sys.executable, "-c", "from sieve.cli import app; app()", *args]
    cmd += ["--store", world.store_url]
    env = {**os.environ, "SIEVE_MODEL_DIR": str(world.model_dir), "COLUMNS": "200"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"sieve {' '.join(args[:2])} failed: {done.stdout}{done.stderr}")
    return done.stdout


def start_experiment(world: World, url: str, definition: dict[str, Any]) -> None:
    """Create through the CLI; wait until the running server has it."""
    cli(world, "experiment", "create", json.dumps(definition))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # a GET of the experiment makes the server re-read the store at once
        got = httpx.get(f"{url}/experiments/{definition['name']}", timeout=10)
        if got.status_code == 200 and got.json()["status"] == "running":
            return
        time.sleep(0.1)
    raise RuntimeError(f"the server did not pick up experiment {definition['name']!r}")


def stop_experiment(world: World, url: str, name: str) -> None:
    cli(world, "experiment", "stop", name)
    httpx.get(f"{url}/experiments/{name}", timeout=10)  # the server re-reads at once


@dataclass
class Phase:
    """One simulated run against one experiment, with the polled reports."""

    name: str
    log: list[Served]  # the requests that were in the experiment, in order
    result: SimulationResult
    polls: list[tuple[int, dict[str, Any]]]  # (requests in the experiment so far, report)
    poll_seconds: float
    final: dict[str, Any]

    @property
    def looks(self) -> list[tuple[int, dict[str, Any]]]:
        return [(c, r) for c, r in self.polls if r.get("comparisons") or r.get("interleaving")]

    @property
    def requests_per_second(self) -> float:
        return self.result.requests / max(self.result.seconds - self.poll_seconds, 1e-9)


def simulate(
    world: SyntheticWorld, url: str, experiment: str, args: argparse.Namespace, seed: int
) -> Phase:
    """`args.requests` simulated requests, reading the report every `args.poll`."""
    polls: list[tuple[int, dict[str, Any]]] = []
    poll_seconds = 0.0
    prefix = f"{experiment}/"
    with (
        RecordingSimulator(world, url, n=args.n, seed=seed) as sim,
        Progress(
            TextColumn(f"[bold]{experiment:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar,
    ):
        task = bar.add_task(experiment, total=args.requests)

        def report() -> dict[str, Any]:
            got = sim.client.get(f"/experiments/{experiment}/report")
            got.raise_for_status()
            return dict(got.json())

        def progress(done: int) -> None:
            nonlocal poll_seconds
            bar.update(task, completed=done)
            if done % args.poll == 0 and done < args.requests:
                t = time.perf_counter()
                polls.append((sum(r.arm.startswith(prefix) for r in sim.log), report()))
                poll_seconds += time.perf_counter() - t

        result = sim.run(args.requests, args.seconds, progress)
        final = report()
        log = [r for r in sim.log if r.arm.startswith(prefix)]
        polls.append((len(log), final))
    return Phase(experiment, log, result, polls, poll_seconds, final)


# ------------------------------------------------------------ checks
def tally(log: Sequence[Served], arm: str) -> dict[str, Any]:
    rows = [r for r in log if r.arm == arm]
    shown = sum(r.impressions for r in rows)
    clicks = sum(r.clicks for r in rows)
    return {
        "requests": len(rows),
        "empty_lists": sum(r.impressions == 0 for r in rows),
        "units": len({r.user for r in rows}),
        "units_shown_something": len({r.user for r in rows if r.impressions}),
        "impressions": shown,
        "clicks": clicks,
        "purchases": sum(r.purchases for r in rows),
        "revenue": sum(r.revenue for r in rows),
        "ctr": clicks / shown if shown else math.nan,
        "true_ctr": sum(r.expected for r in rows) / shown if shown else math.nan,
    }


def check_counts(phase: Phase, problems: list[str], notes: list[str]) -> None:
    """The report's per-arm counts against what the simulator saw and sent.

    Requests that served an empty list are missing from the report's `requests`
    and `units` (see the final message): that known gap goes to `notes`,
    anything else to `problems`."""
    by_arm = {a["arm"]: a for a in phase.final["arms"]}
    for key, sim in sorted(phase.result.arms.items()):
        exp, _, arm = key.partition("/")
        if exp != phase.name:
            continue
        mine = tally(phase.log, key)
        got = by_arm.get(arm, {})
        for name, theirs, ours in (
            ("impressions", got.get("impressions"), sim.impressions),
            ("clicks", got.get("clicks"), sim.clicks),
            ("conversions", got.get("conversions"), sim.purchases),
        ):
            if theirs != ours:
                problems.append(f"{key}: report {name} {theirs} != simulator {ours}")
        for name, theirs, ours, shown in (
            (
                "requests",
                got.get("requests"),
                mine["requests"],
                mine["requests"] - mine["empty_lists"],
            ),
            ("units", got.get("units"), mine["units"], mine["units_shown_something"]),
        ):
            if theirs == ours:
                continue
            if theirs == shown:
                notes.append(
                    f"{key}: report {name} {theirs} != simulator {ours}: the "
                    f"{mine['empty_lists']} requests that served an empty list are not counted"
                )
            else:
                problems.append(f"{key}: report {name} {theirs} != simulator {ours}")
        if abs(float(got.get("revenue", math.nan)) - mine["revenue"]) > 1e-6 * (
            1 + mine["revenue"]
        ):
            problems.append(f"{key}: report revenue {got.get('revenue')} != sent {mine['revenue']}")
        if got.get("ctr") and sim.impressions and abs(got["ctr"]["estimate"] - sim.ctr) > 1e-12:
            problems.append(f"{key}: report CTR {got['ctr']['estimate']} != simulator {sim.ctr}")
        if (mine["impressions"], mine["clicks"]) != (sim.impressions, sim.clicks):
            problems.append(f"{key}: the benchmark's own log disagrees with the simulator")
        if sim.impressions and abs(mine["true_ctr"] - sim.true_ctr) > 1e-9:
            problems.append(f"{key}: true CTR {mine['true_ctr']} != simulator {sim.true_ctr}")


def primary(report: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in report["comparisons"] if c["primary"])


# ------------------------------------------------------------ the analyses
def ab_summary(
    phase: Phase, treatment: str, problems: list[str], notes: list[str]
) -> tuple[dict[str, Any], dict[str, NDArray[np.float64]]]:
    """The A/B's report next to the ground truth, and its per-request curves."""
    check_counts(phase, problems, notes)
    key_c, key_t = f"{phase.name}/{CONTROL}", f"{phase.name}/{treatment}"
    diff, se, p = running_ab(phase.log, key_c, key_t)
    # the service's always-valid p fixes τ (the absolute MDE) at its first look;
    # per request, with the same τ from that look on
    first_count, first = next((c, r) for c, r in phase.polls if r["comparisons"])
    tau = abs(primary(first)["mde"] * primary(first)["control_value"])
    if abs(tau - MDE_Z * se[first_count - 1]) > 1e-9 * tau:
        problems.append(f"{phase.name}: τ {tau:.6g} != {MDE_Z:.4f} × se of the first look")
    avp = always_valid_from(diff, se, first_count, tau)
    # how much τ, and so the always-valid p, depends on when someone first looked
    first_look = {}
    for k in sorted({25, 100, first_count, 1000}):
        if k <= len(p) and math.isfinite(se[k - 1]) and se[k - 1] > 0:
            curve = always_valid_from(diff, se, k, MDE_Z * float(se[k - 1]))
            first_look[k] = {
                "tau": MDE_Z * float(se[k - 1]),
                "first_below_alpha": first_below(curve),
                "final": float(curve[-1]),
            }
    for count, report in phase.polls:  # our z-test at each look against the service's
        if count and report["comparisons"]:
            theirs, ours = primary(report)["p_value"], float(p[count - 1])
            if theirs is not None and abs(theirs - ours) > 1e-6 * ours + 1e-300:
                problems.append(
                    f"{phase.name}: after {count} requests the report's p {theirs:.6g} != "
                    f"{ours:.6g} from the simulator's log"
                )
    final = primary(phase.final)
    reported = {a["arm"]: a for a in phase.final["arms"]}
    arms = {}
    for arm in (CONTROL, treatment):
        mine = tally(phase.log, f"{phase.name}/{arm}")
        ci = reported[arm]["ctr"]
        in_ci = bool(ci["low"] <= mine["true_ctr"] <= ci["high"])
        arms[arm] = {**mine, "report_ctr": ci, "true_ctr_in_ci": in_ci}
    looks = [
        {
            "requests": c,
            "p_value": primary(r)["p_value"],
            "always_valid_p": primary(r)["always_valid_p"],
        }
        for c, r in phase.polls
        if r["comparisons"]
    ]
    report_first = next((q["requests"] for q in looks if q["p_value"] < ALPHA), None)
    summary = {
        "experiment": phase.name,
        "requests": len(phase.log),
        "arms": arms,
        "relative_lift": final["relative"],
        "relative_lift_ci": [final["relative_low"], final["relative_high"]],
        "true_relative_lift": arms[treatment]["true_ctr"] / arms[CONTROL]["true_ctr"] - 1,
        "p_value": final["p_value"],
        "always_valid_p": final["always_valid_p"],
        "tau": tau,
        "always_valid_by_first_look": first_look,
        "srm": phase.final["srm"],
        "verdict": phase.final["verdict"],
        "first_p_below_alpha": first_below(p),
        "p_stays_below_alpha_from": stays_below(p),
        "first_always_valid_below_alpha": first_below(avp),
        "first_report_look_below_alpha": report_first,
        "looks": looks,
        "requests_per_second": phase.requests_per_second,
        **latency(phase.log),
    }
    curves = {"p": p, "avp": avp}
    for label, key in (("control", key_c), ("treatment", key_t)):
        mask = np.array([r.arm == key for r in phase.log], dtype=float)
        shown = np.cumsum(mask * np.array([r.impressions for r in phase.log]))
        with np.errstate(invalid="ignore", divide="ignore"):
            curves[f"ctr_{label}"] = np.cumsum(mask * [r.clicks for r in phase.log]) / shown
            curves[f"true_{label}"] = np.cumsum(mask * [r.expected for r in phase.log]) / shown
    return summary, curves


def interleaving_summary(
    phase: Phase, treatment: str, problems: list[str], notes: list[str]
) -> tuple[dict[str, Any], NDArray[np.float64]]:
    """The interleaving report next to the simulator's per-request credit."""
    p = running_sign_test(phase.log, CONTROL, treatment)
    o = outcomes(phase.log, CONTROL, treatment)
    wins = {CONTROL: int((o > 0).sum()), treatment: int((o < 0).sum())}
    ties = len(o) - sum(wins.values())
    empty = sum(r.impressions == 0 for r in phase.log)
    s = phase.final["interleaving"]
    if s["wins"] != wins:
        problems.append(f"{phase.name}: report wins {s['wins']} != simulator {wins}")
    if (s["ties"], s["requests"]) != (ties, len(o)):
        where = notes if (s["ties"], s["requests"]) == (ties - empty, len(o) - empty) else problems
        where.append(
            f"{phase.name}: report ties {s['ties']}, requests {s['requests']} != simulator "
            f"{ties}, {len(o)} ({empty} requests served an empty list)"
        )
    for count, report in phase.polls:
        theirs = report["interleaving"]["p_value"]
        if count and abs(theirs - float(p[count - 1])) > 1e-9:
            problems.append(
                f"{phase.name}: after {count} requests the report's sign-test p {theirs:.6g} "
                f"!= {float(p[count - 1]):.6g} from the simulator's log"
            )
    shown = max(sum(r.impressions for r in phase.log), 1)
    looks = [(c, r["interleaving"]["p_value"]) for c, r in phase.polls]
    summary = {
        "experiment": phase.name,
        "requests": len(phase.log),
        "wins": wins,
        "ties": ties,
        "team_clicks": {t: sum(r.team_clicks.get(t, 0) for r in phase.log) for t in wins},
        "preference": s["preference"],
        "p_value": s["p_value"],
        "winner": s["winner"],
        "verdict": phase.final["verdict"],
        "first_p_below_alpha": first_below(p),
        "p_stays_below_alpha_from": stays_below(p),
        "first_report_look_below_alpha": next((c for c, q in looks if q < ALPHA), None),
        "ctr": sum(r.clicks for r in phase.log) / shown,
        "true_ctr": sum(r.expected for r in phase.log) / shown,
        "requests_per_second": phase.requests_per_second,
        **latency(phase.log),
    }
    return summary, p


def reorder_crossings(
    ab_log: Sequence[Served], il_log: Sequence[Served], treatment: str, reps: int, seed: int
) -> dict[str, Any]:
    """When each test first gets p < α, and from when it stays there, over `reps`
    random orders of its own logged requests (quartiles): the single run's
    crossings are one noisy draw of these."""
    rng = np.random.default_rng(seed)
    experiment = ab_log[0].arm.partition("/")[0]
    keys = (f"{experiment}/{CONTROL}", f"{experiment}/{treatment}")
    runs: dict[str, list[float]] = {"ab_first": [], "ab_stays": [], "il_first": [], "il_stays": []}
    for _ in range(reps):
        order = rng.permutation(len(ab_log))
        p = running_ab([ab_log[i] for i in order], *keys)[2]
        runs["ab_first"].append(first_below(p) or math.inf)
        runs["ab_stays"].append(stays_below(p) or math.inf)
        order = rng.permutation(len(il_log))
        p = running_sign_test([il_log[i] for i in order], CONTROL, treatment)
        runs["il_first"].append(first_below(p) or math.inf)
        runs["il_stays"].append(stays_below(p) or math.inf)
    out: dict[str, Any] = {"reps": reps}
    for name, values in runs.items():
        x = np.array(values)
        out[name] = [float(np.percentile(x, q)) for q in (25, 50, 75)]
    out["ratio_first"] = out["ab_first"][1] / out["il_first"][1]
    out["ratio_stays"] = out["ab_stays"][1] / out["il_stays"][1]
    return out


def exploration_summary(phase: Phase, problems: list[str], notes: list[str]) -> dict[str, Any]:
    """Explore-slot CTR against the control's same positions; overall CTR change."""
    check_counts(phase, problems, notes)
    reported = {a["arm"]: a for a in phase.final["arms"]}
    arms: dict[str, dict[str, Any]] = {}
    for arm in ("control", "explore"):
        key = f"{phase.name}/{arm}"
        rows = [r for r in phase.log if r.arm == key]
        ex = [sum(r.explore[i] for r in rows) for i in range(3)]
        tl = [sum(r.tail[i] for r in rows) for i in range(3)]
        hd = [sum(r.head[i] for r in rows) for i in range(3)]
        arms[arm] = {
            **tally(phase.log, key),
            "report_ctr": reported[arm]["ctr"],
            "explore_impressions": int(ex[0]),
            "explore_clicks": int(ex[1]),
            "explore_ctr": ex[1] / ex[0] if ex[0] else None,
            "explore_ctr_ci": wilson(int(ex[1]), int(ex[0])),
            "explore_true_ctr": ex[2] / ex[0] if ex[0] else None,
            "last2_impressions": int(tl[0]),
            "last2_clicks": int(tl[1]),
            "last2_ctr": tl[1] / tl[0] if tl[0] else None,
            "last2_ctr_ci": wilson(int(tl[1]), int(tl[0])),
            "last2_true_ctr": tl[2] / tl[0] if tl[0] else None,
            "first8_ctr": hd[1] / hd[0] if hd[0] else None,
            "first8_true_ctr": hd[2] / hd[0] if hd[0] else None,
        }
        sim = phase.result.arms.get(key)
        if sim is not None and (sim.explore_impressions, sim.explore_clicks) != tuple(ex[:2]):
            problems.append(f"{key}: explore tallies differ from the simulator's")
    if arms["control"]["explore_impressions"]:
        problems.append(f"{phase.name}/control: the control arm showed exploration slots")
    final = primary(phase.final)
    c, e = arms["control"], arms["explore"]
    # the arms' users differ; the slots before the explore slots are served alike,
    # so the slot-level truth isolates the cost: Δ(true CTR of the last slots) ×
    # their share of the shown slots, relative to the control's true CTR
    share = e["last2_impressions"] / max(e["impressions"], 1)
    slot_cost = (e["last2_true_ctr"] - c["last2_true_ctr"]) * share / c["true_ctr"]
    return {
        "experiment": phase.name,
        "requests": len(phase.log),
        "arms": arms,
        "relative_ctr_change": final["relative"],
        "relative_ctr_change_ci": [final["relative_low"], final["relative_high"]],
        "true_relative_ctr_change": e["true_ctr"] / c["true_ctr"] - 1,
        "true_relative_change_from_slots": slot_cost,
        "p_value": final["p_value"],
        "always_valid_p": final["always_valid_p"],
        "verdict": phase.final["verdict"],
        "requests_per_second": phase.requests_per_second,
        **latency(phase.log),
    }


def compare_cli(
    phases: dict[str, Phase],
    cli_reports: dict[str, dict[str, Any]],
    problems: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """`sieve experiment report` (from the store) against the API's last report."""
    out: dict[str, Any] = {}
    for name, phase in phases.items():
        api, cli = phase.final, cli_reports[name]
        if api["kind"] == "interleaving":
            a, c = api["interleaving"], cli["interleaving"]
            out[name] = {"p_value": [a["p_value"], c["p_value"]]}
            if (a["wins"], a["ties"], a["p_value"]) != (c["wins"], c["ties"], c["p_value"]):
                problems.append(f"{name}: the CLI's interleaving report differs from the API's")
            continue
        a, c = primary(api), primary(cli)
        out[name] = {k: [a[k], c[k]] for k in ("p_value", "always_valid_p", "estimate")}
        if a["p_value"] != c["p_value"] or a["estimate"] != c["estimate"]:
            problems.append(f"{name}: the CLI's p / estimate differ from the API's")
        if a["always_valid_p"] != c["always_valid_p"]:
            notes.append(
                f"{name}: always-valid p {_p(a['always_valid_p'])} from the API (min over "
                f"{len(phase.looks)} looks, τ fixed at the first) but {_p(c['always_valid_p'])} "
                "from `sieve experiment report` on the same data (its own fresh cache: one look, "
                "τ from this look)"
            )
    return out


# ------------------------------------------------------------ output
def _ctr_panel(ax: Axes, curves: dict[str, NDArray[np.float64]], treatment: str) -> None:
    x = np.arange(1, len(curves["p"]) + 1)
    for label, color, name in (("control", "C0", CONTROL), ("treatment", "C1", treatment)):
        ax.plot(x, curves[f"ctr_{label}"], color=color, lw=1.3, label=f"{name}: observed")
        ax.plot(x, curves[f"true_{label}"], color=color, ls="--", lw=1.1, label=f"{name}: true")
    values = np.concatenate(
        [curves[k][len(x) // 10 :] for k in curves if k[:4] in ("ctr_", "true")]
    )
    values = values[np.isfinite(values)]
    ax.set_ylim(max(0.0, values.min() * 0.8), values.max() * 1.2)
    ax.set_xlabel("requests in the A/B test")
    ax.set_ylabel("running CTR (clicks / shown slots)")
    ax.set_title(f"A/B {CONTROL} vs {treatment}: running CTR per arm", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.grid(alpha=0.3)


def _p_panel(
    ax: Axes,
    ab: dict[str, Any],
    curves: dict[str, NDArray[np.float64]],
    il_p: NDArray[np.float64],
    treatment: str,
) -> None:
    floor = 1e-12
    x = np.arange(1, len(curves["p"]) + 1)
    ax.plot(x, np.maximum(curves["p"], floor), color="C2", lw=1.2, label="A/B z-test p")
    ax.plot(x, np.maximum(curves["avp"], floor), color="C3", lw=1.2, label="A/B always-valid p")
    looks = ab["looks"]
    ax.scatter(
        [q["requests"] for q in looks],
        [max(q["p_value"], floor) for q in looks],
        s=14,
        color="C2",
        zorder=3,
        label="report: p at each look",
    )
    ax.scatter(
        [q["requests"] for q in looks],
        [1.0 if q["always_valid_p"] is None else max(q["always_valid_p"], floor) for q in looks],
        s=14,
        marker="s",
        color="C3",
        zorder=3,
        label="report: always-valid p",
    )
    xi = np.arange(1, len(il_p) + 1)
    ax.plot(xi, np.maximum(il_p, floor), color="C4", lw=1.2, label="interleaving sign-test p")
    ax.axhline(ALPHA, color="grey", ls=":", lw=0.9)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_ylim(floor / 2, 2)
    ax.set_xlabel("requests in the experiment (log scale)")
    ax.set_ylabel("p-value (log scale, floor 1e-12)")
    ax.set_title(f"{CONTROL} vs {treatment}: p-values as traffic comes in", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)


def plot(path: Path, pairs: dict[str, dict[str, Any]]) -> None:
    """Per pair: running CTR per arm (true CTR dashed), and the p-values."""
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 3.9 * len(pairs)), squeeze=False)
    for row, (treatment, pair) in zip(axes, pairs.items(), strict=True):
        _ctr_panel(row[0], pair["curves"], treatment)
        _p_panel(row[1], pair["ab"], pair["curves"], pair["il_p"], treatment)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    if p == 0:
        return "<1e-300"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _ci(ci: dict[str, float] | None) -> str:
    return "—" if not ci else f"{ci['estimate']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"


def _r(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def print_results(results: dict[str, Any]) -> None:
    for treatment, pair in results["pairs"].items():
        ab, il, tts = pair["ab"], pair["interleaving"], pair["time_to_significance"]
        t = Table(title=f"A/B {ab['experiment']}: {ab['requests']:,} requests")
        for col in (
            "arm",
            "users",
            "shown",
            "clicks",
            "CTR [95% CI] (report)",
            "true CTR",
            "in CI",
        ):
            t.add_column(col, justify="left" if col == "arm" else "right")
        for arm, a in ab["arms"].items():
            t.add_row(
                arm,
                f"{a['units']:,}",
                f"{a['impressions']:,}",
                f"{a['clicks']:,}",
                _ci(a["report_ctr"]),
                f"{a['true_ctr']:.4f}",
                "yes" if a["true_ctr_in_ci"] else "[red]no[/]",
            )
        console.print(t)
        lo, hi = ab["relative_lift_ci"]
        console.print(
            f"{treatment} vs {CONTROL}: {100 * ab['relative_lift']:+.1f}% [{100 * lo:+.1f}, "
            f"{100 * hi:+.1f}] (true {100 * ab['true_relative_lift']:+.1f}%); "
            f"p {_p(ab['p_value'])}; always-valid p {_p(ab['always_valid_p'])}\n"
            f"verdict: {ab['verdict']}",
            soft_wrap=True,
        )
        console.print(
            "always-valid p by the request of the first look (τ = 2.8 se then): "
            + "; ".join(
                f"{k}: τ {v['tau']:.4f}, p < {ALPHA} from {v['first_below_alpha']}, "
                f"final {_p(v['final'])}"
                for k, v in ab["always_valid_by_first_look"].items()
            ),
            soft_wrap=True,
        )
        console.print(
            f"interleaving: wins {il['wins']}, ties {il['ties']}, p {_p(il['p_value'])}\n"
            f"first p < {ALPHA} after: A/B {tts['ab_first']}, interleaving "
            f"{tts['interleaving_first']} requests; stays below from {tts['ab_stays']} vs "
            f"{tts['interleaving_stays']}; first report look below: {tts['ab_first_look']} vs "
            f"{tts['interleaving_first_look']}; medians over {tts['reorder']['reps']} random "
            f"orders: first {tts['reorder']['ab_first'][1]:.0f} vs "
            f"{tts['reorder']['il_first'][1]:.0f}, stays {tts['reorder']['ab_stays'][1]:.0f} vs "
            f"{tts['reorder']['il_stays'][1]:.0f}",
            soft_wrap=True,
        )
    ex = results["exploration"]
    t = Table(title=f"Exploration {ex['experiment']}: {ex['requests']:,} requests")
    cols = ("arm", "CTR (report)", "true", "first-8 true", "last-2 CTR", "last-2 true", "explore")
    for col in cols:
        t.add_column(col, justify="left" if col == "arm" else "right")
    for arm, a in ex["arms"].items():
        t.add_row(
            arm,
            _ci(a["report_ctr"]),
            f"{a['true_ctr']:.4f}",
            _r(a["first8_true_ctr"]),
            _r(a["last2_ctr"]),
            _r(a["last2_true_ctr"]),
            _r(a["explore_ctr"]),
        )
    console.print(t)
    lo, hi = ex["relative_ctr_change_ci"]
    console.print(
        f"overall CTR {100 * ex['relative_ctr_change']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}] "
        f"(true, these users {100 * ex['true_relative_ctr_change']:+.1f}%; from the slots "
        f"{100 * ex['true_relative_change_from_slots']:+.1f}%), p {_p(ex['p_value'])}",
        soft_wrap=True,
    )
    console.print(
        "requests/s (one client thread; client and server share the machine; polls excluded): "
        + ", ".join(
            f"{k} {v['requests_per_second']:.0f} (GET p50 {v['latency_ms_p50']:.1f} ms)"
            for k, v in results["throughput"].items()
        ),
        soft_wrap=True,
    )


# ------------------------------------------------------------ main
def definitions(world: World, treatment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The A/B and the interleaving experiment of full vs `treatment`."""
    variants = [
        {"name": CONTROL, "share": 0.5, "model_version": world.versions[CONTROL]},
        {"name": treatment, "share": 0.5, "model_version": world.versions[treatment]},
    ]
    ab = {"name": f"ab-{treatment}", "layer": f"ab-{treatment}", "variants": variants}
    il = {
        "name": f"il-{treatment}",
        "layer": f"il-{treatment}",
        "kind": "interleaving",
        "variants": variants,
    }
    return ab, il


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    weaker = ["popular-only"] + ([] if args.no_subtle else ["small-ranker"])
    world = build(workdir, args.data, weaker)
    synthetic = world_from_spec(args.data)
    env = {"SIEVE_OPEN_READ": "true", "SIEVE_OPEN_WRITE": "true", "SIEVE_MODEL_POLL_SECONDS": "1"}
    server = ["--store", world.store_url, "--model-dir", str(world.model_dir), "--no-access-log"]
    explore = {
        "name": "explore-2-slots",
        "layer": "explore",
        "variants": [
            {"name": "control", "share": 0.5},
            {
                "name": "explore",
                "share": 0.5,
                "config": {"exploration_slots": EXPLORE_SLOTS, "exploration_policy": "thompson"},
            },
        ],
    }
    plan = [d for t in weaker for d in definitions(world, t)] + [explore]
    phases: dict[str, Phase] = {}
    with running_server(server, env=env, ready_path="/ready", timeout=180) as url:
        console.print(f"server ready at {url}, serving {CONTROL} {world.versions[CONTROL]}")
        previous: str | None = None
        for k, definition in enumerate(plan):
            if previous is not None:
                stop_experiment(world, url, previous)
            start_experiment(world, url, definition)
            previous = str(definition["name"])
            phases[previous] = simulate(synthetic, url, previous, args, args.seed + k)
        stop_experiment(world, url, previous or "")
        listing = cli(world, "experiment", "list")
    # the same reports read by the CLI from the store (a fresh cache of its own)
    cli_reports: dict[str, dict[str, Any]] = {}
    for name in phases:
        path = workdir / f"{name}.report.json"
        cli(world, "experiment", "report", name, "--json", str(path))
        cli_reports[name] = json.loads(path.read_text())
    problems: list[str] = []
    notes: list[str] = []
    pairs: dict[str, dict[str, Any]] = {}
    for treatment in weaker:
        ab_def, il_def = definitions(world, treatment)
        ab_phase, il_phase = phases[ab_def["name"]], phases[il_def["name"]]
        ab, curves = ab_summary(ab_phase, treatment, problems, notes)
        il, il_p = interleaving_summary(il_phase, treatment, problems, notes)
        first_ab, first_il = ab["first_p_below_alpha"], il["first_p_below_alpha"]
        tts = {
            "ab_first": first_ab,
            "interleaving_first": first_il,
            "ratio_first": first_ab / first_il if first_ab and first_il else None,
            "ab_stays": ab["p_stays_below_alpha_from"],
            "interleaving_stays": il["p_stays_below_alpha_from"],
            "ab_first_look": ab["first_report_look_below_alpha"],
            "interleaving_first_look": il["first_report_look_below_alpha"],
            "reorder": reorder_crossings(
                ab_phase.log, il_phase.log, treatment, args.reorders, args.seed
            ),
        }
        pairs[treatment] = {
            "ab": ab,
            "interleaving": il,
            "time_to_significance": tts,
            "curves": curves,
            "il_p": il_p,
        }
    ex = exploration_summary(phases[explore["name"]], problems, notes)
    cli_vs_api = compare_cli(phases, cli_reports, problems, notes)
    plot(args.plot, pairs)
    return {
        "data": args.data,
        "requests_per_experiment": args.requests,
        "list_length": args.n,
        "poll_every": args.poll,
        "seed": args.seed,
        "models": world.versions,
        "build": {**world.timings, **world.counts},
        "pairs": {
            t: {k: v for k, v in pair.items() if k not in ("curves", "il_p")}
            for t, pair in pairs.items()
        },
        "exploration": ex,
        "throughput": {
            k: {
                "requests": v.result.requests,
                "errors": v.result.errors,
                "seconds": v.result.seconds,
                "poll_seconds": v.poll_seconds,
                "polls": len(v.polls) - 1,
                "requests_per_second": v.requests_per_second,
                **latency(v.log),
            }
            for k, v in phases.items()
        },
        "cli_vs_api": cli_vs_api,
        "problems": problems,
        "notes": notes,
        "experiment_list": listing,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="synthetic:users=2000,items=400,seed=7")
    parser.add_argument("--requests", type=int, default=4000, help="requests per experiment")
    parser.add_argument("--seconds", type=float, default=240.0, help="time limit per experiment")
    parser.add_argument("--poll", type=int, default=250, help="read the report every K requests")
    parser.add_argument("--n", type=int, default=10, help="list length")
    parser.add_argument("--reorders", type=int, default=200, help="random orders of the logs")
    parser.add_argument("--no-subtle", action="store_true", help="skip full vs small-ranker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_online.json")
    parser.add_argument("--plot", type=Path, default=None, help="default docs/img/online_ab.png")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store here")
    parser.add_argument("--quick", action="store_true", help="500 users, 600 requests each")
    args = parser.parse_args(argv)
    if args.quick:
        args.data = "synthetic:users=500,items=200,seed=7"
        args.requests, args.poll, args.reorders = 600, 100, 50
        args.plot = args.plot or ROOT / "out" / "online_ab_quick.png"
    args.plot = args.plot or ROOT / "docs" / "img" / "online_ab.png"
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="sieve-online-") as tmp:
            results = run(args, Path(tmp))
    print_results(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(results), indent=2))
    for note in results["notes"]:
        console.print(f"[yellow]known gap[/] {note}", soft_wrap=True)
    for problem in results["problems"]:
        console.print(f"[red]MISMATCH[/] {problem}", soft_wrap=True)
    console.print(
        f"{results['seconds']:.0f}s; results {args.out}; plot {args.plot}; "
        f"{len(results['problems'])} unexplained mismatches between the service's reports "
        "and the simulator"
    )
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
