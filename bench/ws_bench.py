"""Benchmark GET /ws against a bare aiohttp WebSocket echo, in one run, on loopback only.

    python bench/ws_bench.py [--duration 3] [--rounds 3] [--idle 1000,10000] [--log-level warning]
                             [--uvloop] [--json]

Measures, for osnova-server (`apps.list` over an admin socket) and a bare aiohttp echo server
(the same request text echoed back):

- round trips per second with 1 and 50 connections, each connection sending its next request
  when the previous answer arrives;
- memory per idle connection: the server process's RSS with `--idle` open sockets (authenticated,
  for osnova-server) minus its RSS before, divided by their number (each count in the list).

osnova-server's sockets are opened as a household's phones would open them: the benchmark pairs
PAIRED_DEVICES devices (`pairing.start` as admin, then `pairing.complete`) and every socket of
the 50-connection case carries its own device's token, so each has its own rate-limiter bucket
and its role is looked up as a device's on every call. The idle sockets are spread over the same
devices, so this config raises `[server] max_clients` to the idle count plus room,
`[server] max_clients_per_device` to what one device then holds (e.g. 203 for 10,000 sockets),
and `[limits] max_connections` and `max_connections_per_address` (every socket comes from
127.0.0.1) to fit them; the limits still run on every connection and upgrade, they are only sized
for the load. The rate limit is set
far above what the load sends: the limiter charges every message, it refuses none.

Both servers run on uvloop with `--uvloop`, else on asyncio's loop (osnova-server is then started
with uvloop hidden); the client runs on uvloop whenever it is installed, so that it outruns them. `--json` prints the rows as one JSON list on the last line
of stdout, for bench/run.py.

Each server runs in its own process pinned to CPU 0 and the load runs here on CPU 1 (when there
are two CPUs); the servers take turns, round after round, and the table shows medians. Every
load is bounded in time, everything listens on 127.0.0.1, and every process started is stopped.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
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
from typing import Any, Final

import aiohttp

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osnova_server import config as config_module
from osnova_server.client import OsnovaClient
from osnova_server.security.tokens import Scope, TokenAuthority

SECRET: Final = "bench-secret-0123456789abcdef0123456789abcdef"
SERVER_CPU: Final = 0
LOAD_CPU: Final = 1
REQUEST: Final = '{"jsonrpc":"2.0","method":"apps.list","id":1}'
# Devices paired for osnova-server's sockets: one per connection of the busiest round-trip case.
PAIRED_DEVICES: Final = 50
# Opens idle sockets this many at a time, so 10,000 of them take seconds, not minutes.
CONNECT_CONCURRENCY: Final = 64
# Runs the CLI with uvloop hidden, as if the `speedups` extra were not installed.
WITHOUT_UVLOOP: Final = (
    "import sys; sys.modules['uvloop'] = None; from osnova_server.cli import main; raise SystemExit(main())"
)
CHILD_ENV: Final = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    """A server under test: a child process, its /ws URL and the headers its sockets send.

    `tokens` are the bearer tokens sockets take in turn (socket i gets tokens[i % len]), none for
    the echo; `authenticated` says whether a socket's first frame is the `connected` notification.
    """

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.tokens: list[str] = []
        self.log = log
        with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the server
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink, env=CHILD_ENV)
        pin(self.process.pid, SERVER_CPU)
        try:
            wait_ready(f"{self.base}/health")
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None

    @property
    def authenticated(self) -> bool:
        """Whether sockets carry a token (and so are greeted with `connected`)."""
        return bool(self.tokens)

    def headers(self, index: int) -> dict[str, str]:
        """The upgrade headers of socket `index`."""
        if not self.tokens:
            return {}
        return {"Authorization": f"Bearer {self.tokens[index % len(self.tokens)]}"}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_osnova(workdir: Path, most_idle: int, log_level: str, uvloop: bool) -> Target:
    """osnova-server sized for every benchmark socket, with PAIRED_DEVICES devices paired on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = config_module.Config()
    sockets = max(most_idle, PAIRED_DEVICES) + 100  # the warm-up sockets too, and closes in flight
    per_device = max(config.server.max_clients_per_device, -(-sockets // PAIRED_DEVICES))
    config = config_module.replace(
        config, "server", bind_address=f"127.0.0.1:{port}", state_dir=str(workdir / "state"), max_clients=sockets,
        max_clients_per_device=per_device,
    )
    # The connection caps of web/connections.py, sized the same way: every socket comes from 127.0.0.1.
    config = config_module.replace(
        config, "limits", max_connections=sockets + 100, max_connections_per_address=sockets + 100,
    )
    config = config_module.replace(config, "auth", jwt_secret=SECRET)
    # The log goes to a file, as a service's would; aiohttp's access log is off (BENCHMARKS.md).
    config = config_module.replace(
        config, "logging", level=log_level, format="json", file=str(workdir / "osnova.log"), access_log=False,
    )
    # Every message is charged to its device's bucket; the limit is only set above the load.
    config = config_module.replace(config, "rate_limit", requests_per_second=1e9, burst_size=10**9)
    path = workdir / "server.toml"
    config_module.write(config, path)
    runner = ["-m", "osnova_server"] if uvloop else ["-c", WITHOUT_UVLOOP]
    argv = [sys.executable, *runner, "--config", str(path), "serve"]
    target = Target("osnova /ws", argv, port, workdir / "server.log")
    try:
        admin = TokenAuthority(SECRET.encode(), 3600).issue(Scope.ADMIN, None)[0]
        target.tokens = run_async(pair_devices(target.base, admin, PAIRED_DEVICES))
    except BaseException:
        target.stop()
        raise
    return target


async def pair_devices(base: str, admin_token: str, count: int) -> list[str]:
    """Pair `count` devices the way a phone does; their access tokens."""
    async with OsnovaClient(base, admin_token) as admin, OsnovaClient(base) as anonymous:
        tokens = []
        for number in range(count):
            payload = await admin.call("pairing.start", {"name": f"bench phone {number}"})
            grant = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
            tokens.append(str(grant["access_token"]))
    return tokens


def start_echo(workdir: Path, uvloop: bool) -> Target:
    """The baseline: this script in --echo mode."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, __file__, "--echo", str(port), *(["--uvloop"] if uvloop else [])]
    return Target("aiohttp echo", argv, port, workdir / "echo.log")


def serve_echo(port: int, uvloop: bool) -> None:
    """A bare aiohttp WebSocket echo server (the baseline), until SIGTERM."""
    from aiohttp import web

    if uvloop:
        import uvloop as uvloop_module

        asyncio.set_event_loop_policy(uvloop_module.EventLoopPolicy())

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


class RoundTrips:
    """What one throughput run measured."""

    __slots__ = ("rate", "p50_ms", "p99_ms", "cpu_us")

    def __init__(self, rate: float, p50_ms: float, p99_ms: float, cpu_us: float) -> None:
        self.rate = rate
        self.p50_ms = p50_ms
        self.p99_ms = p99_ms
        self.cpu_us = cpu_us


async def round_trips(target: Target, connections: int, duration: float) -> RoundTrips:
    """Round trips per second over `connections` sockets for `duration` seconds, and their latency."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = [await session.ws_connect(target.url, headers=target.headers(i)) for i in range(connections)]
        if target.authenticated:
            for ws in sockets:
                await ws.receive()  # `connected`
        counts = [0] * connections
        latencies: list[float] = []
        stop_at = 0.0
        clock = time.perf_counter

        async def drive(index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            record = latencies.append
            while (sent := clock()) < stop_at:
                await ws.send_str(REQUEST)
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"{target.name}: unexpected {message.type}")
                record(clock() - sent)
                counts[index] += 1

        # Warm up, then measure.
        stop_at = clock() + 0.5
        await asyncio.gather(*(drive(i, ws) for i, ws in enumerate(sockets)))
        counts = [0] * connections
        latencies.clear()
        cpu_before = cpu_seconds(target.process.pid)
        started = clock()
        stop_at = started + duration
        await asyncio.gather(*(drive(i, ws) for i, ws in enumerate(sockets)))
        elapsed = clock() - started
        cpu = cpu_seconds(target.process.pid) - cpu_before
        await asyncio.gather(*(ws.close() for ws in sockets))
    total = sum(counts)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("nan")
    return RoundTrips(total / elapsed, p50, p99, cpu / total * 1e6 if total else float("nan"))


async def idle_memory(target: Target, count: int) -> float:
    """Bytes of server RSS per idle open socket, with `count` of them open."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the code paths (and the allocator) first, so the delta is the sockets alone.
        warm = [await session.ws_connect(target.url, headers=target.headers(i)) for i in range(20)]
        await asyncio.gather(*(ws.close() for ws in warm))
        await asyncio.sleep(0.5)
        before = rss_bytes(target.process.pid)
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def open_one(index: int) -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await session.ws_connect(target.url, headers=target.headers(index), heartbeat=None)
                if target.authenticated:
                    hello = await ws.receive()  # `connected`: it is authenticated and holds a slot
                    if hello.type is not aiohttp.WSMsgType.TEXT or '"connected"' not in hello.data:
                        raise RuntimeError(f"{target.name}: socket {index} was not admitted: {hello}")
                return ws

        sockets = await asyncio.gather(*(open_one(i) for i in range(count)))
        await asyncio.sleep(1.0)
        after = rss_bytes(target.process.pid)
        await asyncio.gather(*(ws.close() for ws in sockets))
    return (after - before) / count


def run_async(coroutine: Any) -> Any:
    """Run the client, on uvloop when it is installed: the load must outrun the servers.

    On asyncio's loop this one-process client tops out near 20,000 round trips/s, below what the
    echo server and osnova-server can answer, and both would measure the client.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> int:
    """Run every case, round after round, and print one table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", default="1000", help="comma-separated counts of sockets held open for the memory case")
    parser.add_argument("--log-level", default="warning", help="osnova-server [logging] level (info audits every call)")
    parser.add_argument("--uvloop", action="store_true", help="servers on uvloop")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on the last line too")
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo is not None:
        serve_echo(args.echo, args.uvloop)
        return 0

    idle_counts = [int(count) for count in args.idle.split(",") if count]
    most = max(idle_counts, default=0)
    raise_fd_limit(2 * most + 256)
    pin(0, LOAD_CPU)
    results: dict[tuple[str, str], list[RoundTrips]] = {}
    memory: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            workdir = Path(tmp) / f"round{round_number}"
            starts: list[Callable[[], Target]] = [
                functools.partial(start_echo, workdir, args.uvloop),
                functools.partial(start_osnova, workdir, most, args.log_level, args.uvloop),
            ]
            if round_number % 2:
                starts.reverse()
            for start in starts:
                target = start()
                try:
                    for connections in (1, 50):
                        measured = run_async(round_trips(target, connections, args.duration))
                        results.setdefault((target.name, f"WS round trips, {connections} conn"), []).append(measured)
                    if round_number == 0:
                        for count in idle_counts:
                            memory[(target.name, count)] = run_async(idle_memory(target, count)) / 1024
                finally:
                    target.stop()
                print(f"round {round_number + 1}: {target.name} done", file=sys.stderr)

    names = ["aiohttp echo", "osnova /ws"]
    rows: list[dict[str, Any]] = []
    print(f"{'case':36} {'aiohttp echo':>14} {'osnova /ws':>14} {'ratio':>7}  osnova CPU µs/msg (echo)")
    for case in sorted({case for _, case in results}):
        echo, osnova = ([statistics.median(m.rate for m in results[(name, case)])] for name in names)
        cpu = {name: statistics.median(m.cpu_us for m in results[(name, case)]) for name in names}
        print(f"{case:36} {echo[0]:14.0f} {osnova[0]:14.0f} {osnova[0] / echo[0]:7.2f}  "
              f"{cpu['osnova /ws']:.1f} ({cpu['aiohttp echo']:.1f})")
        for name, server in zip(names, ("bare", "osnova")):
            measured = results[(name, case)]
            rows.append({
                "case": case, "server": server, "unit": "rt/s",
                "rate": statistics.median(m.rate for m in measured),
                "p50_ms": statistics.median(m.p50_ms for m in measured),
                "p99_ms": statistics.median(m.p99_ms for m in measured),
                "cpu_us": statistics.median(m.cpu_us for m in measured),
                "note": "bare = aiohttp WS echo" if server == "bare" else "",
            })
    for count in idle_counts:
        echo_kib, osnova_kib = (memory[(name, count)] for name in names)
        print(f"{f'KiB per idle socket ({count} open)':36} {echo_kib:14.1f} {osnova_kib:14.1f}")
        for name, server in zip(names, ("bare", "osnova")):
            note = "authenticated" if server == "osnova" else "bare = aiohttp WS echo"
            rows.append({"case": f"idle WS, {count} open", "server": server, "unit": "KiB/sock",
                         "rate": memory[(name, count)], "note": note})
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"(medians of {args.rounds} rounds of {args.duration:g} s; memory from round 1; log level "
          f"{args.log_level}; servers on {loop})")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
