"""The live lane: at most `live_concurrency` funnel computations at once per
server process; a request that waits `live_wait_seconds` for its turn gets
a 503 with `Retry-After` and nothing else changes."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from sieve.serve.lane import Busy, Lane
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
    with lane.held():
        with pytest.raises(Busy, match="live_concurrency"):
            with lane.held():
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
