"""CPU per call of the embedded store: a read and a one-transaction write on SQLite.

    python bench/store_calls.py            # this tree
    PYTHONPATH=/other/tree python bench/store_calls.py

Prints CPU and wall µs per `Store.setting()` (5,000 reads) and per `Store.put_setting()`
(1,000 commits, each synced to disk) on a database in a temp dir; run it on two trees, in
turns, to compare the default path before and after a change.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import osnova_server.store as store_module
from osnova_server.store import Store

READS = 5000
WRITES = 1000


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp))
        for _ in range(200):  # warm up
            await store.put_setting("k", "v")
            await store.setting("k")
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(READS):
            await store.setting("k")
        read_cpu = (time.process_time() - cpu) / READS * 1e6
        read_wall = (time.perf_counter() - wall) / READS * 1e6
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(WRITES):
            await store.put_setting("k", str(i))
        write_cpu = (time.process_time() - cpu) / WRITES * 1e6
        write_wall = (time.perf_counter() - wall) / WRITES * 1e6
        await store.close()
    print(
        f"{store_module.__file__}: read {read_cpu:.1f} µs CPU ({read_wall:.1f} wall), "
        f"write {write_cpu:.1f} µs CPU ({write_wall:.1f} wall)"
    )


if __name__ == "__main__":
    asyncio.run(main())
