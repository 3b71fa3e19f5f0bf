"""Benchmark osnova-server against a bare aiohttp handler and aiohttp + jsonrpcserver, in one run.

    python bench/run.py [--rounds 3] [--duration 5] [--stacks asyncio,uvloop] [--skip-ws] [--skip-attack] [--idle 1000,10000]

Servers are pinned to CPU 0 and the load (wrk, the WebSocket and pairing clients) to CPU 1
(taskset), and take turns, round after round, so each ratio compares numbers measured seconds
apart on the same machine. Each case runs on two stacks, every server of a row on the same
event loop: `asyncio` (osnova-server started with uvloop hidden; the bare server on the standard
library's json) and `uvloop` (the `speedups` extra: uvloop, and orjson for the bare server too).
osnova-server parses with orjson on both, because aioprometheus requires it, so the asyncio rows
also show the bare server with orjson. "vs bare" divides by the `bare` row of the same stack.
Everything listens on 127.0.0.1 only, every load is bounded in time, and every process started
is stopped at the end. Needs wrk and taskset (Debian: wrk, util-linux) and the `bench` extra's
packages (jsonrpcserver, uvloop, orjson). Prints one table of medians; BENCHMARKS.md explains
the cases and the targets. The start row times what an installed server does: this checkout's
bytecode is compiled first (`python -m compileall`, as pip does when it installs the wheel), so
no start pays for compiling the sources, even with PYTHONDONTWRITEBYTECODE=1 in the environment.
"""

from __future__ import annotations

import argparse
import json
import math
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
BENCH: Final = ROOT / "bench"
sys.path.insert(0, str(ROOT))

SERVER_CPU: Final = "0"
LOAD_CPU: Final = "1"
WRK_LUA: Final = BENCH / "post.lua"
WRK_CONNECTIONS: Final = 32
APP_COUNT: Final = 50
PAIRINGS_IN_FLIGHT: Final = 20
STARTS: Final = 5
# Children import osnova_server from this checkout, installed or not.
CHILD_ENV: Final = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
# Runs the CLI with uvloop hidden, as if the `speedups` extra were not installed.
WITHOUT_UVLOOP: Final = (
    "import sys; sys.modules['uvloop'] = None; from osnova_server.cli import main; raise SystemExit(main())"
)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compile_bytecode(checkout: Path) -> None:
    """Write the .pyc files of `checkout`'s osnova_server, as a wheel install does (pip compiles them).

    Without them (a fresh checkout, or PYTHONDONTWRITEBYTECODE=1 set, which only stops writing
    them, not reading them) every start compiles every module again: about 60 ms of a start to
    ready that no installed server spends.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "osnova_server")],
                   check=True, timeout=300)


def wait_ready(url: str, popen: subprocess.Popen[bytes], timeout: float = 20.0) -> float:
    """Poll GET url until it answers 200; return the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if popen.poll() is not None:
            raise RuntimeError(f"{popen.args!r} exited with {popen.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    """Prefix argv with taskset when it is available."""
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    """A server process started by the benchmark."""

    name: str
    url: str
    popen: subprocess.Popen[bytes]
    token: str | None = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass(frozen=True)
class Stack:
    """The event loop every server of a row runs on."""

    name: str
    uvloop: bool


STACKS: Final = {"asyncio": Stack("asyncio", False), "uvloop": Stack("uvloop", True)}


def has_uvloop() -> bool:
    """Whether uvloop is importable here."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def osnova_argv(stack: Stack, config_path: Path, *command: str) -> list[str]:
    """The command line that runs osnova-server on `stack`."""
    if stack.uvloop:
        return [sys.executable, "-m", "osnova_server", "--config", str(config_path), *command]
    return [sys.executable, "-c", WITHOUT_UVLOOP, "--config", str(config_path), *command]


def osnova_config(state_dir: Path, port: int, access_log: bool) -> Path:
    """Write the benchmark config: loopback, state in a temp dir, rate limits out of the way.

    Auth, the rate limiter, metrics and the audit log stay on (the log goes to a file at level
    info, so every call writes its audit line); only aiohttp's access log is switchable.
    """
    from osnova_server import config as config_module

    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}", state_dir=str(state_dir),
                                   max_clients=20_000)
    config = config_module.replace(config, "rate_limit", requests_per_second=1e9, burst_size=1_000_000_000)
    config = config_module.replace(config, "logging", level="info", format="json", file=str(state_dir / "osnova.log"),
                                   access_log=access_log)
    path = state_dir / "bench.toml"
    config_module.write(config, path)
    return path


def launch_osnova(workdir: Path, stack: Stack, name: str = "osnova", access_log: bool = False,
                  env: dict[str, str] = CHILD_ENV) -> tuple[Process, Path, float]:
    """Start osnova-server (importing it as `env` says) and wait for /health; its start-to-ready seconds."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    port = free_port()
    config_path = osnova_config(state, port, access_log)
    started = time.perf_counter()
    popen = subprocess.Popen(pinned(SERVER_CPU, osnova_argv(stack, config_path, "serve")), env=env,
                             stdout=subprocess.DEVNULL, stderr=(state / "stderr.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    process = Process(name, url, popen)
    try:
        wait_ready(f"{url}/health", popen)
    except BaseException:
        process.stop()
        raise
    return process, config_path, time.perf_counter() - started


def start_osnova(workdir: Path, stack: Stack, name: str = "osnova", access_log: bool = False) -> tuple[Process, Path, float]:
    """Start osnova-server; return it (with an admin token), its config path and its start-to-ready seconds."""
    process, config_path, ready = launch_osnova(workdir, stack, name, access_log)
    try:
        process.token = cli(config_path, "token", "--ttl", "7200").strip()
    except BaseException:
        process.stop()
        raise
    return process, config_path, ready


def start_peer(kind: str, stack: Stack, orjson: bool = False, name: str = "") -> Process:
    """Start a peer server from bench/peers.py on `stack`."""
    port = free_port()
    extra = [*(["--uvloop"] if stack.uvloop else []), *(["--orjson"] if orjson else [])]
    popen = subprocess.Popen(pinned(SERVER_CPU, [sys.executable, str(BENCH / "peers.py"), kind, str(port), *extra]),
                             env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = Process(name or kind, f"http://127.0.0.1:{port}", popen)
    try:
        wait_ready(f"{process.url}/health", popen)
    except BaseException:
        process.stop()
        raise
    return process


def cli(config_path: Path, *args: str) -> str:
    """Run an osnova-server command against the benchmark's config."""
    return subprocess.run([sys.executable, "-m", "osnova_server", "--config", str(config_path), *args], env=CHILD_ENV,
                          check=True, capture_output=True, text=True, timeout=60).stdout


# -- wrk -----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run measured, and the server's CPU time per request meanwhile."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float


_UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(text: str, label: str) -> float:
    """A latency percentile from wrk --latency output, in ms."""
    match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk(process: Process, path: str, body: str | None, duration: int,
        connections: int = WRK_CONNECTIONS) -> WrkResult:
    """Run wrk for `duration` seconds against the process; POST `body` (with its token) when given."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if body is not None:
        argv += ["-s", str(WRK_LUA)]
    env = {**os.environ, "BENCH_BODY": body or "", "BENCH_TOKEN": (process.token or "") if body else ""}
    before = cpu_seconds(process.popen.pid)
    out = subprocess.run(pinned(LOAD_CPU, [*argv, f"{process.url}{path}"]), capture_output=True, text=True, env=env,
                         check=True, timeout=duration + 30).stdout
    cpu = cpu_seconds(process.popen.pid) - before
    found = re.search(r"^\s+(\d+) requests in ([\d.]+)(ms|s)", out, re.MULTILINE)
    requests = int(found.group(1)) if found else 0
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(rps_match.group(1)) if rps_match else 0.0
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        match = re.search(pattern, out)
        errors += int(match.group(1)) if match else 0
    cpu_us = cpu / requests * 1e6 if requests else float("nan")
    return WrkResult(rps, _latency(out, "50"), _latency(out, "99"), errors, cpu_us)


def rpc_body(method: str, params: Any = None, batch: int = 0) -> str:
    """A JSON-RPC request (or a batch of `batch` copies) as text."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    return json.dumps([{**request, "id": i} for i in range(batch)] if batch else request)


# -- the table -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table: medians over the rounds."""

    case: str
    stack: str
    server: str
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    note: str = ""
    unit: str = "req/s"

    def add(self, result: WrkResult) -> None:
        """Record one wrk run."""
        self.rps.append(result.rps)
        self.p50.append(result.p50_ms)
        self.p99.append(result.p99_ms)
        self.cpu_us.append(result.cpu_us)
        if result.errors:
            self.note = f"{result.errors} errors"


def _median(values: list[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def _number(value: float, digits: int = 0) -> str:
    """A number for the table, blank when not measured."""
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    """Print the medians, each row with its ratio to the bare server of the same case and stack."""
    bare = {(row.case, row.stack): row for row in rows if row.server == "bare"}
    print(f"\n{'case':34} {'stack':8} {'server':20} {'rate':>8} {'unit':9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU µs':>7} {'vs bare':>8} {'p99/bare':>8}  note")
    for row in rows:
        rps = _median(row.rps)
        p99 = _median(row.p99)
        reference = bare.get((row.case, row.stack))
        ratio = p99_ratio = ""
        if reference is not None and row.server != "bare":
            ratio = f"{rps / _median(reference.rps):.2f}x"
            p99_ratio = f"{p99 / _median(reference.p99):.2f}x" if reference.p99 else ""
        print(f"{row.case:34} {row.stack:8} {row.server:20} {_number(rps):>8} {row.unit:9} "
              f"{_number(_median(row.p50), 2):>7} {_number(p99, 2):>7} {_number(_median(row.cpu_us), 1):>7} "
              f"{ratio:>8} {p99_ratio:>8}  {row.note}")


# -- cases ---------------------------------------------------------------------------------


def install_apps(config_path: Path, workdir: Path, count: int) -> None:
    """Install `count` apps from file:// manifests through the real RPC (one batch)."""
    manifests = workdir / "manifests"
    manifests.mkdir(exist_ok=True)
    for index in range(count):
        manifest = {
            "id": f"ant://bench-app-{index}", "name": f"Bench app {index}", "version": "1.0.0",
            "iconUri": "ant://icon", "description": "An app for the benchmark.",
            "components": [{"id": "ant://ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
        }
        (manifests / f"app{index}.json").write_text(json.dumps(manifest))
    for index in range(count):
        cli(config_path, "rpc", "apps.install", json.dumps({"manifest_uri": f"file://{manifests / f'app{index}.json'}"}))


@contextmanager
def servers(workdir: Path, stack: Stack) -> Iterator[dict[str, Process]]:
    """osnova-server (access log off, and on), the bare server and jsonrpcserver, all on `stack`."""
    started: dict[str, Process] = {}
    try:
        osnova, config_path, _ = start_osnova(workdir, stack)
        started["osnova"] = osnova
        install_apps(config_path, workdir, APP_COUNT)
        started["osnova, access log on"] = start_osnova(workdir, stack, "osnova, access log on", access_log=True)[0]
        started["bare"] = start_peer("bare", stack, orjson=stack.uvloop)
        if not stack.uvloop:
            started["bare, orjson"] = start_peer("bare", stack, orjson=True, name="bare, orjson")
        started["jsonrpcserver"] = start_peer("jsonrpcserver", stack)
        yield started
    finally:
        for process in started.values():
            process.stop()


def http_cases(args: argparse.Namespace, workdir: Path, stack: Stack, rows: list[Row]) -> None:
    """Alternate the HTTP cases over the servers for `args.rounds` rounds."""
    trivial = rpc_body("identity.status")
    batch = rpc_body("identity.status", batch=10)
    peers = ["bare", "jsonrpcserver"] if stack.uvloop else ["bare", "bare, orjson", "jsonrpcserver"]
    cases = [
        ("trivial call /rpc", trivial, ["osnova", "osnova, access log on", *peers]),
        (f"apps.list, {APP_COUNT} apps", rpc_body("apps.list"), ["osnova", "bare"]),
        ("10-call batch", batch, ["osnova", "bare"]),
    ]
    table = {(case, name): Row(case, stack.name, name) for case, _, names in cases for name in names}
    with servers(workdir, stack) as running:
        for process in running.values():  # warm up: first connections, caches, lazy imports
            wrk(process, "/rpc", trivial, 1)
        for round_index in range(args.rounds):
            for case, body, names in cases:
                order = names if round_index % 2 == 0 else list(reversed(names))
                for name in order:
                    table[(case, name)].add(wrk(running[name], "/rpc", body, args.duration))
            print(f"{stack.name}: HTTP round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    rows.extend(table.values())


def health_under_argon2(args: argparse.Namespace, workdir: Path, stack: Stack) -> Row:
    """/health latency while 20 pairing.complete calls at a time hash with argon2."""
    osnova, _, _ = start_osnova(workdir, stack)
    row = Row(f"/health, {PAIRINGS_IN_FLIGHT} argon2 pairings", stack.name, "osnova")
    try:
        seconds = args.duration + 1
        hasher = subprocess.Popen(
            pinned(LOAD_CPU, [sys.executable, str(BENCH / "pairing_load.py"), osnova.url, osnova.token or "",
                              str(seconds), str(PAIRINGS_IN_FLIGHT)]),
            env=CHILD_ENV, stdout=subprocess.PIPE, text=True,
        )
        try:
            time.sleep(0.5)  # let the first hashes start
            row.add(wrk(osnova, "/health", None, args.duration, connections=8))
            completed = hasher.communicate(timeout=seconds + 60)[0].strip()
        finally:
            if hasher.poll() is None:
                hasher.kill()
                hasher.wait()
        row.note = f"{completed} pairings completed meanwhile"
    finally:
        osnova.stop()
    return row


def version_seconds(stack: Stack, env: dict[str, str] = CHILD_ENV) -> float:
    """Seconds `osnova-server version` takes, start to exit, importing osnova_server as `env` says."""
    argv = [sys.executable, "-m", "osnova_server"] if stack.uvloop else [sys.executable, "-c", WITHOUT_UVLOOP]
    started = time.perf_counter()
    subprocess.run([*argv, "version"], env=env, check=True, capture_output=True, timeout=30)
    return time.perf_counter() - started


def start_times(workdir: Path, stack: Stack) -> tuple[float, float]:
    """Median start-to-ready of `serve` and median run time of `osnova-server version`."""
    ready = []
    for _ in range(STARTS):
        process, _, seconds = launch_osnova(workdir, stack)
        process.stop()
        ready.append(seconds)
    version = [version_seconds(stack) for _ in range(STARTS)]
    return statistics.median(ready), statistics.median(version)


def child_rows(script: str, options: list[str], stack: Stack, failed_case: str) -> list[Row]:
    """Run a sibling benchmark with `--json` and turn the rows on its last line into table rows."""
    argv = [sys.executable, str(BENCH / script), "--json", *options]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1200, env=CHILD_ENV)
    if done.returncode != 0 or not done.stdout.strip():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row(failed_case, stack.name, "-", note=f"{script} failed: {tail}")]
    rows = []
    for item in json.loads(done.stdout.strip().splitlines()[-1]):
        row = Row(item["case"], stack.name, item["server"], unit=item.get("unit", "req/s"), note=item.get("note", ""))
        for key, values in (("rate", row.rps), ("p50_ms", row.p50), ("p99_ms", row.p99), ("cpu_us", row.cpu_us)):
            if item.get(key) is not None:
                values.append(float(item[key]))
        rows.append(row)
    return rows


def ws_rows(args: argparse.Namespace, stack: Stack) -> list[Row]:
    """The WebSocket cases from bench/ws_bench.py (round trips, and memory per idle socket)."""
    # Level info: every call writes its audit line, as in the HTTP cases.
    options = ["--rounds", str(args.rounds), "--idle", args.idle, "--log-level", "info"]
    if stack.uvloop:
        options.append("--uvloop")
    return child_rows("ws_bench.py", options, stack, "WebSocket cases")


def attack_rows(args: argparse.Namespace, stack: Stack) -> list[Row]:
    """The trivial call's p99, quiet and while 127.0.0.2 holds slow connections (bench/under_attack.py)."""
    options = ["--rounds", str(args.rounds), "--duration", str(args.duration), "--stacks", stack.name]
    return child_rows("under_attack.py", options, stack, "trivial call p99, under attack")


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--stacks", default="asyncio,uvloop", help="comma-separated: asyncio, uvloop")
    parser.add_argument("--idle", default="1000,10000", help="idle WebSocket counts for the memory case")
    parser.add_argument("--skip-ws", action="store_true", help="skip the WebSocket cases")
    parser.add_argument("--skip-attack", action="store_true", help="skip the under-attack case")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is missing; apt-get install wrk", file=sys.stderr)
        return 2
    stacks = [STACKS[name] for name in args.stacks.split(",") if name]
    if any(stack.uvloop for stack in stacks) and not has_uvloop():
        print("bench: uvloop is missing (pip install uvloop); the uvloop rows are skipped", file=sys.stderr)
        stacks = [stack for stack in stacks if not stack.uvloop]
    # 10,000 idle sockets need as many descriptors in the client and in the server (a child).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    compile_bytecode(ROOT)
    rows: list[Row] = []
    timings: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="osnova-bench-") as tmp:
        workdir = Path(tmp)
        for stack in stacks:
            http_cases(args, workdir, stack, rows)
            rows.append(health_under_argon2(args, workdir, stack))
            if not args.skip_ws:
                rows.extend(ws_rows(args, stack))
            if not args.skip_attack:
                rows.extend(attack_rows(args, stack))
            timings[stack.name] = start_times(workdir, stack)
    print_table(rows)
    for name, (ready, version) in timings.items():
        print(f"\n{name}: start to ready (median of {STARTS}): {ready * 1000:.0f} ms; "
              f"`osnova-server version` (median of {STARTS}): {version * 1000:.0f} ms")
    print(f"\n{os.cpu_count()} CPUs; servers on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}; "
          f"{args.rounds} rounds of {args.duration:g} s; wrk -c{WRK_CONNECTIONS}; "
          f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
