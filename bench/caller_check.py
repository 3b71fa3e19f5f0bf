"""CPU µs per trivial authenticated call in the dispatcher alone, for one or two checkouts.

    python bench/caller_check.py [--before DIR] [--after DIR] [--calls 200000] [--rounds 5]

Each checkout runs in its own child process (its osnova_server first on sys.path): it opens a
real runtime (SQLite in a temp dir), pairs one member device through the service, and times
`Dispatcher.call` of `identity.status` with that device's verified claims, the whole call path a
request takes once the transport has read and decoded it: the caller check (revocation and role,
since roles exist), binding, the method, the metrics and audit hook. It prints the median of the
rounds in CPU µs per call (time.process_time), which is what the per-call checks add to.
No network is used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

CHILD: Final = r'''
import asyncio, json, sys, tempfile, time
from pathlib import Path

from osnova_server import config as config_module
from osnova_server.metrics import Metrics
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import load_registry
from osnova_server.rpc.protocol import Dispatcher
from osnova_server.runtime import open_runtime

CALLS, ROUNDS = int(sys.argv[1]), int(sys.argv[2])


async def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        config = config_module.replace(config_module.Config(), "server", state_dir=state, bind_address="127.0.0.1:0")
        config = config_module.replace(config, "auth", jwt_secret="b" * 48)
        config = config_module.replace(config, "logging", level="warning")
        async with open_runtime(config) as runtime:
            issued = runtime.pairing.issue("bench", 300)
            grant = await runtime.devices.pair(issued.code, None, "127.0.0.1")
            claims = runtime.tokens.verify(grant.access_token)
            dispatcher = Dispatcher(load_registry(), observe=runtime.call_observer(Metrics()))
            ctx = Context(runtime, claims, "127.0.0.1", "http")
            request = {"jsonrpc": "2.0", "method": "identity.status", "id": 1}
            assert "result" in await dispatcher.call(request, ctx)
            rounds = []
            for _ in range(ROUNDS):
                started = time.process_time()
                for _ in range(CALLS):
                    await dispatcher.call(request, ctx)
                rounds.append((time.process_time() - started) / CALLS * 1e6)
            print(json.dumps(rounds))

asyncio.run(main())
'''


def measure(checkout: Path, calls: int, rounds: int) -> list[float]:
    """The per-round CPU µs per call of one checkout, measured in a child process."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls), str(rounds)], cwd=checkout, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(checkout)}, check=True, timeout=1800,
    )
    values: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return values


def main() -> int:
    """Measure each checkout and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--after", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="turns per checkout")
    args = parser.parse_args()
    checkouts = {**({"before": args.before.resolve()} if args.before else {}), "after": args.after.resolve()}
    # Checkouts take turns, one child per round each, so a burst of load elsewhere on the
    # machine lands on both rather than on one.
    results: dict[str, list[float]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, path in checkouts.items():
            results[name].append(min(measure(path, args.calls, 3)))
    for name, values in results.items():
        print(f"{name:<7} {statistics.median(values):6.2f} CPU µs per call (rounds: "
              f"{', '.join(f'{value:.2f}' for value in values)})")
    if len(results) == 2:
        differences = [after - before for before, after in zip(results["before"], results["after"])]
        print(f"after - before, median of the paired rounds: {statistics.median(differences):+.2f} CPU µs per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
