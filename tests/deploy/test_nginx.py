"""deploy/nginx.conf, run by Debian's nginx on loopback: the file passes
`nginx -t`, and with the upstream `server:8000` pointed at two stand-in
replicas (compose's DNS name cannot resolve here) requests alternate between
them, `/metrics` stays private, and a replica that stops costs no request."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .files import NGINX_CONF, nginx, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def local_conf(folder: Path, upstreams: list[int], port: int) -> Path:
    """The deployed file with loopback addresses for the replicas and the listener,
    one worker process, its pid and temporary files in `folder`; nothing else
    changed."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^(\s*)server\s+server:8000(.*)$", text, re.M)
    assert len(servers) == 1, "one upstream line naming the compose service"
    indent, options = servers[0]
    lines = "\n".join(f"{indent}server 127.0.0.1:{p}{options}" for p in upstreams)
    text = re.sub(r"^\s*server\s+server:8000.*$", lines, text, count=1, flags=re.M)
    text = re.sub(r"^\s*listen\s+80;", f"        listen 127.0.0.1:{port};", text, flags=re.M)
    text = re.sub(r"^worker_processes\s+\w+;", "worker_processes 1;", text, flags=re.M)
    text = re.sub(r"^pid\s+\S+;", f"pid {folder / 'nginx.pid'};", text, flags=re.M)
    # temporary files in `folder` too, so that nginx also runs without root
    temp = "".join(
        f"    {kind}_temp_path {folder / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = re.sub(r"^http\s*\{\n", lambda m: m.group(0) + temp, text, count=1, flags=re.M)
    conf = folder / "nginx.conf"
    conf.write_text(text)
    return conf


class Replica(ThreadingHTTPServer):
    """A stand-in server replica: answers every GET with its own name."""

    def __init__(self, name: str) -> None:
        self.name = name

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"replica": name, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_nginx_accepts_the_file(tmp_path: Path) -> None:
    conf = local_conf(tmp_path, [free_port()], free_port())
    result = run(
        [nginx(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)]
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[tuple[int, list[Replica]]]:
    binary = nginx()
    replicas = [Replica("a"), Replica("b")]
    port = free_port()
    conf = local_conf(tmp_path, [r.server_address[1] for r in replicas], port)
    errors = tmp_path / "error.log"
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-e", str(errors), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30  # start-up wait, not a timed assertion
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    said = process.stderr.read() if process.stderr else b""
                    raise RuntimeError(f"nginx did not start: {said!r}") from None
                time.sleep(0.05)
        yield port, replicas
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        for replica in replicas:
            if replica.thread.is_alive():
                replica.stop()


def test_round_robin_private_metrics_and_a_replica_lost(
    balancer: tuple[int, list[Replica]],
) -> None:
    port, replicas = balancer
    seen: Counter[str] = Counter()
    for _ in range(6):
        status, body = get(port, "/health")
        assert status == 200
        seen[json.loads(body)["replica"]] += 1
    assert seen == {"a": 3, "b": 3}, "round robin over every replica"

    status, _ = get(port, "/metrics")
    assert status == 404, "Prometheus scrapes replicas, not the balancer"
    assert get(port, "/nginx-health")[0] == 200

    replicas[1].stop()
    answers = [get(port, "/health") for _ in range(6)]
    assert all(status == 200 for status, _ in answers), answers
    assert {json.loads(body)["replica"] for _, body in answers} == {"a"}
