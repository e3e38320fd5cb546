"""The dashboard in headless Chromium against a real server with live traffic.

A `sieve serve` process on a free port serves the trained funnel; the test
sends recommendation requests and clicks over HTTP, opens /dashboard, types
the read key, and checks that the page shows the API's numbers, draws its
charts, inspects a user, refreshes by itself, shows API errors in the page,
and logs no console or page error. Screenshots go to the test's tmp dir and,
when `SIEVE_SCREENSHOTS` names a folder, there too (to refresh docs/img).

Skipped, saying why, without Debian's Chromium (/usr/bin/chromium) or the
`playwright` package (the dev extra; its own browser download is never used).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve.conftest import API_KEYS, KEYS
from sieve.serve.launch import free_port, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
#: Read now: the tests' fixture clears SIEVE_* variables before each test.
SCREENSHOTS = os.environ.get("SIEVE_SCREENSHOTS")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Recommendation requests, list length and clicks of the simulated traffic.
REQUESTS, N, CLICKS = 12, 8, 5

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
if not CHROMIUM.is_file():
    pytest.skip(f"Debian's Chromium is not at {CHROMIUM}", allow_module_level=True)


@dataclass
class Live:
    """A running server and the traffic sent to it."""

    url: str
    users: list[str]
    impressions: int


def _auth(scope: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[scope]}


def _start(store_url: str, model_dir: Path, env: dict[str, str]) -> tuple[Any, str]:
    """A `sieve serve` process on a free port that sees no developer SIEVE_*
    setting, only `env`; returns it and its base URL."""
    args = ["--store", store_url, "--model-dir", str(model_dir), "--no-access-log"]
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("SIEVE_"):
                mp.delenv(name)
        port = free_port()
        proc = start_server(args, port=port, env=env, ready_path="/health", timeout=60)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def live(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server on a copy of the trained store, with REQUESTS lists served
    and CLICKS clicks on them recorded."""
    root = tmp_path_factory.mktemp("dashboard-live")
    db = root / "served.db"
    shutil.copy(trained.db, db)
    keys = json.dumps([k.model_dump(mode="json") for k in API_KEYS])
    proc, url = _start(
        f"sqlite:///{db}",
        trained.model_dir,
        {"SIEVE_API_KEYS": keys, "SIEVE_MODEL_POLL_SECONDS": "0"},
    )
    try:
        counts = trained.raw.events["user_id"].value_counts()
        users = [str(u) for u in counts[(counts >= 25) & (counts < 100)].index[:4]]
        shown = 0
        clicks: list[dict[str, Any]] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for k in range(REQUESTS):
                r = client.get(f"/recommendations/{users[k % 4]}?n={N}", headers=_auth("read"))
                r.raise_for_status()
                body = r.json()
                shown += len(body["items"])
                if k < CLICKS:
                    clicks.append(
                        {
                            "id": uuid.uuid4().hex,
                            "user_id": body["user_id"],
                            "item_id": body["items"][k % N]["id"],
                            "type": "click",
                            "request_id": body["request_id"],
                        }
                    )
            r = client.post("/events", json={"events": clicks}, headers=_auth("write"))
            r.raise_for_status()
        assert shown == REQUESTS * N
        yield Live(url=url, users=users, impressions=shown)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _kpis(url: str) -> dict[str, Any]:
    r = httpx.get(
        f"{url}/dashboard/api/kpis?minutes=60&bucket_seconds=60", headers=_auth("read"), timeout=30
    )
    r.raise_for_status()
    totals: dict[str, Any] = r.json()["totals"]
    return totals


def _save(target: Any, tmp_path: Path, name: str) -> None:
    """A screenshot of a page (all of it) or of one element, in tmp_path and,
    when set, in $SIEVE_SCREENSHOTS."""
    if isinstance(target, sync_api.Page):
        target.screenshot(path=str(tmp_path / name), full_page=True)
    else:
        target.screenshot(path=str(tmp_path / name))
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, folder / name)


def _tile(page: Any, name: str) -> str:
    value: str = page.get_attribute(f'[data-kpi="{name}"]', "data-value")
    return value


def test_dashboard_shows_live_numbers(live: Live, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        page.goto(f"{live.url}/dashboard")
        # no key yet and reads are not open: the page asks for one, fetching nothing
        page.wait_for_selector("#banner:not([hidden])")
        assert "API key" in page.inner_text("#banner")
        page.fill("#api-key", KEYS["read"])
        page.click("#key-save")
        page.wait_for_function(
            f"document.querySelector('[data-kpi=impressions]').dataset.value === "
            f"'{live.impressions}'",
            timeout=15_000,
        )

        totals = _kpis(live.url)  # the API's numbers, now: the page shows the same
        assert totals["impressions"] == live.impressions and totals["clicks"] == CLICKS
        assert totals["requests"] == REQUESTS
        for name in ("impressions", "requests", "clicks", "users"):
            assert _tile(page, name) == str(totals[name]), name
            assert page.inner_text(f'[data-kpi="{name}"]') == f"{totals[name]:,}"
        assert float(_tile(page, "ctr")) == pytest.approx(totals["ctr"])
        assert page.inner_text('[data-kpi="ctr"]') == f"{totals['ctr'] * 100:.2f}%"
        assert _tile(page, "events") == str(sum(totals["events"].values()))
        assert page.is_hidden("#banner")

        # the charts are drawn: a line per series over the buckets, with points
        # above the zero line where traffic was; CTR only where lists were shown
        lines = page.eval_on_selector_all(
            'svg[data-chart="traffic"] polyline.series', "ls => ls.map(l => l.points.length)"
        )
        assert len(lines) == 3 and min(lines) >= 2, lines
        drawn = page.eval_on_selector_all(
            'svg[data-chart="traffic"] circle.pt', "cs => cs.map(c => Number(c.getAttribute('cy')))"
        )
        assert len(drawn) >= 3 and min(drawn) < max(drawn)
        ctr = page.eval_on_selector_all(
            'svg[data-chart="ctr"] circle.pt title', "ts => ts.map(t => t.textContent)"
        )
        assert len(ctr) >= 1 and all(t.startswith("CTR at ") for t in ctr), ctr
        # the CTR is one line through its points, across buckets without lists
        ctr_lines = page.eval_on_selector_all(
            'svg[data-chart="ctr"] polyline.series', "ls => ls.map(l => l.points.length)"
        )
        assert ctr_lines == [len(ctr)], (ctr_lines, ctr)
        # the traffic all lies in the window's last minute: the buckets follow
        # it (finer than the 1-hour window's 60 s), not a spike at the edge
        assert int(page.get_attribute("#traffic", "data-bucket-seconds")) < 60
        assert page.get_attribute("#traffic", "data-since")
        # the models card names the serving version
        assert page.locator("#models tr[data-version] .badge.good").first.inner_text() == "serving"
        # the random slice card: the policy's CTR as the slices API gives it
        # (no random slice is served here: its tile is empty)
        page.wait_for_selector('[data-slice="policy"]')
        assert page.get_attribute('[data-slice="random"]', "data-value") == ""
        assert float(page.get_attribute('[data-slice="policy"]', "data-value") or "nan") >= 0

        _save(page, tmp_path, "dashboard-live.png")

        # the user inspector: a user's list with reasons, their events and features
        user = live.users[0]
        page.fill("#user-id", user)
        page.fill("#user-n", "6")
        page.click("#inspect")
        page.wait_for_selector("#user-recs tbody tr")
        rows = page.locator("#user-recs tbody tr")
        assert rows.count() == 6
        assert all(t.strip() for t in rows.locator("td:nth-child(4)").all_inner_texts())
        assert page.locator("#user-events tbody tr").count() == 20
        assert "known user" in page.inner_text("#inspector")
        _save(page.locator("#inspector"), tmp_path, "dashboard-inspector.png")

        # a preview is not traffic: after the next refresh the count is unchanged
        before = int(page.evaluate("document.body.dataset.refreshes"))
        page.wait_for_function(
            f"Number(document.body.dataset.refreshes) > {before}", timeout=15_000
        )
        shown = page.evaluate("document.querySelector('[data-kpi=impressions]').dataset.value")
        assert shown == str(live.impressions)
        assert _kpis(live.url)["impressions"] == live.impressions
        _save(page, tmp_path, "dashboard.png")
    finally:
        context.close()
    assert not errors, errors


def test_dashboard_shows_api_errors_in_the_page(live: Live, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(f"{live.url}/dashboard")
        page.fill("#api-key", "sk_not_a_key")
        page.click("#key-save")
        # the panels load in parallel; the refresh state is set once all have answered
        page.wait_for_function(
            "(() => { const s = document.getElementById('refresh-state');"
            " return s.classList.contains('failed') && /update/.test(s.textContent); })()"
        )
        assert "HTTP 401" in page.inner_text("#traffic .error")
        assert "invalid API key" in page.inner_text("#models .error")
        # the inspector shows its own error; the page keeps working
        page.fill("#user-id", live.users[0])
        page.click("#inspect")
        page.wait_for_selector("#inspector .error:not([hidden])")
        assert "HTTP 401" in page.inner_text("#inspector .error")
        _save(page, tmp_path, "dashboard-errors.png")
        # with a good key the errors go away
        page.fill("#api-key", KEYS["read"])
        page.click("#key-save")
        page.wait_for_selector("#traffic .error", state="hidden")
        assert page.is_hidden("#models .error")
    finally:
        context.close()
    assert not page_errors, page_errors  # failures are shown, never thrown


def _experiments(now: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Experiments and reports in the contract of `GET /experiments` and
    `GET /experiments/{name}/report`: an A/B test with a significant lift, an
    interleaving test and one whose report fails."""
    arm = {"name": "control", "share": 0.5, "model_version": None, "config": None, "shadow": False}
    experiments = [
        {
            "name": "ranker-v2",
            "layer": "ranking",
            "kind": "ab",
            "status": "running",
            "variants": [arm, {**arm, "name": "treatment", "model_version": "abc123"}],
            "created_at": now - 3600,
            "stopped_at": None,
        },
        {
            "name": "interleave-1",
            "layer": "compare",
            "kind": "interleaving",
            "status": "stopped",
            "variants": [{**arm, "name": "old"}, {**arm, "name": "new"}],
            "created_at": now - 86400,
            "stopped_at": now - 7200,
        },
        {
            "name": "broken",
            "layer": "other",
            "kind": "ab",
            "status": "running",
            "variants": [{**arm, "share": 1.0}],
            "created_at": now - 60,
            "stopped_at": None,
        },
    ]

    def ci(estimate: float, half: float) -> dict[str, float]:
        return {"estimate": estimate, "low": estimate - half, "high": estimate + half}

    reports = {
        "ranker-v2": {
            "experiment": "ranker-v2",
            "kind": "ab",
            "status": "running",
            "arms": [
                {
                    "arm": "control",
                    "units": 1000,
                    "impressions": 20000,
                    "clicks": 600,
                    "ctr": ci(0.03, 0.0024),
                    "conversion_rate": ci(0.012, 0.002),
                    "revenue_per_user": None,
                },
                {
                    "arm": "treatment",
                    "units": 1010,
                    "impressions": 20100,
                    "clicks": 724,
                    "ctr": ci(0.036, 0.0026),
                    "conversion_rate": ci(0.013, 0.002),
                    "revenue_per_user": None,
                },
            ],
            "comparisons": [
                {
                    "metric": "ctr",
                    "control": "control",
                    "treatment": "treatment",
                    "estimate": 0.006,
                    "low": 0.0026,
                    "high": 0.0094,
                    "relative": 0.2,
                    "p_value": 0.0004,
                    "always_valid_p": 0.01,
                    "significant": True,
                }
            ],
            "srm": {"p_value": 0.82, "ok": True, "message": "shares match the design"},
            "interleaving": None,
            "shadows": [
                {
                    "shadow": "ghost",
                    "key": "ranker-v2/ghost",
                    "model_version": "def456",
                    "requests": 1800,
                    "failed": 3,
                    "skipped": 0,
                    "mean_overlap": 0.6,
                    "novel_share": 0.4,
                    "shared_slots": 12000,
                    "served_only_slots": 8000,
                    "ctr_shared": 0.035,
                    "ctr_served_only": 0.025,
                    "by_arm": {},
                }
            ],
            "verdict": "treatment raises CTR by 20% (95% CI +8.7% to +31%)",
        },
        "interleave-1": {
            "experiment": "interleave-1",
            "kind": "interleaving",
            "status": "stopped",
            "arms": [],
            "comparisons": [],
            "srm": None,
            "interleaving": {"wins": {"old": 420, "new": 380}, "ties": 200, "p_value": 0.16},
            "verdict": "no significant preference between A and B",
        },
    }
    return experiments, reports


def test_dashboard_renders_experiments_and_drift(live: Live, browser: Any, tmp_path: Path) -> None:
    """The experiment and drift cards against the endpoints' contract (answers
    stubbed in the browser, so the test does not depend on their data)."""
    import time

    experiments, reports = _experiments(time.time())
    drift = [
        {
            "check": "item_popularity",
            "value": 0.31,
            "threshold": 0.2,
            "fired": True,
            "detail": "PSI of served items vs the training snapshot",
            "checked_at": time.time() - 30,
        },
        {
            "check": "ctr_drop",
            "value": None,
            "threshold": 0.3,
            "fired": False,
            "detail": "too few impressions",
            "checked_at": time.time() - 30,
        },
    ]
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.add_init_script(
        f"localStorage.setItem('sieve.dashboard.apiKey', {json.dumps(KEYS['read'])})"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

    def meta(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        body["features"] = {"experiments": True, "monitoring": True}
        route.fulfill(response=answer, json=body)

    def report(route: Any) -> None:
        name = route.request.url.rsplit("/", 2)[-2]
        if name in reports:
            route.fulfill(json=reports[name])
        else:
            route.fulfill(
                status=500, json={"detail": "internal error; the server log has the details"}
            )

    page.route("**/dashboard/api/meta", meta)
    page.route("**/experiments", lambda route: route.fulfill(json=experiments))
    page.route("**/experiments/*/report", report)
    page.route("**/monitoring/drift", lambda route: route.fulfill(json=drift))
    try:
        page.goto(f"{live.url}/dashboard")
        page.wait_for_selector('[data-experiment="ranker-v2"] [data-verdict]')
        card = page.locator('[data-experiment="ranker-v2"]')
        assert card.locator("[data-verdict]").inner_text() == reports["ranker-v2"]["verdict"]
        assert card.locator("tr[data-arm]").count() == 2
        assert "3.60% [3.34%, 3.86%]" in card.locator('tr[data-arm="treatment"]').inner_text()
        chart = card.locator('svg[data-chart="ctr-ranker-v2"]')
        assert (
            chart.locator("circle.pt").count() == 2 and chart.locator("line.whisker").count() == 6
        )
        assert chart.locator("line.ref").count() == 1
        comparison = card.locator("tbody tr", has_text="treatment vs control").inner_text()
        assert "+0.60 pp [+0.26 pp, +0.94 pp]" in comparison and "+20.0%" in comparison
        assert "<0.001" in comparison and "0.010" in comparison and "significant" in comparison
        assert "Sample ratio" in card.inner_text() and "p = 0.820" in card.inner_text()
        shadow = card.locator('tr[data-shadow="ghost"]').inner_text()
        for shown in ("def456", "1,800", "3 / 0", "60.00%", "40.00%", "3.50% of 12,000"):
            assert shown in shadow, shadow
        assert "2.50% of 8,000" in shadow

        interleaving = page.locator('[data-experiment="interleave-1"]').inner_text()
        # named by arm, whatever the arms are called
        assert "old wins 420 · new wins 380 · ties 200 · p = 0.160" in interleaving
        assert "No CTR estimate yet" in interleaving
        broken = page.locator('[data-experiment="broken"] .error').inner_text()
        assert "HTTP 500" in broken and "internal error" in broken
        # running first, newest first: broken, ranker-v2, then the stopped one
        order = page.eval_on_selector_all(
            "[data-experiment]", "es => es.map(e => e.dataset.experiment)"
        )
        assert order == ["broken", "ranker-v2", "interleave-1"]

        assert page.locator("#monitoring tr[data-check]").count() == 2
        fired = page.locator('#monitoring tr[data-check="item_popularity"]').inner_text()
        assert "fired" in fired and "0.31" in fired
        assert "–" in page.locator('#monitoring tr[data-check="ctr_drop"]').inner_text()
        _save(page.locator("#experiments"), tmp_path, "dashboard-experiments.png")
    finally:
        context.close()
    # the one failed report is the only console error (Chromium logs the 500)
    assert all("status of 500" in e for e in errors), errors
    assert len(errors) <= 1, errors


def test_dashboard_shows_a_simulated_experiment(trained: Any, browser: Any, tmp_path: Path) -> None:
    """`sieve simulate`'s users drive a real server running an A/B test; the
    page's experiment card shows the report's live numbers for each arm."""
    from sieve.experiments.online import ExperimentBook
    from sieve.simulator import Simulator, world_from_spec
    from sieve.storage import open_store

    db = tmp_path / "sim.db"
    shutil.copy(trained.db, db)
    store_url = f"sqlite:///{db}"
    with open_store(store_url) as store:
        ExperimentBook(store).create(
            {
                "name": "sim-ab",
                "variants": [
                    {"name": "control", "share": 0.5},
                    {"name": "explore", "share": 0.5, "config": {"exploration_slots": 2}},
                ],
            }
        )
    proc, url = _start(
        store_url, trained.model_dir, {"SIEVE_OPEN_READ": "true", "SIEVE_OPEN_WRITE": "true"}
    )
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        with Simulator(world_from_spec("synthetic:users=200,items=150,seed=1"), url, n=8) as sim:
            result = sim.run(requests=150, seconds=60)
        assert result.errors == 0
        report = httpx.get(f"{url}/experiments/sim-ab/report", timeout=30).json()
        page.goto(f"{url}/dashboard")
        for arm in ("control", "explore"):
            row = page.locator(f'[data-experiment="sim-ab"] tr[data-arm="{arm}"]')
            row.wait_for(timeout=15_000)
            cells = row.locator("td").all_inner_texts()
            expected = next(a for a in report["arms"] if a["arm"] == arm)
            seen = result.arms[f"sim-ab/{arm}"]
            # page = report = what the simulator saw
            assert expected["impressions"] == seen.impressions
            assert expected["clicks"] == seen.clicks
            assert cells[2].replace(",", "") == str(seen.impressions)
            assert cells[3].replace(",", "") == str(seen.clicks)
        verdict = page.inner_text('[data-experiment="sim-ab"] [data-verdict]')
        assert verdict == report["verdict"]
        _save(page.locator("#experiments"), tmp_path, "dashboard-experiment.png")
    finally:
        context.close()
        stop_server(proc)
    assert not errors, errors


def test_dashboard_link_opens_the_user_inspector(live: Live, browser: Any) -> None:
    """`…/dashboard#user=ID` opens the inspector on ID; inspecting a user
    puts their link in the address."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{live.url}/dashboard")
        page.fill("#api-key", KEYS["read"])
        page.click("#key-save")
        user = live.users[1]
        page.goto(f"{live.url}/dashboard#user={user}")
        page.wait_for_selector("#user-recs tbody tr", timeout=15_000)
        assert page.get_attribute("#inspector", "data-user") == user
        assert page.input_value("#user-id") == user
        other = live.users[2]
        page.fill("#user-id", other)
        page.click("#inspect")
        page.wait_for_function(
            f"document.querySelector('#inspector').dataset.user === '{other}'", timeout=15_000
        )
        assert page.evaluate("window.location.hash") == f"#user={other}"
    finally:
        context.close()
