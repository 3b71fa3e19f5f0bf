"""Rate limiting through a real server: 429 with Retry-After, batch costs, buckets, bounded memory."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server.security.ratelimit import RateLimiter
from tests.conftest import RunningServer, make_config, running_server
from tests.test_pairing import pair_device

BURST = 5


@pytest.fixture
async def limited(state_dir: Path) -> AsyncIterator[RunningServer]:
    """A server whose buckets hold 5 tokens and barely refill (one per 100 s)."""
    config = make_config(state_dir, rate_limit={"requests_per_second": 0.01, "burst_size": BURST})
    async with running_server(config) as server:
        yield server


def starts(count: int) -> list[dict[str, Any]]:
    """A batch of `count` pairing.start calls (each leaves a code behind when it runs)."""
    return [{"jsonrpc": "2.0", "method": "pairing.start", "id": index} for index in range(count)]


async def post(
    http: aiohttp.ClientSession, server: RunningServer, payload: Any, token: str | None,
) -> tuple[int, dict[str, str], Any]:
    """POST /rpc; return status, headers and the decoded body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{server.url}/rpc", data=json.dumps(payload), headers=headers) as answer:
        return answer.status, dict(answer.headers), await answer.json(content_type=None)


def assert_limited(status: int, headers: dict[str, str], body: Any) -> None:
    """429 with a whole-second Retry-After of at least 1 and a JSON body."""
    assert status == 429
    assert headers["Retry-After"].isdigit() and int(headers["Retry-After"]) >= 1
    assert "rate limit" in body["error"]


async def test_over_the_limit_is_429_and_nothing_runs(limited: RunningServer, http: aiohttp.ClientSession) -> None:
    token = limited.admin_token()
    for _ in range(BURST):
        status, _, body = await post(http, limited, starts(1)[0], token)
        assert status == 200 and "result" in body
    assert limited.runtime.pairing.outstanding() == BURST
    assert_limited(*await post(http, limited, starts(1)[0], token))
    assert limited.runtime.pairing.outstanding() == BURST


async def test_each_batch_member_costs_one(limited: RunningServer, http: aiohttp.ClientSession) -> None:
    token = limited.admin_token()
    status, _, body = await post(http, limited, starts(3), token)
    assert status == 200 and len(body) == 3
    # Two tokens left: a batch of three is refused whole, and none of it runs.
    assert_limited(*await post(http, limited, starts(3), token))
    assert limited.runtime.pairing.outstanding() == 3
    status, _, body = await post(http, limited, starts(2), token)
    assert status == 200 and len(body) == 2
    assert limited.runtime.pairing.outstanding() == 5


async def test_a_batch_larger_than_the_burst_never_runs(limited: RunningServer, http: aiohttp.ClientSession) -> None:
    assert_limited(*await post(http, limited, starts(BURST + 1), limited.admin_token()))
    assert limited.runtime.pairing.outstanding() == 0


async def test_buckets_are_per_device_per_admin_token_and_per_address(
    limited: RunningServer, http: aiohttp.ClientSession,
) -> None:
    first, second = limited.admin_token(), limited.admin_token()
    assert (await post(http, limited, starts(BURST), first))[0] == 200
    assert (await post(http, limited, starts(1), first))[0] == 429
    assert (await post(http, limited, starts(1), second))[0] == 200
    # A device's bucket is the device's, whichever of its tokens it uses.
    grant = await pair_device(limited)
    status_get = {"jsonrpc": "2.0", "method": "status.get", "id": 1}
    assert (await post(http, limited, [status_get] * BURST, grant["access_token"]))[0] == 200
    assert (await post(http, limited, status_get, grant["access_token"]))[0] == 429


async def test_anonymous_callers_are_limited_per_address(limited: RunningServer) -> None:
    wrong_code = {"jsonrpc": "2.0", "method": "pairing.complete", "params": {"token": "ZZZZ-ZZZZ"}, "id": 1}
    for address, expected in (("127.0.0.5", [200] * BURST + [429]), ("127.0.0.6", [200])):
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            statuses = [(await post(session, limited, wrong_code, None))[0] for _ in expected]
        assert statuses == expected


async def test_health_status_and_metrics_are_not_limited(limited: RunningServer, http: aiohttp.ClientSession) -> None:
    for _ in range(BURST * 3):
        for path in ("/health", "/status", "/metrics"):
            async with http.get(f"{limited.url}{path}") as answer:
                assert answer.status == 200


async def test_limiter_memory_stays_bounded_over_real_sockets(osnova: RunningServer) -> None:
    """Hundreds of distinct source addresses: the limiter keeps at most its cap of buckets."""
    cap = 50
    limiter = RateLimiter(10_000, 10_000, max_buckets=cap)
    osnova.runtime.limiter = limiter
    parse_error = b"{"  # charged to the caller's address, then answered -32700

    async def from_address(index: int) -> int:
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.{1 + index // 250}.{1 + index % 250}", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(f"{osnova.url}/rpc", data=parse_error) as answer,
        ):
            assert (await answer.json())["error"]["code"] == -32700
            return answer.status

    started = time.perf_counter()
    statuses = await asyncio.gather(*(from_address(index) for index in range(400)))
    assert statuses == [200] * 400
    assert len(limiter) == cap
    assert time.perf_counter() - started < 10
