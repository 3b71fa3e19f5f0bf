"""Server memory under the batch amplification: three unread 5 KB batches of 100 `apps.list`.

    python bench/batch_amplification.py [--before DIR] [--apps 4] [--app-bytes 1000000]

Starts osnova-server from this checkout (and, with `--before`, from another one) on loopback,
installs `--apps` apps of about `--app-bytes` each from file:// manifests, pairs a member device,
then sends three batches of 100 `apps.list` on three connections and reads nothing. Once each
answer's first bytes have arrived (peeked at, not read), it prints the server's RSS before, its
peak (VmHWM, reset just before the batches) and its RSS then, from /proc/PID/status. Every
process started is stopped; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import call_path  # bench/call_path.py: starting a server from a checkout with a member device
import run  # bench/run.py

ROOT: Final = Path(__file__).resolve().parent.parent
BATCHES: Final = 3
CALLS: Final = 100


def status_kib(pid: int, key: str) -> int:
    """One `Vm...` line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def install(process: run.Process, admin: str, directory: Path, count: int, size: int) -> None:
    """Install `count` apps of about `size` bytes from file:// manifests, as admin."""
    for index in range(count):
        path = directory / f"big-{index}.json"
        path.write_text(json.dumps({
            "id": f"ant://big-{index}", "name": f"Big {index}", "version": "1.0.0",
            "iconUri": "https://example.com/i.png", "description": "large",
            "components": [{"id": f"ant://big-{index}-ui", "name": "UI", "kind": "frontend", "version": "1.0.0",
                            "config": {"blob": "x" * size}}],
        }))
        answer = call_path._post(process.url, admin, {
            "jsonrpc": "2.0", "method": "apps.install", "params": [path.as_uri()], "id": index,
        })
        if "error" in answer:
            raise RuntimeError(f"install failed: {answer['error']}")


def measure(checkout: Path, workdir: Path, name: str, apps: int, size: int) -> dict[str, Any]:
    """Run the case against one checkout; its memory figures in MiB."""
    process = call_path.start(checkout, workdir, name)
    try:
        config = next(Path(workdir).glob(f"{name}-*/bench.toml"))
        admin = subprocess.run(
            [sys.executable, "-m", "osnova_server", "--config", str(config), "token"],
            env=call_path._env(checkout), cwd=checkout, check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        install(process, admin, Path(workdir), apps, size)
        call_path._post(process.url, process.token, {"jsonrpc": "2.0", "method": "apps.list", "id": 0})
        pid = process.popen.pid
        before = status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM counts from here
        body = json.dumps([{"jsonrpc": "2.0", "method": "apps.list", "id": n} for n in range(CALLS)],
                          separators=(",", ":")).encode()
        port = int(process.url.rsplit(":", 1)[1])
        request = (
            f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {process.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(BATCHES)]
        started = time.monotonic()
        try:
            for sock in sockets:
                sock.sendall(request)
            pending = list(sockets)
            while pending and time.monotonic() - started < 120:
                readable, _, _ = select.select(pending, [], [], 1)
                pending = [sock for sock in pending if sock not in readable]
            answered = time.monotonic() - started
            time.sleep(1.0)
            figures = {
                "checkout": name, "body_bytes": len(body), "rss_before_mib": before / 1024,
                "peak_mib": status_kib(pid, "VmHWM") / 1024, "rss_after_mib": status_kib(pid, "VmRSS") / 1024,
                "answered_s": answered, "unanswered": len(pending),
            }
        finally:
            for sock in sockets:
                sock.close()
        return figures
    finally:
        process.stop()


def main() -> int:
    """Measure each checkout and print one line per checkout."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--apps", type=int, default=4)
    parser.add_argument("--app-bytes", type=int, default=1_000_000)
    args = parser.parse_args()
    checkouts = {**({"before": args.before.resolve()} if args.before else {}), "after": ROOT}
    print(f"{'checkout':<8} {'body B':>7} {'RSS before':>11} {'peak':>9} {'RSS then':>9} {'answered':>9}")
    for name, path in checkouts.items():
        with tempfile.TemporaryDirectory(prefix="osnova-amplification-") as workdir:
            f = measure(path, Path(workdir), name, args.apps, args.app_bytes)
        print(f"{f['checkout']:<8} {f['body_bytes']:>7} {f['rss_before_mib']:>7.0f} MiB {f['peak_mib']:>5.0f} MiB "
              f"{f['rss_after_mib']:>5.0f} MiB {f['answered_s']:>7.1f} s" + (
                  f"  ({f['unanswered']} not answered in 120 s)" if f["unanswered"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
