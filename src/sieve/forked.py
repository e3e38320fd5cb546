"""Rows of an offline computation filled by forked worker processes.

`fill_rows(fill, blocks, arrays)` computes an offline result whose rows are
independent of each other (a funnel's top-N lists: every user's list is
computed as for the user alone) with every usable core: the output arrays
live in anonymous shared memory, the blocks of rows are dealt round-robin
to `jobs` processes (this one and `jobs - 1` children made by `os.fork`,
which share the fitted model copy-on-write: nothing is pickled or loaded
again), and each process writes its blocks' rows in place. Written here
rather than with `multiprocessing` because its pools cannot start inside a
daemonic process (the isolated evaluation worker, `sieve.evaluate.isolate`)
and would pickle the model to each worker.

Each process runs its numerical libraries on one thread (BLAS and OpenMP
through threadpoolctl, the compiled ranker's trees through `usable_cores`),
so `jobs` processes use `jobs` cores. A child that raises reports the
exception's type and message; one that dies reports its signal; either
fails the whole call with that reason (no partial result is returned), and
an exception in this process kills and reaps the children first.

Forking is only safe for a process whose state the children read without
sharing a connection or another process's locks: callers fork offline
models only (see `Funnel.recommend_batch`). Off Linux (fork is unsafe with
macOS's system libraries) everything runs here, serially.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import mmap
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import threadpoolctl
from numpy.typing import NDArray

#: the longest error message a child sends back
_MESSAGE_BYTES = 4096
_JOBS: contextvars.ContextVar[int] = contextvars.ContextVar("sieve_jobs", default=1)
#: set in a forked worker
_IN_CHILD = False
#: set while this process computes its own share beside its workers
_SHARING = False


def usable_cores() -> int:
    """The cores this process may use for its own threads: 1 while it is
    a worker of `fill_rows`, or computes its share beside them (the other
    processes have the other cores)."""
    return 1 if _IN_CHILD or _SHARING else cores()


#: cgroup v2's CPU limit of this process's group ("max 100000": none;
#: "200000 100000": two cores' worth), as a container runtime sets it
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cores() -> int:
    """The cores this process may run on: those it may be scheduled on,
    and no more than its container's CPU limit (cgroup v2 `cpu.max`, rounded
    up), so a process in a 2-CPU container on a 64-core host counts 2."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 limit to read
        pass
    return n


def check_jobs(n: int) -> None:
    """Refuse a `jobs` setting below 0."""
    if n < 0:
        raise ValueError(f"jobs must be >= 0 (0: one per core), got {n}")


@contextlib.contextmanager
def jobs(n: int) -> Iterator[None]:
    """Run `fill_rows` calls inside with `n` processes (0: one per usable
    core; 1, the default outside: serially, in this process)."""
    check_jobs(n)
    token = _JOBS.set(n)
    try:
        yield
    finally:
        _JOBS.reset(token)


def planned_jobs(n_blocks: int) -> int:
    """How many processes `fill_rows` would use for `n_blocks` blocks: the
    `jobs` setting (0: one per usable core), at most one per block,
    and 1 where forking is not supported."""
    if not sys.platform.startswith("linux") or _IN_CHILD:
        return 1
    wanted = _JOBS.get() or usable_cores()
    return max(1, min(wanted, n_blocks))


def fill_rows(
    fill: Callable[[int, int, Sequence[NDArray[np.generic]]], None],
    blocks: Sequence[tuple[int, int]],
    arrays: Sequence[NDArray[np.generic]],
) -> None:
    """Call `fill(lo, hi, outputs)` for every block (lo, hi) of rows, each
    writing rows lo:hi of each output; the outputs are `arrays` (same
    shapes and dtypes, rows first), which hold every row when this returns.
    With more than one planned job the blocks are shared among forked
    processes (see the module doc)."""
    n_jobs = planned_jobs(len(blocks))
    if n_jobs <= 1:
        for lo, hi in blocks:
            fill(lo, hi, arrays)
        return
    shared, maps = [], []
    for a in arrays:
        buf = mmap.mmap(-1, max(a.nbytes, 1))
        view = np.frombuffer(buf, dtype=a.dtype, count=a.size).reshape(a.shape)
        view[...] = a
        shared.append(view)
        maps.append(buf)
    children: list[tuple[int, int, tuple[int, int]]] = []  # (pid, error pipe, first block)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for j in range(1, n_jobs):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which exits here
                os.close(read)
                _child(fill, blocks[j::n_jobs], shared, write)
            os.close(write)
            children.append((pid, read, blocks[j]))
        _share(fill, blocks[0::n_jobs], shared)
        failures = [why for why in (_reap(*child) for child in children) if why]
        children = []
        if failures:
            raise RuntimeError(
                f"{len(failures)} of {n_jobs} worker processes failed: {failures[0]}"
            )
        for a, view in zip(arrays, shared, strict=True):
            a[...] = view
    finally:
        for pid, read, _ in children:  # this process failed first: stop the others
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            with contextlib.suppress(OSError):  # already closed by `_reap`
                os.close(read)
        del shared
        for buf in maps:
            with contextlib.suppress(BufferError):
                buf.close()


def _share(
    fill: Callable[[int, int, Sequence[NDArray[np.generic]]], None],
    blocks: Sequence[tuple[int, int]],
    shared: Sequence[NDArray[np.generic]],
) -> None:
    """This process's own blocks, on one core."""
    global _SHARING
    _SHARING = True
    try:
        with threadpoolctl.threadpool_limits(1):
            for lo, hi in blocks:
                fill(lo, hi, shared)
    finally:
        _SHARING = False


def _child(
    fill: Callable[[int, int, Sequence[NDArray[np.generic]]], None],
    blocks: Sequence[tuple[int, int]],
    shared: Sequence[NDArray[np.generic]],
    write: int,
) -> None:  # pragma: no cover - runs in the child
    global _IN_CHILD
    _IN_CHILD = True
    status = 0
    try:
        _share(fill, blocks, shared)
    except BaseException as e:
        status = 1
        with contextlib.suppress(OSError):
            os.write(write, f"{type(e).__name__}: {e}".encode()[:_MESSAGE_BYTES])
    finally:
        os._exit(status)


def _reap(pid: int, read: int, first: tuple[int, int]) -> str:
    """Wait for a child; why it failed ('' when it did not)."""
    chunks = []
    while chunk := os.read(read, _MESSAGE_BYTES):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"the worker from row {first[0]} died: {name}"
    if os.WEXITSTATUS(status) != 0:
        return f"the worker from row {first[0]}: {message or 'exited without an answer'}"
    return ""
