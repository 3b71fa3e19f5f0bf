"""Benchmark osnova-server against a bare aiohttp handler and aiohttp + jsonrpcserver, in one run.

    python bench/run.py [--rounds 3] [--duration 5] [--quick]

Servers are pinned to CPU 0 and wrk to CPU 1 (taskset) and take turns, round after round, so
each ratio compares numbers measured minutes apart on the same machine. Everything runs on
127.0.0.1 only, every load is bounded in time, and every process started is stopped at the end.
Needs: wrk and taskset (Debian: wrk, util-linux), jsonrpcserver (pip). Prints one table of
medians; BENCHMARKS.md explains the cases and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

SERVER_CPU = "0"
LOAD_CPU = "1"
WRK_LUA = BENCH / "post.lua"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 20.0) -> float:
    """Poll GET url until it answers 200; return the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    """Prefix argv with taskset when it is available."""
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


@dataclass
class Process:
    """A server process started by the benchmark."""

    name: str
    url: str
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def osnova_config(state_dir: Path, port: int, **extra: Any) -> Path:
    """Write the benchmark config: loopback, state in a temp dir, rate limits out of the way."""
    from osnova_server import config as config_module

    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}", state_dir=str(state_dir),
                                   max_clients=20_000, **extra.get("server", {}))
    config = config_module.replace(config, "rate_limit", requests_per_second=1e9, burst_size=1_000_000_000)
    config = config_module.replace(config, "logging", level="info", format="json", file=str(state_dir / "osnova.log"))
    path = state_dir / "bench.toml"
    config_module.write(config, path)
    return path


def start_osnova(workdir: Path, **extra: Any) -> tuple[Process, Path, float]:
    """Start osnova-server; return it, its config path, and its start-to-ready seconds."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    port = free_port()
    config_path = osnova_config(state, port, **extra)
    started = time.perf_counter()
    popen = subprocess.Popen(
        pinned(SERVER_CPU, [sys.executable, "-m", "osnova_server", "--config", str(config_path), "serve"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/health")
    return Process("osnova", url, popen), config_path, time.perf_counter() - started


def start_peer(kind: str) -> Process:
    """Start a peer server from bench/peers.py."""
    port = free_port()
    popen = subprocess.Popen(pinned(SERVER_CPU, [sys.executable, str(BENCH / "peers.py"), kind, str(port)]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return Process(kind, f"http://127.0.0.1:{port}", popen)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


def cli(config_path: Path, *args: str) -> str:
    """Run an osnova-server command against the benchmark's config."""
    return subprocess.run([sys.executable, "-m", "osnova_server", "--config", str(config_path), *args],
                          check=True, capture_output=True, text=True).stdout


# -- wrk -----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(text: str, label: str) -> float:
    """A latency percentile from wrk --latency output, in ms."""
    match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk(url: str, body: str | None, token: str | None, duration: int, connections: int = 32) -> WrkResult:
    """Run wrk for `duration` seconds against url; POST `body` when given."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if body is not None:
        argv += ["-s", str(WRK_LUA)]
    env = {**os.environ, "BENCH_BODY": body or "", "BENCH_TOKEN": token or ""}
    out = subprocess.run(pinned(LOAD_CPU, [*argv, url]), capture_output=True, text=True, env=env, check=True,
                         timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return WrkResult(rps, _latency(out, "50"), _latency(out, "99"), errors)


def rpc_body(method: str, params: Any = None, batch: int = 0) -> str:
    """A JSON-RPC request (or a batch of `batch` copies) as text."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    return json.dumps([{**request, "id": i} for i in range(batch)] if batch else request)


# -- cases ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table: medians over the rounds."""

    case: str
    server: str
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    note: str = ""


def install_apps(config_path: Path, workdir: Path, count: int) -> None:
    """Install `count` apps from file:// manifests through the real RPC."""
    manifests = workdir / "manifests"
    manifests.mkdir(exist_ok=True)
    for index in range(count):
        manifest = {
            "id": f"ant://bench-app-{index}", "name": f"Bench app {index}", "version": "1.0.0",
            "iconUri": "ant://icon", "description": "An app for the benchmark.",
            "components": [{"id": "ant://ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
        }
        path = manifests / f"app{index}.json"
        path.write_text(json.dumps(manifest))
        cli(config_path, "rpc", "apps.install", json.dumps({"manifest_uri": f"file://{path}"}))


def http_cases(args: argparse.Namespace, workdir: Path, rows: dict[tuple[str, str], Row]) -> None:
    """Alternate the HTTP cases over the three servers for `args.rounds` rounds."""
    osnova, config_path, _ = start_osnova(workdir)
    bare = start_peer("bare")
    peer = start_peer("jsonrpcserver")
    try:
        token = cli(config_path, "token", "--ttl", "3600").strip()
        install_apps(config_path, workdir, 50)
        trivial = rpc_body("identity.status")
        cases = [
            ("trivial call /rpc", [(osnova, trivial), (bare, trivial), (peer, trivial)]),
            ("apps.list, 50 apps", [(osnova, rpc_body("apps.list"))]),
            ("10-call batch", [(osnova, rpc_body("identity.status", batch=10)),
                               (bare, rpc_body("identity.status", batch=10))]),
        ]
        for round_index in range(args.rounds):
            for case, servers in cases:
                order = servers if round_index % 2 == 0 else list(reversed(servers))
                for process, body in order:
                    result = wrk(f"{process.url}/rpc", body, token, args.duration)
                    row = rows.setdefault((case, process.name), Row(case, process.name))
                    row.rps.append(result.rps)
                    row.p50.append(result.p50_ms)
                    row.p99.append(result.p99_ms)
                    if result.errors:
                        row.note = f"{result.errors} errors"
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for process in (osnova, bare, peer):
            process.stop()


def health_under_argon2(args: argparse.Namespace, workdir: Path) -> Row:
    """/health latency while 20 pairing.complete calls at a time hash with argon2."""
    osnova, config_path, _ = start_osnova(workdir)
    row = Row("/health during 20 argon2 pairings", "osnova")
    try:
        token = cli(config_path, "token", "--ttl", "3600").strip()
        stop_at = time.monotonic() + args.duration + 2
        hasher = subprocess.Popen([sys.executable, str(BENCH / "pairing_load.py"), osnova.url, token,
                                   str(args.duration + 2), "20"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        result = wrk(f"{osnova.url}/health", None, None, args.duration, connections=8)
        completed = hasher.communicate(timeout=max(5, stop_at - time.monotonic() + 30))[0].strip()
        row.rps.append(result.rps)
        row.p50.append(result.p50_ms)
        row.p99.append(result.p99_ms)
        row.note = f"{completed} pairings completed meanwhile"
    finally:
        osnova.stop()
    return row


def start_times(workdir: Path, runs: int = 5) -> tuple[float, float]:
    """Median start-to-ready of `serve` and median run time of `osnova-server version`."""
    ready = []
    for _ in range(runs):
        process, _, seconds = start_osnova(workdir)
        process.stop()
        ready.append(seconds)
    version = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "osnova_server", "version"], check=True, capture_output=True)
        version.append(time.perf_counter() - started)
    return statistics.median(ready), statistics.median(version)


def print_table(rows: list[Row]) -> None:
    """Print the medians, with each row's ratio to the bare server of the same case."""
    bare = {row.case: row for row in rows if row.server == "bare"}
    print(f"\n{'case':38} {'server':14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}  note")
    for row in rows:
        rps = statistics.median(row.rps) if row.rps else float("nan")
        reference = bare.get(row.case)
        ratio = f"{rps / statistics.median(reference.rps):.2f}x" if reference and row.server != "bare" else ""
        p99_ratio = ""
        if reference and row.server != "bare":
            p99_ratio = f" p99 {statistics.median(row.p99) / statistics.median(reference.p99):.2f}x bare"
        print(f"{row.case:38} {row.server:14} {rps:9.0f} {statistics.median(row.p50):8.2f} "
              f"{statistics.median(row.p99):8.2f} {ratio:>8}  {row.note}{p99_ratio}")


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--skip-ws", action="store_true", help="skip the WebSocket cases")
    args = parser.parse_args()
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing; apt-get install wrk", file=sys.stderr)
            return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="osnova-bench-") as tmp:
        workdir = Path(tmp)
        rows: dict[tuple[str, str], Row] = {}
        http_cases(args, workdir, rows)
        table = list(rows.values())
        table.append(health_under_argon2(args, workdir))
        if not args.skip_ws:
            table.extend(ws_rows(args, workdir))
        ready, version = start_times(workdir)
        print_table(table)
        print(f"\nstart to ready (median of 5): {ready * 1000:.0f} ms")
        print(f"`osnova-server version` (median of 5): {version * 1000:.0f} ms")
    return 0


def ws_rows(args: argparse.Namespace, workdir: Path) -> list[Row]:
    """The WebSocket cases from bench/ws_bench.py, when it is there."""
    script = BENCH / "ws_bench.py"
    if not script.exists():
        return []
    out = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True,
                         timeout=900, check=True).stdout
    rows = []
    for item in json.loads(out.strip().splitlines()[-1]):
        row = Row(item["case"], item["server"], [item.get("rps", float("nan"))],
                  [item.get("p50_ms", float("nan"))], [item.get("p99_ms", float("nan"))], item.get("note", ""))
        rows.append(row)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
