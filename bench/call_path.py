"""What the per-call checks cost: server CPU µs per trivial authenticated call, two checkouts side by side.

    python bench/call_path.py [--before DIR] [--after DIR] [--rounds 5] [--duration 4]

Starts osnova-server from this checkout, or `--after` (and, with `--before`, from another one,
e.g. `git archive` of the commits before and after a change into two directories) on CPU 0 as bench/run.py does, pairs one member device
on each, and drives them in turns from CPU 1 with wrk: `identity.status` with the device's
token, one call per request and ten per request (a batch, where every member is checked
again). It prints the median server CPU µs per request and per call of each. Loopback only,
bounded in time; every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py, a sibling script

ROOT: Final = Path(__file__).resolve().parent.parent
BATCH: Final = 10


def _env(checkout: Path) -> dict[str, str]:
    """The environment that makes a child import osnova_server from `checkout`."""
    return {**os.environ, "PYTHONPATH": str(checkout)}


def _post(url: str, token: str | None, body: Any) -> Any:
    """POST one JSON-RPC body and return the decoded answer."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}/rpc", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def start(checkout: Path, workdir: Path, name: str) -> run.Process:
    """Start osnova-server from `checkout` with a freshly paired member device's token."""
    state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    port = run.free_port()
    config_path = run.osnova_config(state, port, access_log=False)
    env = _env(checkout)
    popen = subprocess.Popen(
        run.pinned(run.SERVER_CPU, run.osnova_argv(run.STACKS["uvloop"], config_path, "serve")), env=env,
        cwd=checkout,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.DEVNULL, stderr=(state / "stderr.log").open("wb"),
    )
    process = run.Process(name, f"http://127.0.0.1:{port}", popen)
    try:
        run.wait_ready(f"{process.url}/health", popen)
        admin = subprocess.run(
            [sys.executable, "-m", "osnova_server", "--config", str(config_path), "token", "--ttl", "7200"],
            env=env, cwd=checkout, check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        payload = _post(process.url, admin, {"jsonrpc": "2.0", "method": "pairing.start", "id": 1})["result"]
        grant = _post(process.url, None, {
            "jsonrpc": "2.0", "method": "pairing.complete", "params": {"token": payload["pairing"]["code"]}, "id": 2,
        })["result"]
        process.token = grant["access_token"]
    except BaseException:
        process.stop()
        raise
    return process


def main() -> int:
    """Alternate the checkouts round after round and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with (its osnova_server/)")
    parser.add_argument("--after", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    args = parser.parse_args()
    checkouts = {"after": args.after.resolve(), **({"before": args.before.resolve()} if args.before else {})}
    cases = {"1 call": (run.rpc_body("identity.status"), 1), f"{BATCH}-call batch": (
        run.rpc_body("identity.status", batch=BATCH), BATCH)}
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="osnova-call-path-") as workdir:
        processes = {name: start(path, Path(workdir), name) for name, path in checkouts.items()}
        try:
            for process in processes.values():
                run.wrk(process, "/rpc", cases["1 call"][0], 1)  # warm up
            for round_index in range(args.rounds):
                names = list(processes) if round_index % 2 == 0 else list(reversed(processes))
                for case, (body, _) in cases.items():
                    for name in names:
                        result = run.wrk(processes[name], "/rpc", body, args.duration)
                        if result.errors:
                            raise RuntimeError(f"{name}: {result.errors} failed requests in {case}")
                        samples.setdefault((case, name), []).append(result.cpu_us)
                print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
                time.sleep(0.1)
        finally:
            for process in processes.values():
                process.stop()
    print(f"{'case':<16} {'checkout':<8} {'CPU µs/request':>15} {'CPU µs/call':>12}  (median of {args.rounds})")
    for case, (_, calls) in cases.items():
        for name in checkouts:
            median = statistics.median(samples[(case, name)])
            print(f"{case:<16} {name:<8} {median:>15.1f} {median / calls:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
