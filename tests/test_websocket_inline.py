"""/ws runs each message in its reading task: what that must not change.

A message that answers without waiting is answered before the next frame is read; one that has
to wait goes on in the task it started in while reading goes on in a new one. So quick answers
keep the order of their requests and are not held up by a call that waits, a waiting call's own
`asyncio.timeout` (the manifest fetch's) ends that call and nothing else, and answers written at
once and answers that had to queue behind a full socket buffer go out in one order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest

from osnova_server.web.websocket import QUICK_RUN
from tests.conftest import RunningServer, make_config, running_server
from tests.test_fetch_slots import SlowHost, serving_slow_host
from tests.test_websocket import auth_message, connected, eventually, pool_of, request, ws_connect

QUICK = 20


@pytest.fixture
async def held_host() -> AsyncIterator[SlowHost]:
    """A loopback manifest host that holds every request until released."""
    async with serving_slow_host() as host:
        yield host


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


# -- a client that floods one socket must let the loop serve the others -----------------------

PING: Final = 0x9
PONG: Final = 0xA
TEXT: Final = 0x1


async def _raw_socket(
    server: RunningServer, authenticated: bool = True,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket client (so a flood is one write); with a header token, `connected` read."""
    port = server.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    token = f"Authorization: Bearer {server.admin_token()}\r\n" if authenticated else ""
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{token}\r\n".encode(),
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    if authenticated:
        opcode, hello = await asyncio.wait_for(_read_frame(reader), 5)
        assert opcode == TEXT and json.loads(hello)["method"] == "connected"
    return reader, writer


def _frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked client frame (an all-zero mask: the payload goes as it is)."""
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack("!H", size)
    return bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: its opcode and payload (no task per frame: no loop turn either)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


class _LoopTurns:
    """Counts the loop's turns while a flood is served: how often other sockets could run.

    The client reads with no timeout per frame (asyncio.wait_for makes a task, a turn, each), so
    the turns counted are the server's pauses and the client's reads of a whole socket buffer.
    """

    def __init__(self) -> None:
        self.turns = 0
        self._task = asyncio.create_task(self._count())

    async def _count(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turns += 1

    async def stop(self) -> int:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.turns


@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "before-auth"])
async def test_a_flood_of_pings_in_one_read_lets_the_loop_run_every_quick_run_frames(
    state_dir: Path, authenticated: bool,
) -> None:
    # 40,000 empty pings are 240 KB, one socket read; each is answered without waiting, so
    # without a pause the reader answered them all in one go and held the loop for it (also
    # on a socket still waiting for its `auth` message: anyone on the LAN could).
    pings = 40_000
    async with running_server(make_config(state_dir)) as server:
        reader, writer = await _raw_socket(server, authenticated)
        try:
            counting = _LoopTurns()
            after = request("apps.list", request_id="after") if authenticated else auth_message(server.admin_token())
            writer.write(_frame(PING) * pings + _frame(TEXT, after.encode()))
            pongs = 0
            async with asyncio.timeout(10):
                while (frame := await _read_frame(reader))[0] == PONG:
                    pongs += 1
            turns = await counting.stop()
            assert pongs == pings
            expected: dict[str, Any] = {"jsonrpc": "2.0", "result": [] if authenticated else True, "id": "after" if authenticated else 1}
            assert json.loads(frame[1]) == expected
            # One pause per QUICK_RUN frames would be 625; with none, a handful (one per read).
            assert turns >= pings // QUICK_RUN // 2
        finally:
            writer.close()


async def test_pipelined_batches_let_the_loop_run_every_quick_run_calls(state_dir: Path) -> None:
    # A batch's members are calls too: 64 batches of 100 quick calls in a row held the loop
    # for 6,400 calls where 64 single calls would have held it for 64.
    batches, size = 50, 100
    config = make_config(state_dir, rate_limit={"requests_per_second": 100_000.0, "burst_size": 100_000})
    async with running_server(config) as server:
        reader, writer = await _raw_socket(server)
        try:
            counting = _LoopTurns()
            batch = json.dumps([json.loads(request("apps.list", request_id=i)) for i in range(size)]).encode()
            writer.write(_frame(TEXT, batch) * batches)
            async with asyncio.timeout(10):
                for _ in range(batches):
                    opcode, answer = await _read_frame(reader)
                    assert opcode == TEXT and [member["result"] for member in json.loads(answer)] == [[]] * size
            turns = await counting.stop()
            # One pause per QUICK_RUN calls would be 78 (one per batch here); one per 64 batches, 1.
            assert turns >= batches * size // QUICK_RUN // 2
        finally:
            writer.close()


async def test_frames_skipped_while_draining_let_the_loop_run_every_quick_run_frames(
    state_dir: Path, held_host: SlowHost,
) -> None:
    # A socket closing with a grace period (a revoked device, a shutdown) skips the calls that
    # still arrive, without waiting: a flood of them in one read must pause like any other.
    frames = 40_000
    config = make_config(state_dir, apps={"allow_http": True, "fetch_timeout": 30.0})
    async with running_server(config) as server:
        reader, writer = await _raw_socket(server)
        try:
            writer.write(_frame(TEXT, request("apps.install", {"manifest_uri": held_host.url}, "install").encode()))
            await eventually(lambda: _true(held_host.in_flight == 1))
            (connection,) = list(pool_of(server))
            connection.close(1001, "going away", grace=30.0)  # drains while the install is held
            await eventually(lambda: _true(connection.draining))
            counting = _LoopTurns()
            writer.write(_frame(TEXT, b"{}") * frames + _frame(PING, b"end"))
            async with asyncio.timeout(10):
                assert await _read_frame(reader) == (PONG, b"end")  # nothing else: the calls were skipped
            turns = await counting.stop()
            assert turns >= frames // QUICK_RUN // 2
        finally:
            held_host.release.set()  # the install ends, and with it the grace: no wait at shutdown
            writer.close()
