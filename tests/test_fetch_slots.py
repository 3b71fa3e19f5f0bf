"""Manifest fetch slots: `[limits] max_concurrent_fetches` in all and 2 per caller, past that -32029.

The flood test sends 700 concurrent `apps.install` calls against a loopback host that holds
every request until told to answer; the host must never see more fetches than the limit, the
others must be refused at once with `data.retry_after`, and `/health` must keep answering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from osnova_server.client import OsnovaClient
from osnova_server.errors import RATE_LIMITED, RateLimited
from osnova_server.services.fetch_slots import FetchSlots
from tests.clock import FakeClock
from tests.conftest import RunningServer, make_config, running_server
from tests.servers import bound_loopback_socket
from tests.test_apps import manifest
from tests.test_pairing import pair_device

LIMIT = 4
DEVICES = 7
BATCH = 100


# -- the slots themselves -------------------------------------------------------------------------


def test_the_limits_hold_and_a_freed_slot_serves_again() -> None:
    clock = FakeClock(100.0)
    slots = FetchSlots(3, timeout=10.0, clock=clock)
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(RateLimited) as own, slots.hold("a"):
            pass
        assert own.value.data == {"retry_after": 10}
        assert "you already run 2 manifest fetches" in own.value.message
        clock.advance(4.2)
        with slots.hold("b"):
            with pytest.raises(RateLimited) as full, slots.hold("c"):
                pass
            assert full.value.code == RATE_LIMITED
            assert full.value.data == {"retry_after": 6}  # the oldest fetch ends within 5.8 s
            assert "max_concurrent_fetches = 3" in full.value.message
        assert slots.in_flight() == 2 and slots.in_flight("a") == 2
    assert slots.in_flight() == 0
    with slots.hold("c"):
        assert slots.in_flight("c") == 1


def test_a_failed_fetch_frees_its_slot() -> None:
    slots = FetchSlots(1, timeout=5.0)
    with pytest.raises(OSError), slots.hold("a"):
        raise OSError("connection refused")
    with slots.hold("a"):
        assert slots.in_flight() == 1


def test_retry_after_is_at_least_one_second() -> None:
    clock = FakeClock(0.0)
    slots = FetchSlots(1, timeout=5.0, clock=clock)
    with slots.hold("a"):
        clock.advance(30)  # overdue: it ends any moment
        with pytest.raises(RateLimited) as refused, slots.hold("b"):
            pass
    assert refused.value.data == {"retry_after": 1}


# -- 700 concurrent installs against a slow host ------------------------------------------------------


class SlowHost:
    """A loopback manifest host that holds every request until released, counting them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.peak = 0
        self.served = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        """Hold, then answer a valid manifest."""
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        self.served += 1
        return web.json_response(manifest(name="Slow"))


@asynccontextmanager
async def serving_slow_host() -> AsyncIterator[SlowHost]:
    """A SlowHost on an ephemeral loopback port, released and stopped at the end."""
    host = SlowHost()
    app = web.Application()
    app.router.add_get("/slow.json", host.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    sock = bound_loopback_socket()
    site = web.SockSite(runner, sock)
    await site.start()
    host.url = f"http://127.0.0.1:{sock.getsockname()[1]}/slow.json"
    try:
        yield host
    finally:
        host.release.set()
        await runner.cleanup()


@pytest.fixture
async def slow_host() -> AsyncIterator[SlowHost]:
    """The slow host on an ephemeral loopback port."""
    async with serving_slow_host() as host:
        yield host


@pytest.fixture
async def fetching_server(state_dir: Path) -> AsyncIterator[RunningServer]:
    """A server that may fetch http:// manifests, with at most LIMIT fetches at once."""
    config = make_config(state_dir, apps={"allow_http": True, "fetch_timeout": 30.0},
                         limits={"max_concurrent_fetches": LIMIT})
    async with running_server(config) as server:
        yield server


async def eventually(check: Any, timeout: float = 20.0) -> None:
    """Poll `check()` every 20 ms until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_700_concurrent_installs_fetch_at_most_the_limit_and_the_rest_get_retry_after(
    fetching_server: RunningServer, slow_host: SlowHost,
) -> None:
    server = fetching_server
    owners = [await pair_device(server, name=f"owner {n}", role="owner") for n in range(DEVICES)]
    batch = [
        {"jsonrpc": "2.0", "method": "apps.install", "params": {"manifest_uri": slow_host.url}, "id": n}
        for n in range(BATCH)
    ]
    clients = [OsnovaClient(server.url, owner["access_token"], timeout=60) for owner in owners]
    try:
        sent = [asyncio.ensure_future(client.post(batch)) for client in clients]
        await eventually(lambda: slow_host.in_flight == LIMIT)
        # While the host holds them: the server answers, and one more install is refused at once.
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"{server.url}/health", timeout=aiohttp.ClientTimeout(total=10)) as health:
                    assert health.status == 200
        async with server.client(admin=True) as admin:
            answer = await admin.post({"jsonrpc": "2.0", "method": "apps.install",
                                       "params": [slow_host.url], "id": "late"})
        assert answer["error"]["code"] == RATE_LIMITED
        assert 1 <= answer["error"]["data"]["retry_after"] <= 30
        assert server.runtime.apps.fetch_slots.in_flight() == LIMIT
        slow_host.release.set()
        answers = [member for batch_answer in await asyncio.gather(*sent) for member in batch_answer]
    finally:
        for client in clients:
            await client.close()
    assert len(answers) == DEVICES * BATCH
    installed = [a for a in answers if "result" in a]
    refused = [a for a in answers if "error" in a]
    assert [a["result"] for a in installed] == ["ant://notes"] * LIMIT
    assert {a["error"]["code"] for a in refused} == {RATE_LIMITED}
    assert all(a["error"]["data"]["retry_after"] >= 1 for a in refused)
    assert (slow_host.peak, slow_host.served) == (LIMIT, LIMIT)
    assert server.runtime.apps.fetch_slots.in_flight() == 0
    async with server.client(admin=True) as admin:
        assert [app["name"] for app in await admin.call("apps.list")] == ["Slow"]


async def test_one_caller_holds_at_most_two_fetches(fetching_server: RunningServer, slow_host: SlowHost) -> None:
    server = fetching_server
    owner = await pair_device(server, role="owner")
    request = {"jsonrpc": "2.0", "method": "apps.install", "params": [slow_host.url]}
    async with OsnovaClient(server.url, owner["access_token"]) as client:
        batch = asyncio.ensure_future(client.post([{**request, "id": n} for n in range(5)]))
        await eventually(lambda: slow_host.in_flight == 2)
        slow_host.release.set()
        answers = await batch
    assert [("result" in a, a.get("error", {}).get("code")) for a in answers].count((True, None)) == 2
    assert sum(a.get("error", {}).get("code") == RATE_LIMITED for a in answers) == 3
    assert json.dumps(answers).count("you already run 2 manifest fetches") == 3
