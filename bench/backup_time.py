"""How long `osnova-server backup` takes with 1,000 apps installed, idle and while the server writes.

Usage: python bench/backup_time.py [--apps N] [--rounds R] [--dir DIR]
(from a checkout without the package installed: PYTHONPATH=. python bench/backup_time.py)

Fills a fresh state dir in DIR (default: a temporary directory; point it at the disk a real
state_dir lives on, since tmpfs makes fsync free) with N apps installed through a real server
(`apps.install` of file:// manifests, as an admin does), then, R rounds each, times:

- `cli`: the whole `osnova-server backup` command as a user runs it (a new Python process:
  start-up, snapshot, tar, fsync), with no server running;
- `cli, serving`: the same while a server holds the state dir and installs apps meanwhile;
- `write_backup`: the library call alone, in this process, no server running.

Prints the median and the spread in milliseconds, and the backup's size. Not part of the tests;
everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from osnova_server import config as config_module
from osnova_server.backup import StatePaths, write_backup
from osnova_server.client import OsnovaClient
from osnova_server.security.tokens import Scope
from osnova_server.server import Server
from osnova_server.web.keys import STATE_KEY

SECRET: Final = "0123456789abcdef0123456789abcdef0123456789abcdef"


def manifest(n: int) -> dict[str, object]:
    """A typical small manifest, the n-th of its kind."""
    return {
        "id": f"ant://bench-{n}",
        "name": f"Bench {n}",
        "version": "1.0.0",
        "iconUri": "https://example.com/icon.png",
        "description": "A typical small manifest for the backup benchmark",
        "components": [
            {"id": f"ant://bench-{n}/ui", "name": "UI", "kind": "frontend", "version": "1.0.0", "platform": "desktop"},
            {"id": f"ant://bench-{n}/api", "name": "API", "kind": "backend", "version": "1.0.0"},
        ],
    }


def make_config(work: Path) -> tuple[config_module.Config, Path]:
    """A loopback config with its state in work/state, written to work/server.toml."""
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address="127.0.0.1:0", state_dir=str(work / "state"))
    config = config_module.replace(config, "auth", jwt_secret=SECRET)
    config = config_module.replace(config, "logging", level="warning", format="text")
    config = config_module.replace(config, "rate_limit", requests_per_second=100_000.0, burst_size=100_000)
    path = work / "server.toml"
    config_module.write(config, path)
    return config_module.load(path), path


async def install_apps(config: config_module.Config, work: Path, count: int, first: int = 0) -> None:
    """Install `count` apps through a real server, 20 calls in flight."""
    server = Server(config)
    await server.start()
    try:
        runtime = server.app[STATE_KEY].runtime
        token = runtime.tokens.issue(Scope.ADMIN, None, 3600)[0]
        async with OsnovaClient(f"http://127.0.0.1:{server.port}", token) as admin:
            semaphore = asyncio.Semaphore(20)

            async def one(n: int) -> None:
                path = work / "manifests" / f"{n}.json"
                path.write_text(json.dumps(manifest(n)))
                async with semaphore:
                    await admin.call("apps.install", {"manifest_uri": path.as_uri()})

            (work / "manifests").mkdir(exist_ok=True)
            await asyncio.gather(*(one(n) for n in range(first, first + count)))
            assert len(await admin.call("apps.list")) >= count
    finally:
        await server.stop()


def run_cli(config_path: Path, output: Path) -> float:
    """Milliseconds of one `osnova-server backup` process."""
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "osnova_server", "--config", str(config_path), "backup", "--output", str(output)],
        capture_output=True, text=True, check=False,
    )
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"backup failed: {done.stderr}")
    return elapsed


async def cli_while_serving(config: config_module.Config, config_path: Path, work: Path, rounds: int) -> list[float]:
    """Time the CLI while a server runs on the state dir and keeps installing apps."""
    server = Server(config)
    await server.start()
    try:
        token = server.app[STATE_KEY].runtime.tokens.issue(Scope.ADMIN, None, 3600)[0]
        async with OsnovaClient(f"http://127.0.0.1:{server.port}", token) as admin:
            stop = asyncio.Event()

            async def keep_writing() -> None:
                n = 1_000_000
                while not stop.is_set():
                    path = work / "manifests" / "busy.json"
                    path.write_text(json.dumps(manifest(n % 50 + 1_000_000)))
                    await admin.call("apps.install", {"manifest_uri": path.as_uri()})
                    n += 1

            writer = asyncio.create_task(keep_writing())
            times = [await asyncio.to_thread(run_cli, config_path, work / "serving.tar") for _ in range(rounds)]
            stop.set()
            await writer
            return times
    finally:
        await server.stop()


def summary(name: str, times: list[float]) -> str:
    """One line: median and range in milliseconds."""
    return f"{name:<16} median {statistics.median(times):7.1f} ms   min {min(times):7.1f}   max {max(times):7.1f}   (n={len(times)})"


def version_ms() -> float:
    """Milliseconds of `osnova-server version`: Python start-up and the CLI's imports, for scale."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "osnova_server", "version"], capture_output=True, check=True)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    """Parse arguments, fill the state dir, time each way of taking a backup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        work = Path(name)
        config, config_path = make_config(work)
        started = time.perf_counter()
        asyncio.run(install_apps(config, work, args.apps))
        print(f"installed {args.apps} apps in {time.perf_counter() - started:.1f} s")
        cold = [run_cli(config_path, work / "cold.tar") for _ in range(args.rounds)]
        paths = StatePaths(config.state_dir, config.secret_file, config.source)
        library = []
        for _ in range(args.rounds):
            (work / "lib.tar").unlink(missing_ok=True)
            began = time.perf_counter()
            write_backup(paths, work / "lib.tar")
            library.append((time.perf_counter() - began) * 1000)
        serving = asyncio.run(cli_while_serving(config, config_path, work, args.rounds))
        size = (work / "cold.tar").stat().st_size
        database = os.path.getsize(config.state_dir / "osnova.db")
        print(f"backup file {size / 1024:.0f} KiB (database {database / 1024:.0f} KiB)")
        print(summary("cli", cold))
        print(summary("cli, serving", serving))
        print(summary("write_backup", library))
        print(f"for scale: `osnova-server version` takes {version_ms():.0f} ms")


if __name__ == "__main__":
    main()
