"""What `synchronous=FULL` costs per install, against NORMAL: time `Store.put_app` on each.

Usage: python bench/sqlite_sync.py [--installs N] [--rounds R] [--dir DIR]
(from a checkout without the package installed: PYTHONPATH=. python bench/sqlite_sync.py)

Each round opens a fresh database in DIR (default: a temporary directory; point it at the disk
the server's state_dir lives on, since tmpfs makes fsync free), performs N committed installs
one after another, as `apps.install` does, and reports milliseconds per install. Rounds
alternate FULL and NORMAL so that disk warm-up and noise hit both alike. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Final

from osnova_server.store import AppRecord, Store

MODES: Final = ("FULL", "NORMAL")
MANIFEST: Final = {
    "id": "ant://bench",
    "name": "Bench",
    "version": "1.0.0",
    "iconUri": "https://example.com/icon.png",
    "description": "A typical small manifest",
    "components": [
        {"id": "ant://ui", "name": "UI", "kind": "frontend", "version": "1.0.0", "platform": "desktop"},
        {"id": "ant://api", "name": "API", "kind": "backend", "version": "1.0.0"},
    ],
}


async def round_ms(directory: Path, mode: str, installs: int) -> float:
    """Milliseconds per committed put_app in a fresh database with `synchronous=mode`."""
    with tempfile.TemporaryDirectory(dir=directory) as state_dir:
        store = await Store.open(Path(state_dir))
        try:
            # The store always opens with FULL; the bench reaches in to compare with NORMAL.
            await store.engine._db.execute(f"PRAGMA synchronous={mode}")
            started = time.perf_counter()
            for number in range(installs):
                await store.put_app(AppRecord(
                    id=f"ant://bench-{number}", name="Bench", version="1.0.0", description="",
                    icon_uri="https://example.com/icon.png", manifest_uri="file:///srv/bench.json",
                    manifest=MANIFEST, installed_at="2026-11-26T10:00:00Z",
                ))
            elapsed = time.perf_counter() - started
        finally:
            await store.close()
    return elapsed * 1000 / installs


async def main() -> None:
    """Run the rounds and print the median per mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--installs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(await round_ms(args.dir, mode, args.installs))
    for mode in MODES:
        values = results[mode]
        print(
            f"synchronous={mode:<6} {statistics.median(values):7.3f} ms/install "
            f"(min {min(values):.3f}, max {max(values):.3f}; {args.rounds} rounds x {args.installs})"
        )
    full, normal = (statistics.median(results[mode]) for mode in MODES)
    print(f"FULL costs {full - normal:+.3f} ms per install ({full / normal:.2f}x NORMAL)")


if __name__ == "__main__":
    asyncio.run(main())
