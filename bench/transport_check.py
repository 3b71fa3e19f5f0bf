"""CPU µs per trivial authenticated call over HTTP, for two checkouts taking turns.

    python bench/transport_check.py --before DIR --after DIR [--rounds 8] [--duration 3] [--stack uvloop|asyncio]

Starts osnova-server from each checkout (its osnova_server first on PYTHONPATH) on 127.0.0.1,
then alternates wrk runs of `identity.status` with an admin token against the two, round after
round, so each pair is measured seconds apart on the same (shared) machine. The server's CPU time
per request comes from /proc, as in bench/run.py (whose helpers this uses). Prints each side's
median and the median of the paired differences: what the transport (connection guard, Host,
Origin, body and timeout middlewares) and everything else between the two checkouts cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run


def start(checkout: Path, workdir: Path, stack: run.Stack, name: str) -> run.Process:
    """osnova-server from `checkout`, with an admin token for wrk."""
    state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    port = run.free_port()
    config_path = run.osnova_config(state, port, access_log=False)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    popen = subprocess.Popen(run.pinned(run.SERVER_CPU, run.osnova_argv(stack, config_path, "serve")), env=env,
                             cwd=checkout, stdout=subprocess.DEVNULL, stderr=(state / "stderr.log").open("wb"))
    process = run.Process(name, f"http://127.0.0.1:{port}", popen)
    try:
        run.wait_ready(f"{process.url}/health", popen)
        process.token = run.cli(config_path, "token", "--ttl", "7200").strip()
    except BaseException:
        process.stop()
        raise
    return process


def main() -> int:
    """Alternate the two servers and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--stack", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    stack = run.STACKS[args.stack]
    body = run.rpc_body("identity.status")
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="osnova-transport-") as tmp:
        workdir = Path(tmp)
        servers = {name: start(getattr(args, name).resolve(), workdir, stack, name) for name in ("before", "after")}
        try:
            for process in servers.values():
                run.wrk(process, "/rpc", body, 1)  # warm up
            for round_index in range(args.rounds):
                order = ["before", "after"] if round_index % 2 == 0 else ["after", "before"]
                for name in order:
                    result = run.wrk(servers[name], "/rpc", body, args.duration)
                    assert result.errors == 0, f"{name}: {result.errors} errors"
                    cpu[name].append(result.cpu_us)
        finally:
            for process in servers.values():
                process.stop()
    differences = [after - before for before, after in zip(cpu["before"], cpu["after"], strict=True)]
    print(f"identity.status over HTTP with an admin token, {args.stack}, {args.rounds} rounds of {args.duration} s, "
          f"wrk -c{run.WRK_CONNECTIONS}")
    for name in ("before", "after"):
        values = ", ".join(f"{value:.1f}" for value in cpu[name])
        print(f"{name:>6}: median {statistics.median(cpu[name]):.1f} CPU µs per call ({values})")
    print(f"after - before, median of the paired differences: {statistics.median(differences):+.1f} CPU µs per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
