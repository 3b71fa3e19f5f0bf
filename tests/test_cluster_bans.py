"""Ban counters in Redis and bans announced to every instance."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.cluster import call, two_servers, wait_for

BANS = {"ban": {"max_failures": 4, "window": 600, "duration": 600}}


async def _bad_token(session: aiohttp.ClientSession, url: str) -> int:
    """One request with a forged token; the status it got."""
    async with session.post(f"{url}/rpc", json={"jsonrpc": "2.0", "method": "status.get", "id": 1},
                            headers={"Authorization": "Bearer forged"}) as answer:
        return answer.status


async def _health(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/health") as answer:
        return answer.status


async def test_failures_spread_over_a_and_b_ban_the_address_on_both(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url, **BANS) as (a, b), aiohttp.ClientSession() as session:
        for server in (a, b, a):
            assert await _bad_token(session, server.url) == 401
        assert a.runtime.bans.banned("127.0.0.1") is None and b.runtime.bans.banned("127.0.0.1") is None
        assert await _bad_token(session, b.url) == 401  # the fourth, on B
        for server in (a, b):
            await wait_for(lambda server=server: server.runtime.bans.banned("127.0.0.1"), what="the ban")
            assert await _health(session, server.url) == 403


async def test_a_lift_on_b_ends_the_ban_on_a(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url, **BANS) as (a, b), aiohttp.ClientSession() as session:
        a.runtime.bans.ban("192.0.2.7", "test")
        await wait_for(lambda: b.runtime.bans.banned("192.0.2.7"), what="the ban reaching B")
        assert await call(b, "bans.lift", {"address": "192.0.2.7"}) is True
        await wait_for(lambda: a.runtime.bans.banned("192.0.2.7") is None, what="the lift reaching A")
        assert await _health(session, a.url) == 200
