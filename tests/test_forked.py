"""Rows filled by forked worker processes (`sieve.forked`)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from sieve import forked

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")
BLOCKS = [(lo, min(lo + 3, 20)) for lo in range(0, 20, 3)]


def _square_rows(lo: int, hi: int, out: Sequence[NDArray[Any]]) -> None:
    """Rows lo:hi: their squares, and the process that computed them."""
    out[0][lo:hi] = np.arange(lo, hi)[:, None] ** 2 * np.ones(4)
    out[1][lo:hi] = os.getpid()


@linux
def test_forked_workers_fill_every_row_as_one_process_would() -> None:
    serial = np.zeros((20, 4)), np.zeros(20, np.int64)
    forked.fill_rows(_square_rows, BLOCKS, serial)
    assert set(serial[1].tolist()) == {os.getpid()}  # the default: this process alone
    shared = np.zeros((20, 4)), np.zeros(20, np.int64)
    with forked.jobs(3):
        assert forked.planned_jobs(len(BLOCKS)) == 3
        forked.fill_rows(_square_rows, BLOCKS, shared)
    assert np.array_equal(shared[0], serial[0])
    assert len(set(shared[1].tolist())) == 3  # three processes wrote rows
    assert os.getpid() in shared[1]  # this one took its share
    assert forked.planned_jobs(len(BLOCKS)) == 1  # the setting ends with its block


@linux
def test_a_worker_that_raises_fails_the_call_with_its_reason() -> None:
    def fill(lo: int, hi: int, out: Sequence[NDArray[Any]]) -> None:
        if lo == 3:  # the second block: the first child's
            raise ValueError("block 3 is bad")
        out[0][lo:hi] = 1

    out = np.zeros((20, 1))
    with forked.jobs(2), pytest.raises(RuntimeError, match="ValueError: block 3 is bad"):
        forked.fill_rows(fill, BLOCKS, [out])
    assert (out == 0).all()  # no partial result


@linux
def test_a_worker_that_dies_fails_the_call_with_its_signal() -> None:
    def fill(lo: int, hi: int, out: Sequence[NDArray[Any]]) -> None:
        if lo == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        out[0][lo:hi] = 1

    with forked.jobs(2), pytest.raises(RuntimeError, match="died: SIGKILL"):
        forked.fill_rows(fill, BLOCKS, [np.zeros((20, 1))])


@linux
def test_an_error_here_stops_the_workers() -> None:
    """This process's own share fails: its children are killed and reaped,
    not left running."""
    pids: list[int] = []

    def fill(lo: int, hi: int, out: Sequence[NDArray[Any]]) -> None:
        if lo == 0:  # this process's first block
            raise KeyError("here")
        out[0][lo:hi] = os.getpid()

    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        else:  # a child that would never finish on its own
            signal.pause()
        return pid

    with forked.jobs(3), pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fork", fork)
        with pytest.raises(KeyError):
            forked.fill_rows(fill, BLOCKS, [np.zeros((20, 1))])
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped


def test_cores_respect_the_containers_cpu_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = tmp_path / "cpu.max"
    monkeypatch.setattr(forked, "CPU_MAX", limit)
    unlimited = forked.cores()  # no file: the cores the process may run on
    assert unlimited >= 1
    limit.write_text("max 100000\n")
    assert forked.cores() == unlimited
    limit.write_text("50000 100000\n")  # half a core's worth: still one process
    assert forked.cores() == 1
    limit.write_text(f"{100000 * (unlimited + 5)} 100000\n")  # above the affinity
    assert forked.cores() == unlimited
    limit.write_text("garbage\n")
    assert forked.cores() == unlimited


def test_jobs_are_checked_and_capped() -> None:
    with pytest.raises(ValueError, match="jobs must be >= 0"), forked.jobs(-1):
        pass
    with forked.jobs(8):
        expected = 2 if sys.platform.startswith("linux") else 1
        assert forked.planned_jobs(2) == expected  # never more than the blocks
    assert forked.usable_cores() >= 1
