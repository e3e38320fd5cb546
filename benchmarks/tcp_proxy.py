"""A tiny TCP forwarder, run as its own process, to freeze a dependency safely.

`bench_faults.py` puts it between sieve and a shared server (PostgreSQL) and
sends it SIGSTOP: every connection through it hangs — established ones stop
moving bytes, new ones are accepted by the kernel's backlog and get no answer —
exactly like a frozen database, while the shared server itself stays untouched.
SIGCONT resumes it.

    python benchmarks/tcp_proxy.py --target 127.0.0.1:5432 [--port 0]

Prints `listening on PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int, target_host: str, target_port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    server = await asyncio.start_server(handle, host, port, backlog=1024)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:5432", help="HOST:PORT to forward to")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    a = ap.parse_args()
    t_host, _, t_port = a.target.rpartition(":")
    asyncio.run(main(a.host, a.port, t_host, int(t_port)))
