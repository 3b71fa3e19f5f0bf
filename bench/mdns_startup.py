"""What advertising over mDNS costs a start: process start to the first /health answer, mdns on vs off.

    sudo python bench/mdns_startup.py [--runs N]

Each run starts `osnova-server serve` bound to 0.0.0.0 in a network namespace of its own (two
namespaces joined by a veth pair, addresses in 10.231.0.0/16 that exist only there, so the
multicast never leaves them), polls /health from inside that namespace, and, with mdns on, also
times how long until a python-zeroconf browser on the second namespace sees the record. Runs
alternate on and off so machine load hits both alike. Needs root (ip netns).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from osnova_server import config as config_module
from osnova_server.discovery import SERVICE_TYPE
from tests.netns import Lan, two_machines

SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef"


def _config(state: Path, port: int, mdns: bool | str) -> Path:
    """A server config bound to every interface of its namespace."""
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=f"0.0.0.0:{port}", state_dir=str(state))
    config = config_module.replace(config, "auth", jwt_secret=SECRET)
    config = config_module.replace(config, "logging", level="warning", format="text")
    config = config_module.replace(config, "discovery", mdns=mdns, name="bench")
    path = state.parent / "server.toml"
    config_module.write(config, path)
    return path


async def _one_run(lan: Lan, workdir: Path, mdns: bool | str) -> tuple[float, float | None]:
    """Seconds from exec to /health, and (mdns on) to the record being seen on the second machine."""
    state = workdir / f"run-{time.monotonic_ns()}" / "state"
    state.parent.mkdir(parents=True)
    port = 8080
    config_path = _config(state, port, mdns)
    seen = asyncio.Event()
    with lan.second.entered():
        aiozc = AsyncZeroconf(interfaces=[lan.second.address], ip_version=IPVersion.V4Only)

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            seen.set()

    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *lan.server.command(sys.executable, "-m", "osnova_server", "--config", str(config_path), "serve"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ready = await asyncio.to_thread(_wait_healthy, lan, port, started)
        visible = None
        if mdns:
            await asyncio.wait_for(seen.wait(), 30)
            visible = time.monotonic() - started
        return ready, visible
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
        await browser.async_cancel()
        await aiozc.async_close()


def _wait_healthy(lan: Lan, port: int, started: float) -> float:
    """Poll /health from the server's namespace; seconds since `started`."""
    with lan.server.entered():
        while True:
            try:
                with urllib.request.urlopen(f"http://{lan.server.address}:{port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.005)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each (default 10)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"on": [], "off": [], "visible": []}
    with tempfile.TemporaryDirectory() as tmp, two_machines() as lan:
        for _ in range(args.runs):
            for mode, mdns in (("on", "auto"), ("off", False)):
                ready, visible = await _one_run(lan, Path(tmp), mdns)
                results[mode].append(ready)
                if visible is not None:
                    results["visible"].append(visible)
    print(f"host {socket.gethostname()}, {args.runs} runs each, Python {sys.version.split()[0]}")
    for label, key in (("start to ready, mdns on ", "on"), ("start to ready, mdns off", "off"),
                       ("start to record seen on the LAN", "visible")):
        values = results[key]
        print(f"{label}: median {statistics.median(values):.3f} s, min {min(values):.3f} s, max {max(values):.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
