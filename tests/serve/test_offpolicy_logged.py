"""Off-policy evaluation on a real store's logged lists (SQLite and PostgreSQL):
a seeded log with a random slice and a deterministic policy, clicks drawn from
a synthetic world's known probabilities under a position-based model, read
back page by page, and a candidate's estimate against its exact CTR."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.data.io import load_data
from sieve.data.records import Event, Impression, ImpressionItem
from sieve.ranking.query import UserLog
from sieve.simulator import world_from_spec
from sieve.storage import open_store
from sieve.training.offpolicy import CandidateError, evaluate_logged, parse_candidate
from sieve.training.snapshot import import_data

SPEC = "synthetic:users=120,items=60,seed=3"
N, REQUESTS, START = 5, 700, 1_700_000_000.0
THETA = 1.0 / np.log2(np.arange(N) + 2)
WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 4.0, "rating": 1.0}


def _log(url: str) -> None:
    """The synthetic history, then REQUESTS served lists after it: half drawn
    uniformly from the catalog (propensity N/60, source random), half the
    same five popular items (propensity 1); PBM clicks citing the requests."""
    world = world_from_spec(SPEC)
    rng = np.random.default_rng(11)
    n_items = len(world.item_ids)
    imps: list[Impression] = []
    clicks: list[Event] = []
    for r in range(REQUESTS):
        u = int(rng.integers(len(world.user_ids)))
        random = bool(r % 2)
        items = rng.choice(n_items, N, replace=False) if random else np.arange(N)
        rid = uuid.uuid4().hex
        at = datetime.fromtimestamp(START + r, UTC)
        imps.append(
            Impression(
                request_id=rid,
                user_id=str(world.user_ids[u]),
                timestamp=at,
                model_version="v1",
                items=[
                    ImpressionItem(
                        item_id=str(world.item_ids[i]),
                        position=k,
                        score=0.0,
                        sources=["random"] if random else ["popular"],
                        propensity=N / n_items if random else 1.0,
                    )
                    for k, i in enumerate(items)
                ],
            )
        )
        p = world.click_probability(np.full(N, u), items) * THETA
        for k in np.flatnonzero(rng.random(N) < p):
            clicks.append(
                Event(
                    id=uuid.uuid4().hex,
                    user_id=str(world.user_ids[u]),
                    item_id=str(world.item_ids[items[k]]),
                    type="click",
                    timestamp=at,
                    request_id=rid,
                )
            )
    with open_store(url) as store:
        import_data(store, load_data(SPEC))
        store.log_impressions(imps)
        store.append_events(clicks)


@pytest.fixture
def logged_url(store_url: str) -> str:
    _log(store_url)
    return store_url


@pytest.fixture(scope="module")
def sqlite_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite log shared by the read-only tests of this module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('offpolicy') / 'log.db'}"
    _log(url)
    return url


def test_logged_estimate_contains_the_exact_ctr(logged_url: str) -> None:
    world = world_from_spec(SPEC)
    with open_store(logged_url) as store:
        cand = parse_candidate("popular", store, None, WEIGHTS, before=START)
        res = evaluate_logged(store, [cand], START, START + REQUESTS, ["click"], batch=170)
        again = evaluate_logged(store, [cand], START, START + REQUESTS, ["click"], batch=5000)
        # the exact CTR of the candidate's lists on the random slice's requests
        page = store.logged_slots(START, START + REQUESTS, ["click"], None, REQUESTS)
        events = store.events_frame()
    assert res.slice == "random" and res.random_requests == REQUESTS // 2
    assert res.requests == REQUESTS
    requests = (
        page[page["sources"].map(lambda s: "random" in s)]
        .groupby("request_id", sort=False)
        .agg(user_id=("user_id", "first"), timestamp=("timestamp", "first"), n=("item_id", "size"))
        .reset_index()
    )
    users = UserLog(events[events["timestamp"] < START + REQUESTS])
    lists = cand.lists(requests, users)
    index = {str(i): k for k, i in enumerate(world.item_ids)}
    uidx = {str(u): k for k, u in enumerate(world.user_ids)}
    truth = np.mean(
        [
            float(
                (
                    world.click_probability(np.full(len(row), uidx[u]), [index[i] for i in row])
                    * THETA[: len(row)]
                ).sum()
            )
            / len(row)
            for u, row in zip(requests["user_id"], lists, strict=True)
            if row  # a user who has seen every item gets no list: not estimated either
        ]
    )
    (est,) = res.candidates.values()
    assert not isinstance(est, str)
    for name in ("ips", "snips", "dr"):
        iv = est.estimates[name].interval
        assert iv.low <= truth <= iv.high, (name, iv, truth)
    # position bias measured on the random slice (350 lists: only its shape)
    assert res.theta[0] == 1.0 and np.all(np.diff(res.theta) <= 0) and res.theta[-1] < 0.9
    # pages of 170 requests give the same answer as one page
    (one,) = again.candidates.values()
    assert not isinstance(one, str)
    assert one.estimates["snips"].estimate == pytest.approx(est.estimates["snips"].estimate)
    assert res.policy_ctr is not None and res.random_ctr is not None


def test_all_traffic_warns_of_thin_support(sqlite_log: str) -> None:
    with open_store(sqlite_log) as store:
        cand = parse_candidate("ease", store, None, WEIGHTS, before=START)
        res = evaluate_logged(store, [cand], START, START + REQUESTS, ["click"], slice="all")
    (est,) = res.candidates.values()
    assert not isinstance(est, str)
    assert res.slice == "all" and any("all traffic" in w for w in res.warnings)
    # the policy's lists are always the same five items: a personal candidate's
    # items were rarely shown, and the result says so
    assert est.support < 0.8 and "thin support" in est.warnings[0]


def test_candidate_errors_are_clear(sqlite_log: str, tmp_path: Path) -> None:
    with open_store(sqlite_log) as store:
        with pytest.raises(CandidateError, match="no events before the window"):
            parse_candidate("popular", store, None, WEIGHTS, before=0.0)
        with pytest.raises(CandidateError, match="needs --model-dir"):
            parse_candidate("nope", store, None, WEIGHTS, before=START)
        with pytest.raises(CandidateError, match="registered version"):
            parse_candidate("version:v9", store, tmp_path, WEIGHTS, before=START)


def test_cli_logged_spec(sqlite_log: str, tmp_path: Path) -> None:
    url = sqlite_log
    out = tmp_path / "ope.json"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            f"logged:{url}",
            "--models",
            "popular",
            "--since",
            datetime.fromtimestamp(START, UTC).isoformat(),
            "--until",
            str(START + REQUESTS),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SNIPS" in result.output and "random slice CTR" in result.output
    body = json.loads(out.read_text())
    assert set(body["candidates"]) == {"popular"}
    assert body["random_requests"] == REQUESTS // 2
    bad = runner.invoke(app, ["evaluate", "--data", f"logged:{url}", "--since", "yesterday"])
    assert bad.exit_code == 2 and "not a time" in bad.output


def test_simulate_offpolicy_in_process(tmp_path: Path) -> None:
    """`sieve simulate --offpolicy A:B`: A's log, B estimated from it, B run
    live, with no service; the estimate is near B's measured CTR."""
    out = tmp_path / "sim.json"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            "synthetic:users=150,items=80,seed=2",
            "--offpolicy",
            "popular:itemknn",
            "--reps",
            "1",
            "--requests",
            "8000",
            "--n",
            "5",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())
    assert row["candidate"] == "itemknn" and row["support"] > 0.9
    half = (row["high"] - row["low"]) / 2
    assert abs(row["estimate"] - row["online"]) < 2 * half
    bad = CliRunner().invoke(app, ["simulate", "--offpolicy", "popular"])
    assert bad.exit_code == 2 and "LOGGING:CANDIDATE" in bad.output
