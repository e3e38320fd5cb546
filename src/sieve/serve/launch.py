"""Start `sieve serve` as a separate process and wait until it answers.

Used by the benchmarks and the end-to-end tests that need a real server
(kill -9, promotion under load, loopback latency): one way to launch it,
bounded in time, and stopped on any error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    args: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health",
    timeout: float = 120.0,
) -> subprocess.Popen[bytes]:
    """Run `sieve serve --host 127.0.0.1 --port PORT ARGS…` and return once
    `ready_path` answers 200; raise (with the server's last output) if it exits
    or does not get ready within `timeout` seconds."""
    cmd = [
        sys.executable,
        "-c",
        "from sieve.cli import app; app()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    # stderr goes to a file, not a pipe: a pipe nobody reads blocks a server
    # that logs more than its buffer during a long run (the child keeps its
    # own handle of the file after ours is closed)
    with tempfile.TemporaryFile() as log_file:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log_file
        )
        url = f"http://127.0.0.1:{port}{ready_path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log_file.seek(0)
                err = log_file.read().decode(errors="replace")
                raise RuntimeError(f"the server exited with code {proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"the server did not answer {url} within {timeout:.0f}s")


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_server(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health",
    timeout: float = 120.0,
) -> Iterator[str]:
    """A started server for the duration of the block; yields its base URL."""
    port = free_port()
    proc = start_server(args, port=port, env=env, ready_path=ready_path, timeout=timeout)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
