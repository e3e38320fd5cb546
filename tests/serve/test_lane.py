"""The live lane: at most `live_concurrency` funnel computations at once per
server process; a request that waits `live_wait_seconds` for its turn gets
a 503 with `Retry-After` and nothing else changes."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import threadpoolctl
from fastapi.testclient import TestClient

from sieve.serve.lane import Busy, Lane, limit_blas_threads
from sieve.serve.service import Service

MakeClient = Callable[..., TestClient]


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


@pytest.mark.parametrize("width", [1, 3])
def test_no_more_than_width_blocks_run_at_once(width: int) -> None:
    lane = Lane(width, wait_seconds=None)
    inside = 0
    most = 0
    done = 0
    guard = threading.Lock()
    go = threading.Barrier(8)

    def work() -> None:
        nonlocal inside, most, done
        go.wait()
        for _ in range(50):
            with lane.held():
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1
                    done += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= most <= width
    assert done == 8 * 50  # every waiter got its turn: none gave up
    assert lane.waiting == 0 and lane.refused == 0


def test_a_waiter_gives_up_after_the_wait_and_the_slot_is_free_again() -> None:
    lane = Lane(1, wait_seconds=0.01)
    with lane.held(), pytest.raises(Busy, match="live_concurrency"), lane.held():
        pass  # pragma: no cover - never entered
    assert lane.refused == 1
    with lane.held():  # released: the next request gets it at once
        pass


def test_a_width_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Lane(0, wait_seconds=None)


def test_a_request_that_waits_too_long_gets_503_with_retry_after(serve: MakeClient) -> None:
    client = serve(live_wait_seconds=0.05, answer_ttl_seconds=0)
    service = _service(client)
    first = client.get("/recommendations/u001", params={"n": 5})
    assert first.status_code == 200
    item = first.json()["items"][0]["id"]
    with service.live.lane.held():  # another computation holds the only slot
        busy = client.get("/recommendations/u001", params={"n": 5})
        session = client.post("/recommendations", json={"recent_items": [], "n": 5})
        similar = client.get(f"/items/{item}/similar", params={"n": 5})
        # what needs no computation is not held up
        assert client.get("/popular", params={"n": 5}).status_code == 200
        assert client.get("/health").status_code == 200
    for response in (busy, session, similar):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert "live_concurrency" in response.json()["detail"]
    assert service.live.lane.refused == 3
    scraped = client.get("/metrics").text
    assert "sieve_live_lane_refused 3.0" in scraped
    assert "sieve_live_lane_waiting 0.0" in scraped
    # the lane is free again: the same requests are answered
    assert client.get("/recommendations/u001", params={"n": 5}).status_code == 200
    assert client.get(f"/items/{item}/similar", params={"n": 5}).status_code == 200


def _waiting_for(lane: Lane, count: int) -> None:
    """Block until `count` submitters wait for the lane's slot (its counter,
    polled: the lane sets no event for it); fails after 10,000 polls."""
    pause = threading.Event()
    for _ in range(10_000):
        if lane.waiting >= count:
            return
        pause.wait(0.001)
    raise AssertionError(f"{lane.waiting} submitters waiting, expected {count}")


def test_waiting_requests_are_computed_as_one_block_each_getting_its_own_result() -> None:
    lane = Lane(1, wait_seconds=None)
    blocks: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        blocks.append(list(items))
        return [i * i for i in items]

    got: dict[int, int] = {}

    def ask(i: int) -> None:
        got[i] = lane.submit("f", i, square)

    with lane.held():  # a computation in progress: the others queue behind it
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        _waiting_for(lane, 6)
    for t in threads:
        t.join()
    assert got == {i: i * i for i in range(6)}
    assert sorted(i for b in blocks for i in b) == list(range(6))  # each computed once
    assert len(blocks) < 6 and lane.answered == 6 and lane.blocks == len(blocks)


def test_a_failing_request_fails_alone_and_keys_are_not_mixed() -> None:
    lane = Lane(1, wait_seconds=None)
    seen: list[tuple[str, list[int]]] = []

    def compute(key: str) -> Callable[[list[int]], list[int]]:
        def run(items: list[int]) -> list[int]:
            seen.append((key, list(items)))
            if 13 in items:
                raise ValueError("unlucky")
            return [i + 1 for i in items]

        return run

    got: dict[tuple[str, int], object] = {}

    def ask(key: str, i: int) -> None:
        try:
            got[key, i] = lane.submit(key, i, compute(key))
        except ValueError as e:
            got[key, i] = e

    with lane.held():
        asks = [("a", 1), ("a", 13), ("a", 3), ("b", 4)]
        threads = [threading.Thread(target=ask, args=a) for a in asks]
        for t in threads:
            t.start()
        _waiting_for(lane, len(asks))
    for t in threads:
        t.join()
    assert got["a", 1] == 2 and got["a", 3] == 4 and got["b", 4] == 5
    assert isinstance(got["a", 13], ValueError)
    assert all(len({k for k, _ in seen if k == key}) == 1 for key in "ab")
    assert not any(key == "a" and 4 in items for key, items in seen)  # b's item never in a's


def test_a_submitter_that_times_out_is_not_computed_later() -> None:
    lane = Lane(1, wait_seconds=0.01)
    calls: list[list[int]] = []

    def compute(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    with lane.held(), pytest.raises(Busy):
        lane.submit("k", 7, compute)
    assert lane.submit("k", 8, compute) == 8
    assert calls == [[8]] and lane.refused == 1


def _until(check: Callable[[], bool], what: str) -> None:
    """Block until `check()` holds (polled); fails after 10,000 polls."""
    pause = threading.Event()
    for _ in range(10_000):
        if check():
            return
        pause.wait(0.001)
    raise AssertionError(f"never happened: {what}")


def test_a_write_waits_for_the_computations_that_arrived_before_it_and_no_later_one() -> None:
    lane = Lane(1, wait_seconds=None)
    assert lane.yield_to_live(10.0) == 0.0  # nothing in progress: no wait
    first_go, later_go = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with lane.held():
            first_go.wait()
            order.append("first")

    def later(items: list[int]) -> list[int]:
        later_go.wait()
        order.append("later")
        return items

    def write() -> None:
        lane.yield_to_live(10.0)
        order.append("write")

    a = threading.Thread(target=first)
    a.start()
    _until(lambda: lane.blocks == 0 and lane.waiting == 0 and bool(lane._open), "first holds")
    w = threading.Thread(target=write)
    w.start()
    _until(lambda: lane.yielding == 1, "the write waits")
    c = threading.Thread(target=lane.submit, args=("k", 1, later))
    c.start()  # arrives after the write: queued behind the first computation
    _until(lambda: lane.waiting == 1, "the later computation queues")
    assert order == []
    first_go.set()
    w.join(10)  # the write goes once the first is done, with the later still computing
    assert order == ["first", "write"] and not w.is_alive()
    later_go.set()
    c.join(10)
    a.join(10)
    assert order == ["first", "write", "later"]
    assert lane.yields == 1 and lane.yield_seconds > 0 and lane.yielding == 0


def test_a_write_waits_no_longer_than_its_bound_and_not_at_all_when_told() -> None:
    clocks = _Clocks()
    lane = Lane(1, wait_seconds=None, wall_clock=lambda: clocks.wall)
    with lane.held():
        assert lane.yield_to_live(0.0) == 0.0  # 0: batches never wait
        assert lane.yields == 0
        lane.yield_to_live(0.001)  # the computation never ends within the bound
    assert lane.yields == 1 and lane.yielding == 0
    assert not lane._open  # every computation's ticket is closed, a refused one's too
    busy = Lane(1, wait_seconds=0.001)
    with busy.held(), pytest.raises(Busy):
        busy.submit("k", 1, lambda items: items)
    assert not busy._open and busy.yield_to_live(10.0) == 0.0


def test_an_event_batch_lets_the_live_answer_in_progress_finish_first(serve: MakeClient) -> None:
    client = serve(ingest_yield_seconds=10.0, answer_ttl_seconds=0)
    service = _service(client)
    lane = service.live.lane
    event = {"user_id": "u001", "item_id": "i001", "type": "view", "id": "yield-1"}
    done: list[int] = []

    def post() -> None:
        done.append(client.post("/events", json={"events": [event]}).status_code)

    def stored() -> bool:
        frame = service.store.events_frame()
        return bool((frame["event_id"] == "yield-1").any())

    with lane.held():  # a live computation in progress
        writer = threading.Thread(target=post)
        writer.start()
        _until(lambda: lane.yielding == 1, "the batch waits")
        assert not stored() and done == []
    writer.join(10)
    assert done == [200] and stored()
    scraped = client.get("/metrics").text
    assert _gauge(scraped, "sieve_ingest_yields") == 1.0
    assert _gauge(scraped, "sieve_ingest_yield_seconds") > 0.0
    # 0: a batch goes at once, whatever is computing
    eager = serve(ingest_yield_seconds=0.0)
    with _service(eager).live.lane.held():
        event["id"] = "yield-2"
        assert eager.post("/events", json={"events": [event]}).status_code == 200
    assert _service(eager).live.lane.yields == 0


class _Clocks:
    """A wall clock and a thread CPU clock that move only when told."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 7.0

    def spend(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def test_the_lane_adds_up_the_wall_and_cpu_time_of_its_computations() -> None:
    clocks = _Clocks()
    lane = Lane(1, wait_seconds=None, wall_clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)

    def compute(items: list[int]) -> list[int]:
        clocks.spend(0.010, 0.004)  # waited 6 ms of its 10 ms for the interpreter
        return items

    assert lane.submit("k", 1, compute) == 1
    with lane.held():
        clocks.spend(0.003, 0.003)  # an explained answer, all its own CPU
    clocks.spend(5.0, 1.0)  # time outside any computation does not count
    with pytest.raises(ValueError), lane.held():
        clocks.spend(0.002, 0.001)
        raise ValueError("a failed computation still took its time")
    assert lane.seconds == pytest.approx(0.015)
    assert lane.cpu_seconds == pytest.approx(0.008)


def test_concurrent_live_answers_in_one_block_equal_the_answers_alone(
    serve: MakeClient,
) -> None:
    client = serve(answer_ttl_seconds=0)
    service = _service(client)
    users = [f"u{k:03d}" for k in range(1, 9)]
    alone = {u: [i.id for i in service.recommend_user(u, 10, log=False).items] for u in users}
    together: dict[str, list[str]] = {}

    def ask(user: str) -> None:
        together[user] = [i.id for i in service.recommend_user(user, 10, log=False).items]

    lane = service.live.lane
    before = lane.blocks
    with lane.held():
        threads = [threading.Thread(target=ask, args=(u,)) for u in users]
        for t in threads:
            t.start()
        _waiting_for(lane, len(users))
    for t in threads:
        t.join()
    assert together == alone
    assert lane.blocks - before < len(users)  # some were answered together
    scraped = client.get("/metrics").text
    assert f"sieve_live_lane_computations {float(lane.blocks)}" in scraped
    assert f"sieve_live_lane_answered {float(lane.answered)}" in scraped
    # the computations' time, read at the scrape: CPU of the computing thread within its wall time
    wall, cpu = (_gauge(scraped, f"sieve_live_lane_{name}") for name in ("seconds", "cpu_seconds"))
    assert 0.0 < cpu <= wall + 1e-3
    assert wall <= lane.seconds and cpu <= lane.cpu_seconds


def _gauge(scraped: str, name: str) -> float:
    """The value of an unlabelled gauge in a Prometheus text scrape."""
    (value,) = (line.split()[1] for line in scraped.splitlines() if line.startswith(f"{name} "))
    return float(value)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_server_process_runs_blas_on_the_threads_its_settings_give(
    serve: MakeClient, threads: int
) -> None:
    """One live computation at a time per process: NumPy's and SciPy's BLAS
    get `blas_threads` threads (a product large enough to thread took every
    core from the event loop), for the process's life; 0 leaves the
    library's default. (A BLAS threaded by OpenMP, as FAISS's own, keeps a
    count per thread, which FAISS sets itself: `AnnConfig.search_threads`.)"""

    def counts() -> list[int]:
        return [
            i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and i.get("threading_layer") == "pthreads"
        ]

    before = counts()
    try:
        client = serve(blas_threads=threads)  # its lifespan runs on a thread of its own
        assert before and set(counts()) == {threads}
        assert client.get("/recommendations/u001", params={"n": 5}).status_code == 200
        serve(blas_threads=0)
        assert set(counts()) == {threads}  # left as it was
    finally:
        limit_blas_threads(before[0])
