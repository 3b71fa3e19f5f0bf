"""Where the time of an authenticated /rpc call goes: py-spy on osnova-server under wrk.

    python bench/profile.py [--seconds 8] [--method identity.status] [--batch 0] [--asyncio]
                            [--access-log] [--bare] [--raw profile.txt]

Starts osnova-server as bench/run.py does (pinned to CPU 0, audit log on, access log off unless
asked), drives it with wrk from CPU 1, samples it with `py-spy record --gil` (only the thread
holding the GIL, so samples are CPU time of Python code and of the C it calls) and prints the
share of samples by owner: each sample goes to the innermost frame that belongs to a known part,
so time spent inside aiohttp's Response.__init__ called from the RPC view counts as aiohttp.
`--bare` profiles the bare aiohttp peer of run.py's table the same way, so the two breakdowns can
be set side by side (its handler, JSON included, has no owner of ours and counts as aiohttp).
Needs py-spy (pip install py-spy; it may need root or ptrace permission).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py, a sibling script

# (owner, path fragments of the frames it owns), innermost match wins; first listed wins a tie.
OWNERS: Final = (
    ("log writer thread", ("logging/handlers.py:", "threading.py:")),
    ("audit and access lines, on the loop", (
        "osnova_server/logs.py", "osnova_server/web/access_log.py", "logging/__init__.py", "osnova_server/runtime.py",
    )),
    ("metrics", ("osnova_server/metrics.py", "aioprometheus/")),
    ("rate limiter", ("osnova_server/web/ratelimit.py", "osnova_server/security/ratelimit.py")),
    ("token check", ("osnova_server/security/tokens.py",)),
    ("request checks (web/pipeline.py): timeouts, errors, forwarded, host, origin, ban, auth, body", (
        "osnova_server/web/pipeline.py", "osnova_server/web/timeouts.py", "osnova_server/web/errors.py",
        "osnova_server/web/forwarded.py", "osnova_server/web/host.py", "osnova_server/web/origin.py",
        "osnova_server/web/ban.py", "osnova_server/web/auth.py", "osnova_server/web/body.py",
        "aiohttp/web_middlewares.py",
    )),
    ("response hooks: CORS, security headers, HTTP count", (
        "osnova_server/web/cors.py", "aiohttp_cors/", "osnova_server/web/headers.py", "osnova_server/app.py",
        "aiosignal/",
    )),
    ("JSON-RPC: view, decode, dispatch, method, encode", (
        "osnova_server/web/rpc_view.py", "osnova_server/rpc/", "osnova_server/services/",
    )),
    ("aiohttp: parse request, route, build and write response", ("aiohttp/", "multidict/", "yarl/", "propcache/")),
    ("event loop and sockets", ("asyncio/", "selectors.py", "uvloop/", "socket.py")),
)
_FRAME_FILE: Final = re.compile(r"\(([^()]*?):\d+\)$")


def owner_of(stack: str) -> str:
    """The owner of one sampled stack (`frame;frame;...` from outermost to innermost)."""
    frames = stack.split(";")
    if any("_monitor" in frame for frame in frames):
        return OWNERS[0][0]
    for frame in reversed(frames):
        match = _FRAME_FILE.search(frame)
        path = match.group(1) if match else ""
        for owner, fragments in OWNERS[1:]:
            if any(fragment in path for fragment in fragments):
                return owner
    return "other (interpreter, idle bookkeeping)"


def summarise(raw: Path) -> list[tuple[str, float]]:
    """Shares of samples by owner, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if number.isdigit():
            counts[owner_of(stack)] += int(number)
    total = sum(counts.values()) or 1
    return [(owner, count / total) for owner, count in counts.most_common()]


def main() -> int:
    """Profile the server under load and print the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--method", default="identity.status")
    parser.add_argument("--batch", type=int, default=0, help="send batches of this many calls")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop instead of uvloop")
    parser.add_argument("--access-log", action="store_true", help="with aiohttp's access log on")
    parser.add_argument("--bare", action="store_true",
                        help="profile the bare aiohttp peer (bench/peers.py) instead: the ceiling, by the same owners")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    args = parser.parse_args()
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None:
            print(f"profile: {tool} is missing", file=sys.stderr)
            return 2
    stack = run.STACKS["asyncio" if args.asyncio or not run.has_uvloop() else "uvloop"]
    body = run.rpc_body(args.method, batch=args.batch)
    with tempfile.TemporaryDirectory(prefix="osnova-profile-") as tmp:
        workdir = Path(tmp)
        raw = args.raw or workdir / "raw.txt"
        if args.bare:
            process = run.start_peer("bare", stack)
        else:
            process, _, _ = run.start_osnova(workdir, stack, access_log=args.access_log)
        try:
            run.wrk(process, "/rpc", body, 2)  # warm up
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(process.popen.pid), "--duration", str(args.seconds),
                 "--rate", "1000", "--format", "raw", "--output", str(raw), "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            time.sleep(0.5)
            result = run.wrk(process, "/rpc", body, args.seconds - 1)
            _, errors = spy.communicate(timeout=args.seconds + 30)
        finally:
            process.stop()
        if spy.returncode != 0 or not raw.exists():
            print(f"profile: py-spy failed: {errors.strip()}", file=sys.stderr)
            return 1
        what = f"batches of {args.batch} {args.method}" if args.batch else args.method
        server = "bare aiohttp" if args.bare else f"osnova, access log {'on' if args.access_log else 'off'}"
        print(f"{what} on {stack.name}, {server}: "
              f"{result.rps:.0f} req/s, p99 {result.p99_ms:.2f} ms, {result.cpu_us:.1f} µs of server CPU per request")
        for owner, share in summarise(raw):
            print(f"{share * 100:5.1f}%  {share * result.cpu_us:5.1f} µs  {owner}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
