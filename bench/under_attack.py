"""The trivial authenticated call's p99 while another address holds slow connections, on loopback.

    python bench/under_attack.py [--rounds 3] [--duration 5] [--stacks asyncio,uvloop]
                                 [--slots 1000] [--reopen-after 1.0] [--drip 1.0] [--json]

osnova-server starts as bench/run.py starts it (default `[limits]`: 512 connections, 64 per
address, header_timeout 10 s; auth, limiter, metrics and the audit line on) pinned to CPU 0,
and wrk -t1 -c32 posts `identity.status` with an admin token from 127.0.0.1 on CPU 1. Each
round measures it twice, seconds apart, in alternating order:

- quiet: nothing else happens;
- under attack: an attacker (a child process on CPU 1, its source address 127.0.0.2) tries to
  hold `--slots` connections. Each one sends the request line and the start of a header, then
  one more byte of that header every `--drip` seconds, and never finishes. A connection the
  server closes (refused at accept past the per-address cap, or answered 408 after
  header_timeout) is opened again `--reopen-after` seconds later, so the pressure lasts the
  whole measurement (slowloris re-opens every 15 s; the default here is 1 s). The attack starts
  early enough that the first wave of 408s falls inside the measurement.

The attacker reports what it managed: connections held (open past their first half second),
accepted connections answered 408, connections closed at accept, connects still waiting for
the kernel; and the server's open descriptors meanwhile. Loopback only, bounded in count
(`--slots`) and time (every attack ends by itself), and every process started is stopped.
`--json` prints the rows on the last line of stdout for bench/run.py.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py, a sibling script

ATTACKER_SOURCE: Final = "127.0.0.2"
HEADER_TIMEOUT: Final = 10.0  # the default [limits] header_timeout the attacker's 408s come from
HELD_AFTER: Final = 0.5  # a connection open this long got past accept
SAMPLE_EVERY: Final = 0.5
TICK: Final = 0.01
HEAD: Final = b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


# -- the attacker (a child process) -------------------------------------------------------


class Attacker:
    """Hold up to `slots` slow connections from ATTACKER_SOURCE to 127.0.0.1:port for `seconds`.

    One thread, one selector: the attacker shares CPU 1 with wrk, so it must cost little.
    Drips and re-opens are due in the order they were scheduled (the delays are constant), so a
    deque each keeps them in order without a heap.
    """

    def __init__(self, port: int, slots: int, seconds: float, drip: float, reopen_after: float, pid: int) -> None:
        self.port, self.slots, self.seconds, self.drip, self.reopen_after = port, slots, seconds, drip, reopen_after
        self.server_pid = pid
        self.selector = selectors.DefaultSelector()
        self.opened_at: dict[socket.socket, float] = {}  # connected sockets, and since when
        self.connecting: set[socket.socket] = set()
        self.drips: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self.reopens: collections.deque[float] = collections.deque()
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, list[int]] = {"held": [], "pending": [], "server_fds": []}

    def run(self) -> dict[str, Any]:
        """Attack until the deadline, then close everything; what was seen."""
        started = time.monotonic()
        deadline = started + self.seconds
        next_sample = started + 1.0  # the first connects are still under way before this
        for _ in range(self.slots):
            self._open()
        try:
            while (now := time.monotonic()) < deadline:
                for key, events in self.selector.select(TICK):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock in self.connecting:
                        self._connected(sock, now)
                    elif events & selectors.EVENT_READ:
                        self._readable(sock, now)
                while self.drips and self.drips[0][0] <= now:
                    _, sock = self.drips.popleft()
                    if sock in self.opened_at:
                        self._send(sock, b"a", now)
                while self.reopens and self.reopens[0] <= now:
                    self.reopens.popleft()
                    self._open()
                if now >= next_sample:
                    next_sample += SAMPLE_EVERY
                    self._sample(now)
        finally:
            for sock in [*self.opened_at, *self.connecting]:
                sock.close()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "held": statistics.median(self.samples["held"]) if self.samples["held"] else 0,
            "held_min": min(self.samples["held"], default=0),
            "pending": statistics.median(self.samples["pending"]) if self.samples["pending"] else 0,
            "server_fds": max(self.samples["server_fds"], default=0),
            "counts": dict(self.counts),
            "seconds": self.seconds,
            "attacker_cpu_s": cpu.ru_utime + cpu.ru_stime,
        }

    def _open(self) -> None:
        """Start one non-blocking connect from ATTACKER_SOURCE."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((ATTACKER_SOURCE, 0))
            code = sock.connect_ex(("127.0.0.1", self.port))
        except OSError:
            code = errno.EADDRNOTAVAIL
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._closed("connect failed", time.monotonic())
            return
        self.counts["connects"] += 1
        self.connecting.add(sock)
        self.selector.register(sock, selectors.EVENT_WRITE)

    def _connected(self, sock: socket.socket, now: float) -> None:
        """The handshake ended: send the start of a request that never ends, or give the slot back."""
        self.connecting.discard(sock)
        if code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            # A reset before the handshake was seen here: the server refused it at accept.
            self._drop(sock, "closed at accept" if code == errno.ECONNRESET else "connect failed", now)
            return
        self.opened_at[sock] = now
        self.selector.modify(sock, selectors.EVENT_READ)
        self._send(sock, HEAD, now)

    def _send(self, sock: socket.socket, data: bytes, now: float) -> None:
        """Send a little more of the headers; schedule the next drip."""
        try:
            sock.send(data)
        except OSError:
            self._drop(sock, self._why_closed(sock, now, b""), now)
            return
        self.drips.append((now + self.drip, sock))

    def _readable(self, sock: socket.socket, now: float) -> None:
        """The server answered (408) or closed the connection."""
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        self._drop(sock, self._why_closed(sock, now, data), now)

    def _why_closed(self, sock: socket.socket, now: float, data: bytes) -> str:
        """Name how the server ended a connection."""
        if data.startswith(b"HTTP/1.1 408"):
            return "answered 408"
        if data:
            return f"answered {data[9:12].decode(errors='replace')}"
        opened = self.opened_at.get(sock, now)
        return "closed at accept" if now - opened < HELD_AFTER else "closed later, unanswered"

    def _drop(self, sock: socket.socket, why: str, now: float) -> None:
        """Forget a connection and schedule its slot's next connect."""
        self.selector.unregister(sock)
        self.opened_at.pop(sock, None)
        self.connecting.discard(sock)
        sock.close()
        self._closed(why, now)

    def _closed(self, why: str, now: float) -> None:
        """Count the reason and schedule the slot's reopening."""
        self.counts[why] += 1
        self.reopens.append(now + self.reopen_after)

    def _sample(self, now: float) -> None:
        """How many connections are held, how many connects wait, what the server holds."""
        self.samples["held"].append(sum(1 for opened in self.opened_at.values() if now - opened >= HELD_AFTER))
        self.samples["pending"].append(len(self.connecting))
        try:
            self.samples["server_fds"].append(len(os.listdir(f"/proc/{self.server_pid}/fd")))
        except OSError:
            pass


def attacker_main(argv: list[str]) -> int:
    """`under_attack.py --attacker PORT SLOTS SECONDS DRIP REOPEN PID`: attack, print a JSON report."""
    port, slots, seconds, drip, reopen_after, pid = argv
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    attacker = Attacker(int(port), int(slots), float(seconds), float(drip), float(reopen_after), int(pid))
    print(json.dumps(attacker.run()))
    return 0


# -- the measurement ----------------------------------------------------------------------


@dataclass
class Measured:
    """The wrk runs of one stack and one phase, and the attacker's reports."""

    runs: list[run.WrkResult] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    server_fds: list[int] = field(default_factory=list)

    def median(self, name: str) -> float:
        """The median of one WrkResult field over the runs."""
        return float(statistics.median(getattr(result, name) for result in self.runs))


def under_attack(args: argparse.Namespace, osnova: run.Process, body: str) -> tuple[run.WrkResult, dict[str, Any]]:
    """One wrk run while the attacker works; the attacker's report."""
    port = int(osnova.url.rsplit(":", 1)[1])
    # The first 408s come header_timeout after the attacker's first connections: start early
    # enough that they fall in the middle of the measurement.
    lead = max(2.0, HEADER_TIMEOUT - args.duration / 2)
    seconds = lead + args.duration + 1
    attacker = subprocess.Popen(
        run.pinned(run.LOAD_CPU, [sys.executable, __file__, "--attacker", str(port), str(args.slots), str(seconds),
                                  str(args.drip), str(args.reopen_after), str(osnova.popen.pid)]),
        env=run.CHILD_ENV, stdout=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(lead)
        result = run.wrk(osnova, "/rpc", body, args.duration)
        out, _ = attacker.communicate(timeout=seconds + 30)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    return result, json.loads(out.strip().splitlines()[-1])


def measure_stack(args: argparse.Namespace, workdir: Path, stack: run.Stack) -> dict[str, Measured]:
    """Quiet and under attack, alternating, `args.rounds` times on one server."""
    body = run.rpc_body("identity.status")
    phases = {"quiet": Measured(), "under attack": Measured()}
    osnova, _, _ = run.start_osnova(workdir, stack)
    try:
        run.wrk(osnova, "/rpc", body, 1)  # warm up
        for round_index in range(args.rounds):
            order = list(phases) if round_index % 2 == 0 else list(reversed(phases))
            for phase in order:
                if phase == "quiet":
                    phases[phase].server_fds.append(len(os.listdir(f"/proc/{osnova.popen.pid}/fd")))
                    phases[phase].runs.append(run.wrk(osnova, "/rpc", body, args.duration))
                else:
                    result, report = under_attack(args, osnova, body)
                    phases[phase].runs.append(result)
                    phases[phase].reports.append(report)
            print(f"{stack.name}: round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        osnova.stop()
    return phases


def attack_note(args: argparse.Namespace, measured: Measured, quiet: Measured) -> str:
    """What the attacker managed, per second of attack, in one line."""
    reports = measured.reports
    held = statistics.median(report["held"] for report in reports)
    held_min = min(report["held_min"] for report in reports)
    pending = statistics.median(report["pending"] for report in reports)
    per_second: collections.Counter[str] = collections.Counter()
    for report in reports:
        for why, count in report["counts"].items():
            per_second[why] += count / report["seconds"] / len(reports)
    server_fds = max(report["server_fds"] for report in reports)
    quiet_fds = min(quiet.server_fds, default=0)
    rates = ", ".join(f"{why} {rate:.0f}/s" for why, rate in sorted(per_second.items()))
    cpu = statistics.median(report["attacker_cpu_s"] / report["seconds"] for report in reports)
    return (f"{args.slots} slots: held {held:.0f} (min {held_min}), {pending:.0f} connects waiting; {rates}; "
            f"server fds at most {server_fds} (idle {quiet_fds}, wrk 32); attacker CPU {cpu:.0%}")


def main() -> int:
    """Measure every stack and print the table (and the rows as JSON with --json)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--attacker":
        return attacker_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--stacks", default="asyncio,uvloop", help="comma-separated: asyncio, uvloop")
    parser.add_argument("--slots", type=int, default=1000, help="connections the attacker tries to hold")
    parser.add_argument("--drip", type=float, default=1.0, help="seconds between header bytes")
    parser.add_argument("--reopen-after", type=float, default=1.0, help="seconds before a closed slot reconnects")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on the last line too")
    args = parser.parse_args()
    stacks = [run.STACKS[name] for name in args.stacks.split(",") if name]
    if any(stack.uvloop for stack in stacks) and not run.has_uvloop():
        print("under_attack: uvloop is missing; the uvloop rows are skipped", file=sys.stderr)
        stacks = [stack for stack in stacks if not stack.uvloop]
    rows: list[dict[str, Any]] = []
    print(f"{'stack':8} {'phase':13} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs':>7} {'p99 ratio':>9}  note")
    with tempfile.TemporaryDirectory(prefix="osnova-attack-") as tmp:
        for stack in stacks:
            phases = measure_stack(args, Path(tmp), stack)
            quiet_p99 = phases["quiet"].median("p99_ms")
            for phase, measured in phases.items():
                p99 = measured.median("p99_ms")
                ratio = p99 / quiet_p99 if phase != "quiet" else 1.0
                note = attack_note(args, measured, phases["quiet"]) if measured.reports else ""
                errors = sum(result.errors for result in measured.runs)
                if errors:
                    note = f"{errors} wrk errors; {note}"
                print(f"{stack.name:8} {phase:13} {measured.median('rps'):7.0f} {measured.median('p50_ms'):7.2f} "
                      f"{p99:7.2f} {measured.median('cpu_us'):7.1f} {ratio:8.2f}x  {note}")
                rows.append({
                    "case": f"trivial call p99, {phase}", "server": "osnova", "stack": stack.name,
                    "rate": measured.median("rps"), "p50_ms": measured.median("p50_ms"), "p99_ms": p99,
                    "cpu_us": measured.median("cpu_us"),
                    "note": f"p99 {ratio:.2f}x quiet; {note}" if phase != "quiet" else "",
                })
    print(f"(medians of {args.rounds} rounds of {args.duration} s; wrk -t1 -c{run.WRK_CONNECTIONS} from 127.0.0.1, "
          f"attacker from {ATTACKER_SOURCE}; server on CPU {run.SERVER_CPU}, load on CPU {run.LOAD_CPU})")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
