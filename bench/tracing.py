"""What tracing costs a trivial call: CPU per call and p99, off vs on, collector up, down or 503.

    python bench/tracing.py [--rounds 3] [--duration 5]

One osnova-server per case, started side by side and driven in turns, round after round, by wrk
(one POST `apps.list` per request, with an admin token, 32 connections), so every ratio compares
numbers measured seconds apart on the same machine. Servers are pinned to CPU 0, wrk and the
OTLP/HTTP receiver to CPU 1 (taskset). The server's CPU (all its threads: the export thread's
work is part of the cost) is read from /proc before and after each run. Cases:

  off          [tracing] enabled = false (OpenTelemetry not even imported)
  ratio 0      enabled, sample_ratio = 0.0, collector up: spans made but not sampled
  ratio 1      enabled, sample_ratio = 1.0, collector up: every span exported
  1, down      ratio 1, the collector's port closed (connection refused, retried)
  1, 503       ratio 1, the collector answers every export 503 (retried, then dropped)

Everything listens on 127.0.0.1; every process started is stopped at the end. Needs wrk,
taskset and the `tracing` extra. Prints one table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common

RECEIVER: Final = """
import sys
from aiohttp import web

async def receive(request):
    await request.read()
    if sys.argv[2] == "503":
        return web.Response(status=503)
    return web.Response(body=b"", content_type="application/x-protobuf")

async def health(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/v1/traces", receive)
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

CASES: Final = (
    # name, enabled, sample ratio, collector
    ("off", False, 1.0, "none"),
    ("ratio 0", True, 0.0, "up"),
    ("ratio 1", True, 1.0, "up"),
    ("1, down", True, 1.0, "down"),
    ("1, 503", True, 1.0, "503"),
)


def start_receiver(mode: str) -> common.Process:
    """An OTLP/HTTP receiver that takes (`up`) or refuses (`503`) every export."""
    port = common.free_port()
    popen = subprocess.Popen(
        common.pinned(common.LOAD_CPU, [sys.executable, "-c", RECEIVER, str(port), mode]),
        env=common.CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    process = common.Process(f"receiver-{mode}", f"http://127.0.0.1:{port}", popen)
    common.wait_ready(f"{process.url}/health", popen)
    return process


def start_case(workdir: Path, name: str, enabled: bool, ratio: float, endpoint: str) -> common.Process:
    """Start osnova-server (uvloop stack) with this [tracing] section; return it with a token."""
    from osnova_server import config as config_module

    state = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    port = common.free_port()
    path = common.osnova_config(state, port, access_log=False)
    config = config_module.replace(
        config_module.load(path), "tracing", enabled=enabled, sample_ratio=ratio, otlp_endpoint=endpoint,
    )
    config_module.write(config, path)
    stack = common.STACKS["uvloop" if common.has_uvloop() else "asyncio"]
    popen = subprocess.Popen(
        common.pinned(common.SERVER_CPU, common.osnova_argv(stack, path, "serve")), env=common.CHILD_ENV,
        stdout=subprocess.DEVNULL, stderr=(state / "stderr.log").open("wb"),
    )
    process = common.Process(name, f"http://127.0.0.1:{port}", popen)
    try:
        common.wait_ready(f"{process.url}/health", popen)
        process.token = common.cli(path, "token", "--ttl", "7200").strip()
    except BaseException:
        process.stop()
        raise
    return process


def main() -> int:
    """Run the cases in turns and print CPU µs per call and p99, with ratios to `off`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    body = common.rpc_body("apps.list")
    started: list[common.Process] = []
    try:
        receivers = {mode: start_receiver(mode) for mode in ("up", "503")}
        started.extend(receivers.values())
        down = f"http://127.0.0.1:{common.free_port()}"  # nothing listens there
        endpoints = {"none": "", "up": receivers["up"].url, "503": receivers["503"].url, "down": down}
        with tempfile.TemporaryDirectory(prefix="osnova-bench-tracing-") as workdir:
            servers = []
            for name, enabled, ratio, collector in CASES:
                servers.append(start_case(Path(workdir), name, enabled, ratio, endpoints[collector]))
                started.append(servers[-1])
            for server in servers:  # warm up: caches, the first export attempts
                common.wrk(server, "/rpc", body, 1)
            cpu: dict[str, list[float]] = {s.name: [] for s in servers}
            p99: dict[str, list[float]] = {s.name: [] for s in servers}
            rps: dict[str, list[float]] = {s.name: [] for s in servers}
            errors: dict[str, int] = {s.name: 0 for s in servers}
            for _ in range(args.rounds):
                for server in servers:
                    result = common.wrk(server, "/rpc", body, args.duration)
                    cpu[server.name].append(result.cpu_us)
                    p99[server.name].append(result.p99_ms)
                    rps[server.name].append(result.rps)
                    errors[server.name] += result.errors
                    time.sleep(0.2)
    finally:
        for process in started:
            process.stop()
    base_cpu, base_p99 = statistics.median(cpu["off"]), statistics.median(p99["off"])
    print(f"{'case':<10} {'req/s':>8} {'CPU µs/call':>12} {'vs off':>7} {'p99 ms':>8} {'vs off':>7} {'errors':>7}")
    for name, *_ in CASES:
        cpu_us, p99_ms = statistics.median(cpu[name]), statistics.median(p99[name])
        print(
            f"{name:<10} {statistics.median(rps[name]):>8.0f} {cpu_us:>12.1f} {cpu_us / base_cpu:>7.2f} "
            f"{p99_ms:>8.2f} {p99_ms / base_p99:>7.2f} {errors[name]:>7}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
