"""Where the time of a /ws round trip goes: py-spy on osnova-server under ws_bench's load.

    python bench/ws_profile.py [--seconds 8] [--connections 50] [--uvloop] [--echo] [--log-level info] [--raw profile.txt]

Starts osnova-server as bench/ws_bench.py does (50 paired devices, pinned to CPU 0, log level
info as in bench/run.py's rows, so every call writes its audit line; `--log-level warning` leaves
the audit log out), drives it from CPU 1 with ws_bench's round-trip load (each socket sends `apps.list`
when its previous answer arrives), samples it with `py-spy record --gil` and prints the share of
samples by owner (the innermost frame that belongs to a known part) and the functions with the
most samples of their own. Needs py-spy (in the venv). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ws_bench  # bench/ws_bench.py, a sibling script

# (owner, path fragments of the frames it owns), innermost match wins; first listed wins a tie.
OWNERS: Final = (
    ("log writer thread", ("logging/handlers.py:", "threading.py:")),
    ("audit and logging, on the loop", ("osnova_server/logs.py", "logging/__init__.py")),
    ("metrics", ("osnova_server/metrics.py", "aioprometheus/")),
    ("rate limiter", ("osnova_server/web/ratelimit.py", "osnova_server/security/ratelimit.py")),
    ("/ws: reader, queue, writer", ("osnova_server/web/websocket.py", "osnova_server/web/pool.py")),
    ("JSON-RPC: decode, dispatch, method, encode", (
        "osnova_server/rpc/", "osnova_server/services/", "osnova_server/runtime.py",
    )),
    ("aiohttp: WebSocket frames in and out", ("aiohttp/", "multidict/", "yarl/", "propcache/")),
    ("event loop and sockets", ("asyncio/", "selectors.py", "uvloop/", "socket.py")),
)
_FRAME: Final = re.compile(r"^(.*) \(([^()]*?):(\d+)\)$")


def owner_of(frames: list[str]) -> str:
    """The owner of one sampled stack (frames from outermost to innermost)."""
    if any("_monitor" in frame for frame in frames):
        return OWNERS[0][0]
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        path = match.group(2) if match else ""
        for owner, fragments in OWNERS[1:]:
            if any(fragment in path for fragment in fragments):
                return owner
    return "other (interpreter, idle bookkeeping)"


def summarise(raw: Path, top: int) -> None:
    """Print shares of samples by owner and by innermost function."""
    owners: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        frames = stack.split(";")
        owners[owner_of(frames)] += int(number)
        match = _FRAME.match(frames[-1])
        functions[f"{match.group(1)} ({match.group(2).rsplit('/', 2)[-1]})" if match else frames[-1]] += int(number)
    total = sum(owners.values()) or 1
    print(f"{total} samples")
    for owner, count in owners.most_common():
        print(f"{count / total:7.1%}  {owner}")
    print("innermost functions:")
    for function, count in functions.most_common(top):
        print(f"{count / total:7.1%}  {function}")


def main() -> int:
    """Start the server, load it, sample it, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--uvloop", action="store_true", help="the server on uvloop")
    parser.add_argument("--echo", action="store_true", help="profile ws_bench's bare aiohttp echo instead")
    parser.add_argument("--log-level", default="info", help="osnova-server [logging] level (info audits every call)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    ws_bench.pin(0, ws_bench.LOAD_CPU)
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or Path(tmp) / "profile.txt"
        if args.echo:
            target = ws_bench.start_echo(Path(tmp) / "echo", args.uvloop)
        else:
            target = ws_bench.start_osnova(Path(tmp) / "osnova", 0, args.log_level, args.uvloop)
        try:
            ws_bench.run_async(ws_bench.round_trips(target, args.connections, 1.0))  # warm up
            sampler = subprocess.Popen([
                py_spy, "record", "--gil", "--nonblocking", "--rate", "400", *(["--native"] if os.environ.get("WS_PROFILE_NATIVE") else []), "--format", "raw", "-o", str(raw),
                "--duration", str(int(args.seconds)), "--pid", str(target.process.pid),
            ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            measured = ws_bench.run_async(ws_bench.round_trips(target, args.connections, args.seconds + 1))
            sampler.wait(timeout=args.seconds + 30)
        finally:
            target.stop()
        print(f"{measured.rate:.0f} round trips/s, {measured.cpu_us:.1f} µs CPU a message "
              f"({'uvloop' if args.uvloop else 'asyncio'}, {args.connections} connections)")
        summarise(raw, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
