"""Rate-limit buckets in Redis: one caller's budget is shared by every instance."""

from __future__ import annotations

import asyncio
from pathlib import Path

from osnova_server.client import RpcCallError, TransportError
from tests.cluster import two_servers


async def test_20_calls_over_a_and_b_at_5_rps_burst_10_give_at_most_11(tmp_path: Path, redis_url: str) -> None:
    limits = {"rate_limit": {"requests_per_second": 5.0, "burst_size": 10}}
    async with two_servers(tmp_path, redis_url, **limits) as (a, b):
        # One admin token: the bucket is the token's, whichever instance its call reaches.
        token = a.admin_token()
        clients = [a.client(token), b.client(token)]
        successes = refusals = 0
        try:
            for i in range(20):
                try:
                    await clients[i % 2].call("config.getServer")
                    successes += 1
                except TransportError as err:
                    assert err.status == 429
                    refusals += 1
                except RpcCallError:
                    successes += 1  # answered, so charged and let through
        finally:
            await asyncio.gather(*(client.close() for client in clients))
    assert successes + refusals == 20
    assert 10 <= successes <= 11, successes
    # Each instance alone would have let all of its 10 calls through.
    assert refusals >= 9


async def test_buckets_are_separate_per_caller(tmp_path: Path, redis_url: str) -> None:
    limits = {"rate_limit": {"requests_per_second": 1.0, "burst_size": 2}}
    async with two_servers(tmp_path, redis_url, **limits) as (a, b):
        first = a.admin_token()
        second = b.admin_token()
        waits = [await a.runtime.limiter.acquire(f"token:{t}") for t in (first, first, second, second)]
        assert waits == [0.0, 0.0, 0.0, 0.0]
        assert await b.runtime.limiter.acquire(f"token:{first}") > 0
