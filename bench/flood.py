"""A hostile LAN client against osnova-server, bounded: a connection flood, then gzip bombers.

    python bench/flood.py [--connections 2000] [--duration 10] [--bombers 3] [--stack uvloop|asyncio]

Starts osnova-server on 127.0.0.1 with the default limits (max_connections 512, 64 per address)
in a temporary state dir, and measures GET /health from another loopback address (127.0.0.2),
one request after another over fresh connections, in three phases of `--duration` seconds:

- quiet: nothing else happens (the baseline);
- flood: `--connections` idle TCP connections from 127.0.0.1, opened as fast as the kernel
  accepts them and held; reports how many of them the server holds and its open descriptors;
- bombs: `--bombers` clients (127.0.0.3 and up) posting a 1 MiB gzip body that inflates to
  1 GiB, over and over; reports the answers they got and the server's CPU time.

Everything goes to 127.0.0.0/8 only, each phase ends by itself, and the server is stopped at the
end. Prints one table: /health p50 and p99 per phase, and what each phase held or cost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osnova_server import config as config_module

CHILD_ENV: Final = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
WITHOUT_UVLOOP: Final = (
    "import sys; sys.modules['uvloop'] = None; from osnova_server.cli import main; raise SystemExit(main())"
)
PROBE_SOURCE: Final = "127.0.0.2"
MIB: Final = 1 << 20


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gzip_bomb() -> bytes:
    """A valid 1 MiB gzip stream that inflates to 1 GiB (one full-flushed segment, repeated)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush()
    crc, zeros = 0, bytes(MIB)
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + segment * 1024 + final + struct.pack("<II", crc, 1 << 30)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid: int) -> int:
    """How many descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def health_once(port: int) -> float:
    """GET /health from PROBE_SOURCE over a fresh connection; milliseconds, or inf when it failed."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(PROBE_SOURCE, 0)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return float("inf")
    if not answer.startswith(b"HTTP/1.1 200"):
        return float("inf")
    return (time.perf_counter() - started) * 1000


class Prober(threading.Thread):
    """Probe /health one request after another until told to stop."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(health_once(self.port))
            time.sleep(0.01)


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile of `samples` (inf counts as the slowest)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def measured(port: int, duration: float, load: threading.Thread | None = None) -> tuple[list[float], dict[str, Any]]:
    """/health latencies while `load` runs in a child process (so the two share no GIL); its report."""
    prober = Prober(port)
    results: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
    child = None
    if load is not None:
        child = multiprocessing.get_context("fork").Process(target=_run_load, args=(load, results), daemon=True)
    prober.start()
    report: dict[str, Any] = {}
    if child is not None:
        child.start()
        report = results.get(timeout=duration + 60)
        child.join(30)
    else:
        time.sleep(duration)
    prober.done.set()
    prober.join()
    return prober.samples, report


def _run_load(load: threading.Thread, results: multiprocessing.Queue[dict[str, Any]]) -> None:
    """In the child: run the load to its end and send back what it saw."""
    load.run()
    results.put({key: value for key, value in vars(load).items() if isinstance(value, (int, float, dict))})


class Flood(threading.Thread):
    """Open `count` idle connections from 127.0.0.1, hold them for `duration` s, then close them.

    A thread only in shape: `measured` runs it in a child process.
    """

    def __init__(self, port: int, count: int, duration: float, pid: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.duration, self.pid = port, count, duration, pid
        self.opened = 0
        self.held = 0
        self.server_fds = 0

    def run(self) -> None:
        sockets: list[socket.socket] = []
        deadline = time.monotonic() + self.duration
        try:
            while len(sockets) < self.count and time.monotonic() < deadline:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                except OSError:
                    continue
                sock.setblocking(False)
                sockets.append(sock)
            self.opened = len(sockets)
            time.sleep(max(0.0, deadline - time.monotonic()))
            self.held = sum(1 for sock in sockets if not _closed_by_peer(sock))
            self.server_fds = open_descriptors(self.pid)
        finally:
            for sock in sockets:
                sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed this connection."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Bombers(threading.Thread):
    """`count` clients posting a gzip bomb to /rpc over and over for `duration` s."""

    def __init__(self, port: int, count: int, duration: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.duration = port, count, duration
        self.answers: dict[str, int] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        self.bomb = gzip_bomb()
        deadline = time.monotonic() + self.duration
        workers = [
            threading.Thread(target=self._bomb, args=(f"127.0.0.{3 + i}", deadline), daemon=True)
            for i in range(self.count)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _bomb(self, source: str, deadline: float) -> None:
        head = (f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: gzip\r\nContent-Length: {len(self.bomb)}\r\n\r\n").encode()
        while time.monotonic() < deadline:
            status = "error"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0)) as sock:
                    sock.sendall(head)
                    try:
                        sock.sendall(self.bomb)
                    except OSError:
                        pass  # refused before the body was read
                    answer = sock.recv(64)
                    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
            except OSError:
                pass
            with self.lock:
                self.answers[status] = self.answers.get(status, 0) + 1


def start_server(workdir: Path, stack: str) -> tuple[subprocess.Popen[bytes], int]:
    """osnova-server with the default limits on a free loopback port."""
    port = free_port()
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}", state_dir=str(workdir / "state"))
    config = config_module.replace(config, "auth", jwt_secret="f" * 64)
    config = config_module.replace(config, "logging", level="warning", format="text", access_log=False)
    path = workdir / "server.toml"
    config_module.write(config, path)
    if stack == "uvloop":
        argv = [sys.executable, "-m", "osnova_server", "--config", str(path), "serve"]
    else:
        argv = [sys.executable, "-c", WITHOUT_UVLOOP, "--config", str(path), "serve"]
    popen = subprocess.Popen(argv, env=CHILD_ENV, stderr=open(workdir / "server.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return popen, port
        except OSError:
            time.sleep(0.05)
    popen.kill()
    raise RuntimeError("the server did not start; see server.log")


def main() -> int:
    """Run the three phases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--bombers", type=int, default=3)
    parser.add_argument("--stack", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="osnova-flood-") as tmp:
        workdir = Path(tmp)
        popen, port = start_server(workdir, args.stack)
        pid = popen.pid
        try:
            rows = []
            quiet, _ = measured(port, args.duration)
            rows.append(("quiet", quiet, f"server holds {open_descriptors(pid)} descriptors"))
            samples, flood = measured(port, args.duration, Flood(port, args.connections, args.duration, pid))
            rows.append((f"flood {args.connections}", samples,
                         f"opened {flood['opened']}, server held {flood['held']}, server fds {flood['server_fds']}"))
            before = cpu_seconds(pid)
            samples, bombers = measured(port, args.duration, Bombers(port, args.bombers, args.duration))
            cpu = cpu_seconds(pid) - before
            answers = ", ".join(f"{count}x {status}" for status, count in sorted(bombers["answers"].items()))
            rows.append((f"{args.bombers} gzip bombers", samples,
                         f"answers: {answers}; server CPU {cpu:.2f} s in {args.duration:g} s"))
        finally:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
        errors = (workdir / "server.log").read_text(errors="replace")
    print(f"osnova-server on {args.stack}, /health from {PROBE_SOURCE} over fresh connections, "
          f"{args.duration:g} s per phase")
    print(f"{'phase':<18} {'probes':>6} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7}  notes")
    for name, samples, note in rows:
        failed = sum(1 for s in samples if s == float("inf"))
        finite = [s for s in samples if s != float("inf")]
        p50 = statistics.median(finite) if finite else float("nan")
        print(f"{name:<18} {len(samples):>6} {failed:>6} {p50:>7.2f} {percentile(samples, 0.99):>7.2f}  {note}")
    tracebacks = errors.count("Traceback")
    print(f"server log: {len(errors.splitlines())} lines, {tracebacks} tracebacks")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
