"""Run one model's work so that its failure cannot take the evaluation down.

`run_guarded(fn, *args, isolate=...)` returns an `Outcome`: the value, or the
reason the call failed. In process it catches exceptions (a memory budget
refusal included); isolated, it runs `fn` in a fresh worker process (the
`forkserver` start method where there is one, else `spawn`: no copy of the
parent's threads or locks), so a segmentation fault or an out-of-memory kill
of the worker becomes a reason like "the worker process died: SIGSEGV" and
the parent carries on with the next model. Warnings of the `ModelNotice`
kind raised during the call (a model switching to a leaner variant) come
back with the outcome either way.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from sieve.models.memory import ModelNotice, memory_budget

#: Seconds between liveness checks of a worker while waiting for its answer.
_POLL_SECONDS = 0.5
#: Modules the forkserver imports once, so each worker starts warm.
_PRELOAD = [
    "sieve.evaluate.protocol",
    "sieve.models.popularity",
    "sieve.models.itemknn",
    "sieve.models.ease",
    "sieve.models.factorization",
]


@dataclass
class Outcome:
    """A guarded call's value, or why there is none."""

    value: Any = None
    error: str | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], budget: int | None
) -> tuple[Any, str | None, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelNotice)
        try:
            with memory_budget(budget):
                value = fn(*args)
            error = None
        except MemoryError as e:  # a budget refusal, or an allocation that failed
            value, error = None, f"{type(e).__name__}: {e}" if str(e) else "out of memory"
        except Exception as e:
            value, error = None, _describe(e)
    notices = [str(w.message) for w in caught if issubclass(w.category, ModelNotice)]
    return value, error, notices


def _describe(e: BaseException) -> str:
    """The exception and the line of sieve code it came from."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "sieve" in f.filename]
    where = f" (at {frames[-1].filename.split('sieve/')[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def _worker(
    conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], budget: int | None
) -> None:
    try:
        conn.send(_call(fn, args, budget))
    finally:
        conn.close()


def _context() -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"the worker process died: {name}{why}"
    return f"the worker process exited with status {exitcode} without an answer"


def run_guarded(
    fn: Callable[..., Any], *args: Any, isolate: bool = False, budget: int | None = None
) -> Outcome:
    """`fn(*args)` with its failure caught (see the module docstring); `budget`
    is the memory budget of the fits inside (None: the default)."""
    if not isolate:
        return Outcome(*_call(fn, args, budget))
    parent, child = mp.Pipe(duplex=False)
    proc = _context().Process(target=_worker, args=(child, fn, args, budget), daemon=True)
    proc.start()
    child.close()
    try:
        while True:
            if parent.poll(_POLL_SECONDS):
                try:
                    value, error, notices = parent.recv()
                except EOFError:  # closed without an answer: it died while sending
                    break
                return Outcome(value, error, notices)
            if not proc.is_alive() and not parent.poll(0):
                break
        proc.join()
        return Outcome(error=_death(proc.exitcode))
    finally:
        parent.close()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
