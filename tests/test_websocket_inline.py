"""/ws runs each message in its reading task: what that must not change.

A message that answers without waiting is answered before the next frame is read; one that has
to wait goes on in the task it started in while reading goes on in a new one. So quick answers
keep the order of their requests and are not held up by a call that waits, a waiting call's own
`asyncio.timeout` (the manifest fetch's) ends that call and nothing else, and answers written at
once and answers that had to queue behind a full socket buffer go out in one order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import make_config, running_server
from tests.servers import bound_loopback_socket
from tests.test_fetch_slots import SlowHost
from tests.test_websocket import connected, eventually, pool_of, request, ws_connect

QUICK = 20


@pytest.fixture
async def held_host() -> AsyncIterator[SlowHost]:
    """A loopback manifest host that holds every request until released."""
    host = SlowHost()
    app = web.Application()
    app.router.add_get("/held.json", host.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    sock = bound_loopback_socket()
    await web.SockSite(runner, sock).start()
    host.url = f"http://127.0.0.1:{sock.getsockname()[1]}/held.json"
    yield host
    host.release.set()
    await runner.cleanup()


async def _true(value: bool) -> bool:
    return value


async def test_quick_calls_are_answered_in_order_while_a_call_waits_and_it_answers_after(
    state_dir: Path, held_host: SlowHost,
) -> None:
    config = make_config(state_dir, apps={"allow_http": True, "fetch_timeout": 30.0})
    async with running_server(config) as server, ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        (connection,) = list(pool_of(server))
        await ws.send(request("events.subscribe", {"topics": ["apps.installed"]}, "subscribe"))
        assert json.loads(await ws.recv())["result"] is True
        await ws.send(request("apps.install", {"manifest_uri": held_host.url}, "install"))
        for number in range(QUICK):
            await ws.send(request("apps.list", request_id=number))
        ids = [json.loads(await asyncio.wait_for(ws.recv(), 5))["id"] for _ in range(QUICK)]
        assert ids == list(range(QUICK))  # none held up by the install, and in their order
        assert held_host.in_flight == 1 and connection.calls == 1
        held_host.release.set()
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        second = json.loads(await asyncio.wait_for(ws.recv(), 10))
        # The install publishes its event before it answers, as it did before.
        assert first["method"] == "event" and first["params"]["topic"] == "apps.installed"
        assert second["id"] == "install" and isinstance(second["result"], str)
        await eventually(lambda: _true(connection.calls == 0))
        await ws.send(request("apps.list", request_id="after"))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["id"] == "after" and len(answer["result"]) == 1


async def test_a_waiting_calls_own_timeout_ends_that_call_only(state_dir: Path, held_host: SlowHost) -> None:
    # The fetch enters asyncio.timeout before it first waits: that timeout must cancel the task
    # running the install, never the one reading the socket.
    config = make_config(state_dir, apps={"allow_http": True, "fetch_timeout": 0.3})
    async with running_server(config) as server, ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        await ws.send(request("apps.install", {"manifest_uri": held_host.url}, "install"))
        await eventually(lambda: _true(held_host.in_flight == 1))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["id"] == "install" and answer["error"]["code"] == -32006
        for number in range(3):
            await ws.send(request("apps.list", request_id=number))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"jsonrpc": "2.0", "result": [], "id": number}
        assert len(pool_of(server)) == 1


async def test_answers_written_at_once_and_answers_queued_behind_a_full_buffer_keep_their_order(
    state_dir: Path,
) -> None:
    config = make_config(state_dir, limits={"max_ws_queue_bytes": 65_536})
    async with running_server(config) as server, ws_connect(server, server.admin_token(), max_size=None) as ws:
        await connected(ws)
        (connection,) = list(pool_of(server))
        count = 400
        # rpc.discover answers are large: 400 of them, unread, overflow the kernel's buffers and
        # the transport's, so later answers queue behind earlier ones that were written at once.
        for number in range(count):
            await ws.send(request("rpc.discover", request_id=number))
        await eventually(lambda: _true(connection.queued_bytes > 0), timeout=10)
        server.runtime.events.publish("config.changed", {"key": "k", "value": "v"})  # nobody subscribed
        received: list[Any] = []
        while len(received) < count:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["id"])
        assert received == list(range(count))
        await eventually(lambda: _true(connection.queued_bytes == 0 and not connection.outgoing))
        await ws.send(request("apps.list", request_id="last"))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["id"] == "last"
