"""Keep N pairings in flight against a server for a while; print how many completed.

    python bench/pairing_load.py URL ADMIN_TOKEN SECONDS N

Each pairing is `pairing.start` (admin) then `pairing.complete` (public), whose argon2id hashing
is what the benchmark wants running while it measures /health.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osnova_server.client import OsnovaClient


async def worker(admin: OsnovaClient, anonymous: OsnovaClient, deadline: float) -> int:
    """Pair devices one after another until the deadline."""
    done = 0
    while time.monotonic() < deadline:
        payload = await admin.call("pairing.start", {"name": "bench"})
        await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"], "device_name": "bench"})
        done += 1
    return done


async def main() -> None:
    """Run N workers for SECONDS."""
    url, token, seconds, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + seconds
    async with OsnovaClient(url, token) as admin, OsnovaClient(url) as anonymous:
        results = await asyncio.gather(*(worker(admin, anonymous, deadline) for _ in range(count)))
    print(sum(results))


if __name__ == "__main__":
    asyncio.run(main())
