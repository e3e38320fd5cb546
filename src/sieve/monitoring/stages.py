"""Per-stage timings of the funnel (retrieval, ranking, rerank, explore, …).

The funnel calls `observe_stage(name, seconds)` after each stage. It does
nothing until a sink is registered (`add_stage_sink`): the offline paths
(training, evaluation, `sieve batch`) pay one empty loop per stage. A serving
app registers its metrics' sink for the lifetime of its lifespan.

No context variables: the sinks are process-wide, so while two apps serve in
one process (tests do that) each app's histogram also counts the other's
stages. A real deployment runs one app per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

#: A receiver of stage timings: (stage name, seconds).
StageSink = Callable[[str, float], None]

#: The stage names the funnel and the engine report.
STAGES = ("retrieval", "ranking", "rerank", "backfill", "explore")

_sinks: tuple[StageSink, ...] = ()
_lock = threading.Lock()


def observe_stage(name: str, seconds: float, answers: int = 1) -> None:
    """Report that stage `name` took `seconds` for `answers` answers computed
    together (a block of the offline or precompute path): each answer is one
    observation of its share, so the histogram stays per answer (a no-op
    without a sink)."""
    if answers < 1:
        return
    share = seconds / answers
    for sink in _sinks:
        for _ in range(answers):
            sink(name, share)


def add_stage_sink(sink: StageSink) -> Callable[[], None]:
    """Send every stage timing to `sink` too; returns the function that stops it.

    The tuple of sinks is replaced, never mutated, so `observe_stage` reads it
    without a lock."""
    global _sinks
    with _lock:
        _sinks = (*_sinks, sink)

    def remove() -> None:
        global _sinks
        with _lock:
            kept = list(_sinks)
            if sink in kept:
                kept.remove(sink)
            _sinks = tuple(kept)

    return remove


def listening() -> bool:
    """Whether any sink is registered."""
    return bool(_sinks)


class StageTimer:
    """`with StageTimer("explore"): ...` reports the block's wall time."""

    __slots__ = ("name", "start")

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = 0.0

    def __enter__(self) -> StageTimer:
        self.start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        observe_stage(self.name, time.perf_counter() - self.start)


__all__ = ["STAGES", "StageSink", "StageTimer", "add_stage_sink", "listening", "observe_stage"]
