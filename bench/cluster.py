"""Cluster mode's cost: CPU per call against the embedded default, and revocation-to-close time.

    python bench/cluster.py [--calls 2000] [--installs 200] [--revocations 200]

Starts its own redis-server, PostgreSQL (initdb in a temp dir, as the unprivileged user
`osnova-test` when run as root) and osnova-server processes, all on 127.0.0.1, and stops every
one by PID at the end. Prints, for the embedded default (SQLite, one process) and cluster mode
(PostgreSQL + Redis): the server process's CPU µs per trivial call (`apps.list`, answered from memory) and per
`apps.install`, with the engines' CPU beside it; then the p50/p99 time from `devices.revoke` on
instance A to the 4401 close of the device's WebSocket on instance B. Load is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osnova_server import config as config_module
from osnova_server.security.tokens import Scope, TokenAuthority
from tests import services
from tests.conftest import TEST_SECRET, ServerProcess

CONCURRENCY: Final = 8
TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and every live descendant (PostgreSQL's backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parts = stat.rsplit(")", 1)[1].split()
        if int(entry.name) == pid or int(parts[1]) == pid:
            total += sum(int(v) for v in parts[11:13]) / TICKS
    return total


def write_config(directory: Path, name: str, port: int, store_url: str = "", redis_url: str = "") -> Path:
    """A config for one instance; its path."""
    state = directory / name
    state.mkdir(mode=0o700)
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}", state_dir=str(state),
                                   max_clients=1000, max_clients_per_device=1000)
    config = config_module.replace(config, "auth", jwt_secret=TEST_SECRET)
    config = config_module.replace(config, "logging", level="warning", format="text")
    config = config_module.replace(config, "rate_limit", requests_per_second=1e6, burst_size=1_000_000)
    config = config_module.replace(config, "ban", max_failures=1_000_000)
    config = config_module.replace(config, "store", url=store_url)
    config = config_module.replace(config, "cluster", redis_url=redis_url, instance_name=name)
    path = directory / f"{name}.toml"
    config_module.write(config, path)
    return path


async def rpc(session: aiohttp.ClientSession, url: str, token: str, method: str, params: Any = None) -> Any:
    """One call; its result (raises on an error answer)."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        body["params"] = params
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{url}/rpc", json=body, headers=headers) as answer:
        data = await answer.json()
    if "error" in data:
        raise RuntimeError(f"{method}: {data['error']}")
    return data["result"]


async def load(url: str, token: str, method: str, params: Sequence[Any]) -> float:
    """Run one call per entry of `params`, CONCURRENCY at a time; the wall seconds."""
    queue = list(params)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                await rpc(session, url, token, method, queue.pop())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def manifests(directory: Path, count: int) -> list[dict[str, str]]:
    """`count` manifest files to install; the apps.install params."""
    directory.mkdir(exist_ok=True)
    params = []
    for i in range(count):
        path = directory / f"app-{i}.json"
        path.write_text(json.dumps({
            "id": f"ant://bench-{i}", "name": f"Bench {i}", "version": "1.0.0",
            "iconUri": "https://example.com/i.png", "description": "bench",
            "components": [{"id": f"ant://bench-{i}-ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
        }))
        params.append({"manifest_uri": path.as_uri()})
    return params


def measure(label: str, process: ServerProcess, engines: list[int], url: str, token: str,
            calls: int, installs: list[dict[str, str]]) -> dict[str, Any]:
    """CPU µs per trivial call and per install for one running server."""
    asyncio.run(load(url, token, "apps.list", [None] * 200))  # warm up
    row: dict[str, Any] = {"mode": label}
    for name, method, params in (
        ("trivial", "apps.list", [None] * calls),
        ("install", "apps.install", installs),
    ):
        server_before = cpu_seconds(process.process.pid)
        engines_before = sum(tree_cpu(pid) for pid in engines)
        wall = asyncio.run(load(url, token, method, params))
        server = cpu_seconds(process.process.pid) - server_before
        engines_cpu = sum(tree_cpu(pid) for pid in engines) - engines_before
        row[f"{name}_server_us"] = server / len(params) * 1e6
        row[f"{name}_engines_us"] = engines_cpu / len(params) * 1e6
        row[f"{name}_per_s"] = len(params) / wall
    return row


async def revocation_latencies(a_url: str, b_url: str, token: str, count: int) -> list[float]:
    """Seconds from devices.revoke on A to the 4401 close on B, `count` times."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            code = (await rpc(session, a_url, token, "pairing.start"))["pairing"]["code"]
            grant = await rpc(session, b_url, "", "pairing.complete", {"token": code})
            ws_url = b_url.replace("http", "ws", 1) + "/ws"
            async with session.ws_connect(ws_url, headers={"Authorization": f"Bearer {grant['access_token']}"}) as ws:
                await ws.receive(timeout=10)  # connected
                started = time.perf_counter()
                await rpc(session, a_url, token, "devices.revoke", {"device_id": grant["device_id"]})
                message = await ws.receive(timeout=10)
                latencies.append(time.perf_counter() - started)
                if ws.close_code != 4401:
                    raise RuntimeError(f"closed with {ws.close_code} ({message})")
    return latencies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--installs", type=int, default=200)
    parser.add_argument("--revocations", type=int, default=200)
    args = parser.parse_args(argv)
    for binary in ("redis-server", "postgresql"):
        reason = services.missing(binary)
        if reason:
            print(f"bench/cluster.py: {reason}", file=sys.stderr)
            return 1
    work = services.scratch_dir()
    started: list[Any] = []
    try:
        redis = services.RedisServer(work)
        redis.start()
        started.append(redis)
        template_dir = work / "pg-template"
        template_dir.mkdir()
        template = services.make_pg_template(template_dir)
        pg_dir = work / "pg"
        pg_dir.mkdir()
        postgres = services.PostgresServer(pg_dir, template)
        postgres.start()
        started.append(postgres)
        token = TokenAuthority(TEST_SECRET.encode(), 3600).issue(Scope.ADMIN, None)[0]
        rows = []
        for label in ("embedded", "cluster"):
            port = services.free_port()
            if label == "cluster":
                path = write_config(work, label, port, postgres.new_database(), redis.url)
                engines = [redis.process.pid if redis.process else 0, postgres.pid or 0]
            else:
                path = write_config(work, label, port)
                engines = []
            process = ServerProcess(path)
            started.append(process)
            url = f"http://127.0.0.1:{port}"
            process.wait_ready(url, timeout=30)
            rows.append(measure(label, process, engines, url, token, args.calls,
                                manifests(work / f"manifests-{label}", args.installs)))
            process.stop()
        print(f"{'mode':<10} {'trivial µs':>11} {'+engines':>9} {'calls/s':>8} {'install µs':>11} "
              f"{'+engines':>9} {'installs/s':>10}")
        for row in rows:
            print(f"{row['mode']:<10} {row['trivial_server_us']:>11.0f} {row['trivial_engines_us']:>9.0f} "
                  f"{row['trivial_per_s']:>8.0f} {row['install_server_us']:>11.0f} "
                  f"{row['install_engines_us']:>9.0f} {row['install_per_s']:>10.0f}")
        embedded, cluster = rows
        print(f"cluster/embedded server CPU: trivial x{cluster['trivial_server_us'] / embedded['trivial_server_us']:.2f}, "
              f"install x{cluster['install_server_us'] / embedded['install_server_us']:.2f}")

        database = postgres.new_database()
        pair_processes = []
        urls = []
        for name in ("a", "b"):
            port = services.free_port()
            process = ServerProcess(write_config(work, f"rev-{name}", port, database, redis.url))
            started.append(process)
            pair_processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
        for process, url in zip(pair_processes, urls, strict=True):
            process.wait_ready(url, timeout=30)
        latencies = asyncio.run(revocation_latencies(urls[0], urls[1], token, args.revocations))
        latencies.sort()
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
        print(f"revoke on A -> 4401 on B over {len(latencies)} devices: p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    finally:
        for thing in reversed(started):
            thing.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
