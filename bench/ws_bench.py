"""Benchmark GET /ws against a bare aiohttp WebSocket echo, in one run, on loopback only.

    python bench/ws_bench.py [--duration 3] [--rounds 3] [--idle 1000] [--log-level warning]

Measures, for osnova-server (`apps.list` over an admin socket) and a bare aiohttp echo server
(the same request text echoed back):

- round trips per second with 1 and 50 connections, each connection sending its next request
  when the previous answer arrives;
- memory per idle connection: the server process's RSS with `--idle` open sockets (authenticated,
  for osnova-server) minus its RSS before, divided by their number.

Each server runs in its own process pinned to CPU 0 and the load runs here on CPU 1 (when there
are two CPUs); the servers take turns, round after round, and the table shows medians. Every
load is bounded in time, everything listens on 127.0.0.1, and every process started is stopped.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final

import aiohttp

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osnova_server import config as config_module
from osnova_server.security.tokens import Scope, TokenAuthority

SECRET: Final = "bench-secret-0123456789abcdef0123456789abcdef"
SERVER_CPU: Final = 0
LOAD_CPU: Final = 1
REQUEST: Final = '{"jsonrpc":"2.0","method":"apps.list","id":1}'


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 20.0) -> None:
    """Poll GET url until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pin(pid: int, cpu: int) -> None:
    """Run `pid` on one CPU, when the machine has it."""
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(pid, {cpu})


def raise_fd_limit(needed: int) -> None:
    """Allow this process (and the servers it starts) `needed` open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


# -- the servers -----------------------------------------------------------------------------


class Target:
    """A server under test: a child process, its /ws URL and the headers a client sends."""

    def __init__(self, name: str, argv: list[str], port: int, headers: dict[str, str], log: Path) -> None:
        self.name = name
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.headers = headers
        self.log = log
        with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the server
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink)
        pin(self.process.pid, SERVER_CPU)
        try:
            wait_ready(f"http://127.0.0.1:{port}/health")
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_osnova(workdir: Path, max_clients: int, log_level: str) -> Target:
    """osnova-server with room for every benchmark connection and no rate limit in the way."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = config_module.Config()
    config = config_module.replace(
        config, "server", bind_address=f"127.0.0.1:{port}", state_dir=str(workdir / "state"), max_clients=max_clients,
    )
    config = config_module.replace(config, "auth", jwt_secret=SECRET)
    config = config_module.replace(config, "logging", level=log_level, format="json")
    # One admin token is one bucket: 50 busy sockets share it, so the limiter must not be the bound.
    config = config_module.replace(config, "rate_limit", requests_per_second=1e9, burst_size=10**9)
    path = workdir / "server.toml"
    config_module.write(config, path)
    token = TokenAuthority(SECRET.encode(), 3600).issue(Scope.ADMIN, None)[0]
    argv = [sys.executable, "-m", "osnova_server", "--config", str(path), "serve"]
    return Target("osnova /ws", argv, port, {"Authorization": f"Bearer {token}"}, workdir / "server.log")


def start_echo(workdir: Path) -> Target:
    """The baseline: this script in --echo mode."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return Target("aiohttp echo", [sys.executable, __file__, "--echo", str(port)], port, {}, workdir / "echo.log")


def serve_echo(port: int) -> None:
    """A bare aiohttp WebSocket echo server (the baseline), until SIGTERM."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse(compress=False)
        await socket_.prepare(request)
        async for message in socket_:
            if message.type is aiohttp.WSMsgType.TEXT:
                await socket_.send_str(message.data)
        return socket_

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the loads -------------------------------------------------------------------------------


async def round_trips(target: Target, connections: int, duration: float) -> float:
    """Round trips per second over `connections` sockets for `duration` seconds."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = [await session.ws_connect(target.url, headers=target.headers) for _ in range(connections)]
        if "Authorization" in target.headers:
            for ws in sockets:
                await ws.receive()  # `connected`
        counts = [0] * connections
        stop_at = 0.0

        async def drive(index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            while time.perf_counter() < stop_at:
                await ws.send_str(REQUEST)
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"{target.name}: unexpected {message.type}")
                counts[index] += 1

        # Warm up, then measure.
        stop_at = time.perf_counter() + 0.5
        await asyncio.gather(*(drive(i, ws) for i, ws in enumerate(sockets)))
        counts = [0] * connections
        started = time.perf_counter()
        stop_at = started + duration
        await asyncio.gather(*(drive(i, ws) for i, ws in enumerate(sockets)))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(ws.close() for ws in sockets))
    return sum(counts) / elapsed


async def idle_memory(target: Target, count: int) -> float:
    """Bytes of server RSS per idle open socket, with `count` of them open."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the code paths (and the allocator) first, so the delta is the sockets alone.
        warm = [await session.ws_connect(target.url, headers=target.headers) for _ in range(20)]
        await asyncio.gather(*(ws.close() for ws in warm))
        await asyncio.sleep(0.5)
        before = rss_bytes(target.process.pid)
        sockets = []
        for _ in range(count):
            ws = await session.ws_connect(target.url, headers=target.headers)
            if "Authorization" in target.headers:
                await ws.receive()  # `connected`: it is authenticated and holds a slot
            sockets.append(ws)
        await asyncio.sleep(1.0)
        after = rss_bytes(target.process.pid)
        await asyncio.gather(*(ws.close() for ws in sockets))
    return (after - before) / count


def main() -> int:
    """Run every case, round after round, and print one table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1000, help="sockets held open for the memory case")
    parser.add_argument("--log-level", default="warning", help="osnova-server [logging] level (info audits every call)")
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo is not None:
        serve_echo(args.echo)
        return 0

    raise_fd_limit(2 * args.idle + 256)
    pin(0, LOAD_CPU)
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            workdir = Path(tmp) / f"round{round_number}"
            starts: list[Callable[[], Target]] = [
                functools.partial(start_echo, workdir),
                functools.partial(start_osnova, workdir, args.idle + 100, args.log_level),
            ]
            for start in starts:
                target = start()
                try:
                    for connections in (1, 50):
                        rate = asyncio.run(round_trips(target, connections, args.duration))
                        results.setdefault((target.name, f"round trips/s, {connections} conn"), []).append(rate)
                    if round_number == 0:
                        per_socket = asyncio.run(idle_memory(target, args.idle))
                        results.setdefault((target.name, f"KiB per idle socket ({args.idle} open)"), []).append(
                            per_socket / 1024,
                        )
                finally:
                    target.stop()
                print(f"round {round_number + 1}: {target.name} done", file=sys.stderr)

    cases = sorted({case for _, case in results})
    names = ["aiohttp echo", "osnova /ws"]
    print(f"{'case':36} {'aiohttp echo':>14} {'osnova /ws':>14} {'ratio':>7}")
    for case in cases:
        echo, osnova = (statistics.median(results[(name, case)]) for name in names)
        print(f"{case:36} {echo:14.0f} {osnova:14.0f} {osnova / echo:7.2f}")
    print(f"(medians of {args.rounds} rounds of {args.duration:g} s; memory from round 1; log level {args.log_level})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
