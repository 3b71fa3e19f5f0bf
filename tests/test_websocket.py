"""GET /ws through a real server on a loopback port, with aiohttp's client and the `websockets` library."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
import pytest
from websockets.asyncio.client import ClientConnection as WebsocketsClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from osnova_server import config as config_module
from osnova_server.config import Config
from osnova_server.security.tokens import Scope, TokenAuthority
from osnova_server.server import Server
from osnova_server.web.pool import WS_IDLE, ConnectionPool
from osnova_server.web.websocket import MAX_IN_FLIGHT, POOL_KEY, RETRY_AFTER_BUSY
from tests.conftest import (
    TEST_SECRET,
    RunningServer,
    ServerProcess,
    free_port,
    make_config,
    running_server,
    write_config,
)

AUTH_WINDOW: Final = 0.3
RFC3339_UTC: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TWO_MIB: Final = 2 * 1_048_576


# -- helpers ---------------------------------------------------------------------------------


def ws_url(server: RunningServer) -> str:
    """The server's /ws URL."""
    return server.url.replace("http", "ws", 1) + "/ws"


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def request(method: str, params: Any = None, request_id: Any = 1) -> str:
    """A JSON-RPC request as text."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return json.dumps(message)


def auth_message(token: Any, request_id: Any = 1) -> str:
    """The `auth` request a socket without a header token sends first."""
    return json.dumps({"jsonrpc": "2.0", "method": "auth", "params": {"token": token}, "id": request_id})


def ws_connect(server: RunningServer, token: str | None = None, **kwargs: Any) -> Any:
    """Open /ws with the `websockets` library (no proxy, no client pings)."""
    return connect(
        ws_url(server), additional_headers=bearer(token) if token else None, proxy=None, ping_interval=None,
        **kwargs,
    )


def pool_of(server: RunningServer) -> ConnectionPool:
    """The server's connection pool."""
    return server.server.app[POOL_KEY]


async def open_connections(server: RunningServer) -> int:
    """What GET /status reports as `connections`."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/status") as answer:
        return int((await answer.json())["connections"])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll `check` every 10 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def no_connections(server: RunningServer) -> None:
    """Wait until /status reports no open WebSocket."""

    async def zero() -> bool:
        return await open_connections(server) == 0

    await eventually(zero)


async def closed_with(ws: WebsocketsClient) -> tuple[int, str, list[Any]]:
    """Read until the server closes; return its close code, reason and what came before."""
    received = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    assert closed.value.rcvd is not None, "the server sent no close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason, received


async def connected(ws: WebsocketsClient) -> dict[str, Any]:
    """Read the `connected` message."""
    hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello["method"] == "connected"
    return dict(hello)


async def call(ws: WebsocketsClient, method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    """Send one request and read the next message (its answer)."""
    await ws.send(request(method, params, request_id))
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))


async def admin_call(server: RunningServer, method: str, params: Any = None) -> Any:
    """Call a method over HTTP as admin."""
    async with server.client(admin=True) as client:
        return await client.call(method, params)


async def pair_device(server: RunningServer, name: str = "phone") -> dict[str, Any]:
    """Pair a device the way a phone does: admin starts, the device completes over HTTP."""
    payload = await admin_call(server, "pairing.start", {"name": name})
    async with server.client() as device:
        grant = await device.call("pairing.complete", {"token": payload["pairing"]["code"]})
    return dict(grant)


def manifest_uri(directory: Path) -> str:
    """A valid app manifest on disk, as a file:// URI."""
    document = {
        "id": "ant://notes", "name": "Notes", "version": "1.2.3", "iconUri": "https://example.com/notes.png",
        "description": "Take notes",
        "components": [{"id": "ant://notes-ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
    }
    path = directory / "notes.json"
    path.write_text(json.dumps(document))
    return path.as_uri()


def handshake_headers(token: str | None = None) -> dict[str, str]:
    """The headers of a WebSocket upgrade, for reading a refusal's body with plain HTTP."""
    headers = {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    return {**headers, **(bearer(token) if token else {})}


def mint(secret: str = TEST_SECRET, **claims: Any) -> str:
    """A hand-made JWT (for tokens the server must refuse)."""
    now = int(time.time())
    payload = {"sub": "admin", "device_id": None, "scope": "admin", "iat": now, "exp": now + 600, "jti": "t", **claims}
    return jwt.encode(payload, secret.encode(), algorithm="HS256")


def unsigned_token() -> str:
    """An admin token with `alg: none` and no signature."""
    now = int(time.time())
    header = {"alg": "none", "typ": "JWT"}
    payload = {"sub": "admin", "device_id": None, "scope": "admin", "iat": now, "exp": now + 600, "jti": "t"}
    parts = [base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode() for part in (header, payload)]
    return ".".join([*parts, ""])


@pytest.fixture
def ws_config(state_dir: Path) -> Config:
    """A test config with a short auth window and three client slots, any number per device."""
    return make_config(
        state_dir, server={"ws_auth_timeout": AUTH_WINDOW, "max_clients": 3, "max_clients_per_device": 10},
    )


@pytest.fixture
async def server(ws_config: Config) -> AsyncIterator[RunningServer]:
    """A running server with `ws_config`."""
    async with running_server(ws_config) as running:
        yield running


# -- the full flow ---------------------------------------------------------------------------


async def test_paired_device_calls_subscribes_and_sees_an_install_over_http(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    grant = await pair_device(server)
    async with http.ws_connect(ws_url(server), headers=bearer(grant["access_token"])) as ws:
        hello = await ws.receive_json(timeout=5)
        assert set(hello) == {"jsonrpc", "method", "params"}
        assert hello["method"] == "connected" and hello["params"]["connection_id"]
        assert RFC3339_UTC.match(hello["params"]["timestamp"])
        assert await open_connections(server) == 1
        assert [c.device_id for c in pool_of(server)] == [grant["device_id"]]

        await ws.send_str(request("apps.list", request_id=1))
        assert await ws.receive_json(timeout=5) == {"jsonrpc": "2.0", "result": [], "id": 1}
        await ws.send_str(request("events.subscribe", {"topics": ["apps.installed"]}, 2))
        assert await ws.receive_json(timeout=5) == {"jsonrpc": "2.0", "result": True, "id": 2}

        app_id = await admin_call(server, "apps.install", {"manifest_uri": manifest_uri(tmp_path)})

        event = await ws.receive_json(timeout=5)
        assert event == {
            "jsonrpc": "2.0", "method": "event",
            "params": {"topic": "apps.installed", "data": {"id": app_id, "name": "Notes", "version": "1.2.3"}},
        }
        await ws.send_str(request("apps.list", request_id=3))
        assert [app["id"] for app in (await ws.receive_json(timeout=5))["result"]] == [app_id]
    await no_connections(server)


async def test_auth_message_then_calls_batches_and_notifications_with_websockets(server: RunningServer) -> None:
    async with ws_connect(server) as ws:
        assert await open_connections(server) == 0  # authenticating holds no slot
        await ws.send(auth_message(server.admin_token(), "a-1"))
        assert json.loads(await ws.recv()) == {"jsonrpc": "2.0", "result": True, "id": "a-1"}
        hello = await connected(ws)
        assert RFC3339_UTC.match(hello["params"]["timestamp"])
        assert await open_connections(server) == 1

        answer = await call(ws, "status.get", request_id=7)
        assert answer["id"] == 7 and answer["result"]["status"] in ("ok", "degraded")
        # A notification gets no answer: the next message is the answer to the request after it.
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "status.get"}))
        assert (await call(ws, "apps.list", request_id=8)) == {"jsonrpc": "2.0", "result": [], "id": 8}
        batch = [json.loads(request("apps.list", request_id=i)) for i in (10, 11)]
        await ws.send(json.dumps([*batch, {"jsonrpc": "2.0", "method": "apps.list"}]))
        answers = json.loads(await ws.recv())
        assert sorted(a["id"] for a in answers) == [10, 11]
        assert (await call(ws, "no.such.method", request_id=12))["error"]["code"] == -32601
    await no_connections(server)


async def test_many_pipelined_requests_on_one_socket_are_all_answered(server: RunningServer) -> None:
    async with ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        for request_id in range(200):  # far past the 32 calls a socket may have in flight
            await ws.send(request("apps.list", request_id=request_id))
        ids = [json.loads(await asyncio.wait_for(ws.recv(), 5))["id"] for _ in range(200)]
    assert sorted(ids) == list(range(200))


# -- authentication faults -------------------------------------------------------------------


async def test_silence_is_closed_4401_after_the_auth_window(server: RunningServer) -> None:
    started = time.monotonic()
    async with ws_connect(server) as ws:
        assert pool_of(server).authenticating == 1
        code, reason, received = await closed_with(ws)
    elapsed = time.monotonic() - started
    assert code == 4401 and received == []
    assert "auth" in reason
    assert AUTH_WINDOW <= elapsed < AUTH_WINDOW + 2
    assert pool_of(server).authenticating == 0
    assert await open_connections(server) == 0


SET_SERVER: Final = {
    "jsonrpc": "2.0", "method": "config.setServer", "params": {"address": "https://x.example"}, "id": 1,
}
OTHER_SECRET: Final = "another-secret-of-enough-length-0123456789"


def auth_with(params: Any, jsonrpc: str = "2.0") -> str:
    """An `auth` request with these params (or none)."""
    message: dict[str, Any] = {"jsonrpc": jsonrpc, "method": "auth", "id": 1}
    if params is not None:
        message["params"] = params
    return json.dumps(message)


@pytest.mark.parametrize(
    ("case", "first_message"),
    [
        ("garbage token", lambda s: auth_message("not-a-jwt")),
        ("empty token", lambda s: auth_message("")),
        ("token not a string", lambda s: auth_message(12345)),
        ("signed with another secret", lambda s: auth_message(mint(secret=OTHER_SECRET))),
        ("expired", lambda s: auth_message(mint(iat=int(time.time()) - 900, exp=int(time.time()) - 300))),
        ("alg none", lambda s: auth_message(unsigned_token())),
        ("no params", lambda s: auth_with(None)),
        ("extra param", lambda s: auth_with({"token": s.admin_token(), "x": 1})),
        ("not JSON-RPC 2.0", lambda s: auth_with({"token": s.admin_token()}, jsonrpc="1.0")),
        ("auth inside a batch", lambda s: json.dumps([json.loads(auth_message(s.admin_token()))])),
        ("another method first", lambda s: json.dumps(SET_SERVER)),
        ("invalid JSON", lambda s: "{not json"),
    ],
)
async def test_a_bad_first_message_closes_4401_and_runs_nothing(
    server: RunningServer, case: str, first_message: Callable[[RunningServer], str],
) -> None:
    async with ws_connect(server) as ws:
        await ws.send(first_message(server))
        code, _, received = await closed_with(ws)
    assert code == 4401, case
    assert received == []
    assert await open_connections(server) == 0
    assert pool_of(server).authenticating == 0
    assert await admin_call(server, "config.getServer") is None  # config.setServer did not run


async def test_a_revoked_devices_token_in_the_auth_message_closes_4401(server: RunningServer) -> None:
    grant = await pair_device(server)
    await admin_call(server, "devices.revoke", {"device_id": grant["device_id"]})
    async with ws_connect(server) as ws:
        await ws.send(auth_message(grant["access_token"]))
        code, reason, received = await closed_with(ws)
    assert (code, reason, received) == (4401, "invalid access token: revoked", [])


async def test_a_bad_header_token_is_refused_with_401_before_the_upgrade(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    async with http.get(ws_url(server).replace("ws", "http", 1), headers=handshake_headers("nope")) as answer:
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert pool_of(server).authenticating == 0


async def test_an_auth_message_after_the_window_is_too_late(server: RunningServer) -> None:
    async with ws_connect(server) as ws:
        await asyncio.sleep(AUTH_WINDOW + 0.2)  # the point of the test: wait past the window
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(auth_message(server.admin_token()))
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert await open_connections(server) == 0


async def test_a_token_that_expires_closes_its_socket_4401(server: RunningServer) -> None:
    token = server.runtime.tokens.issue(Scope.ADMIN, None, ttl=1)[0]
    async with ws_connect(server, token) as ws:
        await connected(ws)
        started = time.monotonic()
        code, reason, _ = await closed_with(ws)
    assert code == 4401 and "expired" in reason
    assert time.monotonic() - started < 2.5
    assert await open_connections(server) == 0


# -- frames the server refuses ---------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [True, False])
async def test_a_binary_frame_closes_1003(
    server: RunningServer, http: aiohttp.ClientSession, authenticated: bool,
) -> None:
    headers = bearer(server.admin_token()) if authenticated else {}
    async with http.ws_connect(ws_url(server), headers=headers) as ws:
        if authenticated:
            assert (await ws.receive_json(timeout=5))["method"] == "connected"
        await ws.send_bytes(json.dumps(SET_SERVER).encode())
        message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1003
    assert await open_connections(server) == 0
    assert await admin_call(server, "config.getServer") is None


async def test_a_2_mib_message_closes_1009(server: RunningServer) -> None:
    async with ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        await ws.send(json.dumps({**SET_SERVER, "pad": "x" * TWO_MIB}))
        code, _, received = await closed_with(ws)
    assert code == 1009 and received == []
    assert await open_connections(server) == 0
    assert await admin_call(server, "config.getServer") is None


async def test_the_message_size_limit_is_exact(state_dir: Path) -> None:
    limit = 4096
    async with running_server(make_config(state_dir, limits={"max_ws_message_bytes": limit})) as server:
        async with ws_connect(server, server.admin_token()) as ws:
            await connected(ws)
            message = request("apps.list", request_id=1)
            await ws.send(message + " " * (limit - len(message)))
            assert json.loads(await ws.recv()) == {"jsonrpc": "2.0", "result": [], "id": 1}
            await ws.send(message + " " * (limit + 1 - len(message)))
            code, _, _ = await closed_with(ws)
        assert code == 1009


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", -32700),
        ("", -32700),
        ('{"jsonrpc": "2.0", "method": "apps.list", "id": 1', -32700),
        ("NaN", -32700),
        ("[]", -32600),
        ('{"jsonrpc": "2.0", "method": 5, "id": 1}', -32600),
        ('{"jsonrpc": "2.0", "method": "apps.list", "params": 3, "id": 1}', -32600),
        (json.dumps([json.loads(request("config.setServer", {"address": "https://x.example"}))] * 101), -32600),
    ],
)
async def test_invalid_json_and_requests_are_answered_and_the_socket_stays_open(
    server: RunningServer, text: str, code: int,
) -> None:
    async with ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        await ws.send(text)
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code
        assert (await call(ws, "apps.list", request_id=2)) == {"jsonrpc": "2.0", "result": [], "id": 2}
        assert await open_connections(server) == 1
    assert await admin_call(server, "config.getServer") is None


# -- events ----------------------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_choose_what_is_pushed(server: RunningServer) -> None:
    events = server.runtime.events
    async with ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        topics = ["apps.installed", "apps.uninstalled", "devices.revoked", "config.changed"]
        assert (await call(ws, "events.subscribe", {"topics": topics}))["result"] is True
        assert (await call(ws, "events.unsubscribe", [["apps.installed"]], 2))["result"] is True
        events.publish("apps.installed", {"id": "ant://a", "name": "A", "version": "1"})
        events.publish("apps.uninstalled", {"id": "ant://b"})
        assert json.loads(await ws.recv()) == {
            "jsonrpc": "2.0", "method": "event", "params": {"topic": "apps.uninstalled", "data": {"id": "ant://b"}},
        }
        await admin_call(server, "config.setServer", {"address": "https://home.example:8443"})
        pushed = json.loads(await ws.recv())["params"]
        assert pushed["topic"] == "config.changed"
        assert pushed["data"]["value"] == "https://home.example:8443"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"topics": ["apps.installed", "weather", "aaa"]}, "unknown topics in 'topics': aaa, weather"),
        ({"topics": "apps.installed"}, "'topics' must be an array"),
        ({"topics": [1]}, "'topics[0]' must be a string"),
        ({}, "missing required param 'topics'"),
    ],
)
@pytest.mark.parametrize("method", ["events.subscribe", "events.unsubscribe"])
async def test_bad_topics_are_refused_and_change_nothing(
    server: RunningServer, method: str, params: dict[str, Any], expected: str,
) -> None:
    async with ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        assert (await call(ws, "events.subscribe", {"topics": ["apps.uninstalled"]}))["result"] is True
        answer = await call(ws, method, params, 2)
        assert answer["error"]["code"] == -32602
        assert expected in answer["error"]["message"]
        (connection,) = pool_of(server)
        assert connection.subscriptions == {"apps.uninstalled"}


async def test_events_subscribe_is_websocket_only(server: RunningServer) -> None:
    async with server.client(admin=True) as client:
        answer = await client.post(json.loads(request("events.subscribe", {"topics": ["apps.installed"]})))
    assert answer["error"]["code"] == -32601
    assert "/ws" in answer["error"]["message"]


# -- the pool, limits and backpressure -------------------------------------------------------


async def test_max_clients_plus_one_is_refused_with_503_before_the_upgrade(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    http_url = ws_url(server).replace("ws", "http", 1)
    token = server.admin_token()
    async with ws_connect(server, token) as first, ws_connect(server, token), ws_connect(server, token):
        await connected(first)
        assert await open_connections(server) == 3
        for headers in (handshake_headers(token), handshake_headers()):
            async with http.get(http_url, headers=headers) as answer:
                assert answer.status == 503
                assert answer.headers["Retry-After"] == str(RETRY_AFTER_BUSY)
                body = await answer.json()
                assert "max_clients = 3" in body["error"]
        assert pool_of(server).authenticating == 0
    await no_connections(server)
    async with ws_connect(server, token) as again:  # every close freed its slot
        await connected(again)


async def test_a_pool_that_fills_while_a_socket_authenticates_closes_it_1013(state_dir: Path) -> None:
    config = make_config(state_dir, server={"max_clients": 1, "ws_auth_timeout": 5.0})
    async with running_server(config) as server, ws_connect(server) as waiting:
        async with ws_connect(server, server.admin_token()) as holder:
            await connected(holder)
            await waiting.send(auth_message(server.admin_token()))
            code, _, received = await closed_with(waiting)
        assert (code, received) == (1013, [])


async def test_at_most_16_sockets_wait_for_auth_and_they_hold_no_slot(
    state_dir: Path, http: aiohttp.ClientSession,
) -> None:
    config = make_config(state_dir, server={"max_clients": 1, "ws_auth_timeout": 5.0})
    async with running_server(config) as server:
        waiting = [await ws_connect(server, local_addr=(f"127.0.0.{1 + i // 4}", 0)) for i in range(16)]
        try:
            async with http.get(ws_url(server).replace("ws", "http", 1), headers=handshake_headers()) as answer:
                assert answer.status == 503
                assert "authenticating" in (await answer.json())["error"]
            async with ws_connect(server, server.admin_token()) as holder:  # the one slot is still free
                await connected(holder)
        finally:
            await asyncio.gather(*(ws.close() for ws in waiting))
        await eventually(lambda: _true(pool_of(server).authenticating == 0))


async def _true(value: bool) -> bool:
    """`value`, awaitably."""
    return value


async def test_a_peer_that_stops_answering_pings_is_dropped_and_a_live_one_kept(state_dir: Path) -> None:
    async with (
        running_server(make_config(state_dir, server={"ws_heartbeat": 1})) as server,
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(server), headers=bearer(server.admin_token()), autoping=False),
        ws_connect(server, server.admin_token()) as live,
    ):
        # The aiohttp client never reads, so it never answers the server's pings; the
        # `websockets` client answers them by itself while this test waits.
        await connected(live)
        assert await open_connections(server) == 2
        started = time.monotonic()
        await eventually(lambda: _true(len(pool_of(server)) == 1), timeout=5)
        assert 1.0 <= time.monotonic() - started < 3.5
        await asyncio.sleep(1.0)  # another heartbeat round for the live client
        assert await open_connections(server) == 1
        assert (await call(live, "apps.list"))["result"] == []


async def test_a_peer_that_only_answers_pings_is_still_reaped_as_idle(state_dir: Path) -> None:
    # Pongs keep a socket from being dropped as dead, not from being closed as idle: the
    # heartbeat's measure (any frame) and the reaper's (a message or a ping) are apart.
    config = make_config(state_dir, server={"idle_timeout": 2, "ws_heartbeat": 1})
    async with running_server(config) as server, ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        (connection,) = pool_of(server)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 6)  # the `websockets` client answers every ping
        assert closed.value.rcvd is not None and closed.value.rcvd.code == WS_IDLE
        assert connection.last_heard > connection.last_activity  # it was pinged, and answered
        assert 2.0 <= time.monotonic() - started < 5.0
        assert await open_connections(server) == 0


async def test_rate_limit_refuses_the_upgrade_and_messages_with_nothing_run(state_dir: Path) -> None:
    config = make_config(state_dir, rate_limit={"requests_per_second": 0.5, "burst_size": 3})
    async with running_server(config) as server, aiohttp.ClientSession() as http:
        token = server.admin_token()
        async with ws_connect(server, token) as ws:  # costs 1
            await connected(ws)
            assert (await call(ws, "apps.list", request_id=1))["result"] == []  # costs 1
            batch = [json.loads(request("events.subscribe", {"topics": ["apps.uninstalled"]}, 2)),
                     json.loads(request("apps.list", request_id=3)), {"jsonrpc": "2.0", "method": "apps.list"}]
            await ws.send(json.dumps(batch))  # costs 3, 1 left
            answers = json.loads(await ws.recv())
            assert [a["error"]["code"] for a in answers] == [-32029, -32029]
            assert [a["id"] for a in answers] == [2, 3]
            assert answers[0]["error"]["data"]["retry_after"] >= 1
            assert (await call(ws, "apps.list", request_id=4))["result"] == []  # costs the last one
            async with http.get(ws_url(server).replace("ws", "http", 1), headers=handshake_headers(token)) as refused:
                assert refused.status == 429
                assert int(refused.headers["Retry-After"]) >= 1
            (connection,) = pool_of(server)
            assert connection.subscriptions == set()  # events.subscribe did not run


# -- closes decided by the server ------------------------------------------------------------


async def test_revoking_a_device_closes_its_open_socket_4401_within_a_second(server: RunningServer) -> None:
    grant = await pair_device(server)
    other = await pair_device(server, "tablet")
    async with ws_connect(server, grant["access_token"]) as phone, ws_connect(server, other["access_token"]) as tablet:
        await connected(phone)
        await connected(tablet)
        assert await open_connections(server) == 2
        started = time.monotonic()
        await admin_call(server, "devices.revoke", {"device_id": grant["device_id"]})
        code, reason, _ = await closed_with(phone)
        assert time.monotonic() - started < 1.0
        assert code == 4401 and "revoked" in reason
        assert await open_connections(server) == 1
        assert (await call(tablet, "apps.list"))["result"] == []  # the other device is untouched


async def test_a_device_that_revokes_itself_gets_its_answer_then_4401(server: RunningServer) -> None:
    grant = await pair_device(server)
    async with ws_connect(server, grant["access_token"]) as ws:
        await connected(ws)
        await ws.send(request("devices.revoke", {"device_id": grant["device_id"]}, 9))
        code, _, received = await closed_with(ws)
    assert received == [{"jsonrpc": "2.0", "result": True, "id": 9}]
    assert code == 4401


async def test_idle_connections_are_reaped_4408_and_active_ones_are_not(state_dir: Path) -> None:
    config = make_config(state_dir, server={"idle_timeout": 1, "max_clients_per_device": 3})
    async with running_server(config) as server:
        token = server.admin_token()
        async with ws_connect(server, token) as idle, ws_connect(server, token) as busy, ws_connect(
            server, token,
        ) as pinging:
            for ws in (idle, busy, pinging):
                await connected(ws)
            started = time.monotonic()
            for request_id in range(6):  # 1.5 s of activity, a call or a ping every 0.25 s
                assert (await call(busy, "apps.list", request_id=request_id))["result"] == []
                await asyncio.wait_for(await pinging.ping(), 5)  # a client's own pings count too
                await asyncio.sleep(0.25)
            code, reason, _ = await closed_with(idle)
            assert code == 4408 and "idle" in reason
            assert 1.0 <= time.monotonic() - started < 2.5
            assert await open_connections(server) == 2
            assert (await call(busy, "apps.list", request_id=99))["result"] == []
            assert (await call(pinging, "apps.list", request_id=99))["result"] == []


async def test_shutdown_answers_calls_in_flight_then_closes_1001(
    ws_config: Config, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="osnova_server.web.websocket")
    server = Server(ws_config)
    await server.start()
    running = RunningServer(server, f"http://127.0.0.1:{server.port}")
    async with ws_connect(running, running.admin_token()) as ws:
        await connected(ws)
        for batch in range(32):
            await ws.send(json.dumps([json.loads(request("status.get", request_id=f"{batch}.{i}")) for i in range(50)]))
        (connection,) = pool_of(running)
        await eventually(lambda: _true(connection.calls == 32))
        stopping = asyncio.create_task(server.stop())
        code, reason, answers = await closed_with(ws)
        await stopping
    assert code == 1001 and "shutting down" in reason
    assert len(answers) == 32 and all(len(answer) == 50 for answer in answers)
    assert all("result" in member for answer in answers for member in answer)
    assert re.search(r"closing 1 WebSockets; waiting for [1-9]\d* calls in flight", caplog.text)


async def test_sigterm_delivers_answers_in_flight_then_closes_1001(tmp_path: Path, server_process: Any) -> None:
    # Kept to 96 calls: with hundreds of thread-pool completions queued, asyncio's self-pipe
    # fills and CPython drops the SIGTERM (a server.py matter, reported); the in-process test
    # above is the one that proves calls were in flight.
    port = free_port()
    config = make_config(tmp_path / "state", server={"bind_address": f"127.0.0.1:{port}"})
    process: ServerProcess = server_process(write_config(tmp_path / "server.toml", config))
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)
    token = TokenAuthority(TEST_SECRET.encode(), 600).issue(Scope.ADMIN, None)[0]
    async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers=bearer(token), proxy=None) as ws:
        await connected(ws)
        for batch in range(32):
            await ws.send(json.dumps([json.loads(request("status.get", request_id=f"{batch}.{i}")) for i in range(3)]))
        async with aiohttp.ClientSession() as http:

            async def all_read() -> bool:
                async with http.get(f"{url}/metrics") as answer:
                    return 'ws_messages_total{direction="in"} 32' in await answer.text()

            await eventually(all_read, timeout=10)
        process.process.send_signal(signal.SIGTERM)
        code, _, answers = await closed_with(ws)
    assert code == 1001
    assert len(answers) == 32 and all(len(answer) == 3 for answer in answers)
    started = time.monotonic()
    assert await asyncio.to_thread(process.process.wait, 15) == 0
    assert time.monotonic() - started < 5


# -- metrics ---------------------------------------------------------------------------------


async def test_metrics_count_connections_and_messages(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with ws_connect(server, server.admin_token()) as ws:
        await connected(ws)
        for request_id in range(3):
            await call(ws, "apps.list", request_id=request_id)
        async with http.get(f"{server.url}/metrics") as answer:
            text = await answer.text()
        assert re.search(r"^active_connections 1(\.0)?$", text, re.MULTILINE)
        assert 'ws_messages_total{direction="in"} 3' in text
        assert 'ws_messages_total{direction="out"} 4' in text  # `connected` and three answers
    await no_connections(server)
    async with http.get(f"{server.url}/metrics") as answer:
        assert re.search(r"^active_connections 0(\.0)?$", await answer.text(), re.MULTILINE)


# -- hostile clients (CONTRACT 5, second version) --------------------------------------------


def ws_from(server: RunningServer, source: str, token: str | None = None) -> Any:
    """Open /ws from a given loopback source address."""
    return ws_connect(server, token, local_addr=(source, 0))


async def get_from(source: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """GET `url` from a given loopback source address: status, headers and JSON body."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url, headers=headers) as answer:
        return answer.status, dict(answer.headers), await answer.json()


async def test_auth_slots_are_4_per_address_and_16_in_all_and_silence_counts_towards_a_ban(
    state_dir: Path, http: aiohttp.ClientSession,
) -> None:
    config = make_config(
        state_dir, server={"ws_auth_timeout": 1.0}, ban={"ignore": [], "max_failures": 50},
    )
    async with running_server(config) as server:
        http_url = ws_url(server).replace("ws", "http", 1)
        squatters = [await ws_from(server, "127.0.0.1") for _ in range(4)]
        status, headers, body = await get_from("127.0.0.1", http_url, handshake_headers())
        assert (status, headers["Retry-After"]) == (503, str(RETRY_AFTER_BUSY))
        assert body["error"] == (
            "127.0.0.1 already has 4 WebSockets authenticating; authenticate the open ones or try "
            "again in a few seconds"
        )
        # Other addresses still get in, up to 16 waiting in all.
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            squatters += [await ws_from(server, source) for _ in range(4)]
        assert pool_of(server).authenticating == 16
        status, _, body = await get_from("127.0.0.5", http_url, handshake_headers())
        assert status == 503
        assert body["error"].startswith("16 WebSockets are authenticating at once")
        # A client with a header token needs no auth slot.
        async with ws_from(server, "127.0.0.5", server.admin_token()) as holder:
            await connected(holder)
        # The silent ones are closed 4401 when their window ends, each a failed authentication.
        for ws in squatters:
            code, _, received = await closed_with(ws)
            assert (code, received) == (4401, [])
        assert pool_of(server).authenticating == 0
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
            assert server.runtime.bans.failures(source) == 4
        assert server.runtime.bans.failures("127.0.0.5") == 0


async def test_a_silent_squatter_is_banned(state_dir: Path, http: aiohttp.ClientSession) -> None:
    config = make_config(state_dir, server={"ws_auth_timeout": 0.5}, ban={"ignore": [], "max_failures": 2})
    async with running_server(config) as server:
        for _ in range(2):
            async with ws_from(server, "127.0.0.7") as ws:
                assert (await closed_with(ws))[0] == 4401
        assert server.runtime.bans.banned("127.0.0.7") is not None
        assert (await get_from("127.0.0.7", f"{server.url}/health"))[0] == 403


async def test_loopback_is_never_banned_by_default(state_dir: Path) -> None:
    ignore = config_module.BanSection().ignore  # the default; tests otherwise ban loopback like any address
    config = make_config(state_dir, server={"ws_auth_timeout": 0.3}, ban={"max_failures": 1, "ignore": ignore})
    async with running_server(config) as server:
        for _ in range(2):
            async with ws_connect(server) as ws:
                assert (await closed_with(ws))[0] == 4401
        assert server.runtime.bans.banned("127.0.0.1") is None
        assert server.runtime.bans.failures("127.0.0.1") == 0


async def test_one_device_holds_at_most_max_clients_per_device_sockets(
    state_dir: Path, http: aiohttp.ClientSession,
) -> None:
    config = make_config(state_dir, server={"max_clients": 10, "max_clients_per_device": 2, "ws_auth_timeout": 5.0})
    async with running_server(config) as server:
        grant = await pair_device(server)
        phone = grant["access_token"]
        async with ws_connect(server, phone) as first, ws_connect(server, phone) as second:
            await connected(first)
            await connected(second)
            async with http.get(ws_url(server).replace("ws", "http", 1), headers=handshake_headers(phone)) as answer:
                assert answer.status == 503
                assert (await answer.json())["error"] == (
                    "this device already holds [server] max_clients_per_device = 2 WebSockets; close one first"
                )
            async with ws_connect(server) as third:  # by message: refused 1013 once it says who it is
                await third.send(auth_message(phone))
                code, reason, received = await closed_with(third)
                assert (code, received) == (1013, [])
                assert "max_clients_per_device = 2" in reason
            # The admin is one "device" of its own, and has its own two.
            token = server.admin_token()
            async with ws_connect(server, token) as admin_one, ws_connect(server, token) as admin_two:
                await connected(admin_one)
                await connected(admin_two)
                assert await open_connections(server) == 4
        await no_connections(server)


async def test_connected_is_a_json_rpc_notification_also_after_an_auth_message(server: RunningServer) -> None:
    async with ws_connect(server, server.admin_token()) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert set(hello) == {"jsonrpc", "method", "params"}
    assert hello["jsonrpc"] == "2.0" and hello["method"] == "connected"
    assert set(hello["params"]) == {"connection_id", "timestamp"}
    assert hello["params"]["timestamp"].endswith("Z")
    async with ws_connect(server) as ws:
        await ws.send(auth_message(server.admin_token(), request_id="a-1"))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"jsonrpc": "2.0", "result": True, "id": "a-1"}
        second = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert second["method"] == "connected" and second["params"]["connection_id"] != hello["params"]["connection_id"]


@pytest.mark.parametrize("request_id", [{"a": 1}, [1], True, False, 1.5])
async def test_an_auth_message_with_a_forbidden_id_closes_4401(server: RunningServer, request_id: Any) -> None:
    async with ws_connect(server) as ws:
        await ws.send(auth_message(server.admin_token(), request_id=request_id))
        code, _, received = await closed_with(ws)
    assert (code, received) == (4401, [])
    assert await open_connections(server) == 0


@pytest.mark.parametrize("request_id", ["x", 7, None, 2.0])
async def test_an_auth_message_with_a_plain_id_is_answered(server: RunningServer, request_id: Any) -> None:
    async with ws_connect(server) as ws:
        await ws.send(auth_message(server.admin_token(), request_id=request_id))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer == {"jsonrpc": "2.0", "result": True, "id": request_id}
        assert (await connected(ws))["method"] == "connected"


async def test_3000_requests_written_before_reading_are_all_answered_and_the_queue_stays_bounded(
    state_dir: Path,
) -> None:
    limit = 16_384
    config = make_config(state_dir, limits={"max_ws_queue_bytes": limit})
    async with running_server(config) as server, ws_connect(server, server.admin_token(), max_size=None) as ws:
        await connected(ws)
        pool = pool_of(server)
        (connection,) = list(pool)
        # Answers big enough (the OpenRPC document) that 3,000 of them overflow the kernel's socket
        # buffers, so the server's own queue fills while the client reads nothing.
        answer_size = len(json.dumps({"jsonrpc": "2.0", "result": await admin_call(server, "rpc.discover"), "id": 2999}))
        count = 3000

        async def write_all() -> None:
            for number in range(count):
                await ws.send(request("rpc.discover", request_id=number))

        writer = asyncio.create_task(write_all())
        # The client reads nothing for a while: the server's queue fills, so it stops reading the
        # socket, and however long that lasts the queue holds at most the limit plus the answers
        # of the calls that were already running.
        peak, filled = 0, False
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not filled:
            filled = not connection.has_room
            peak = max(peak, connection.queued_bytes)
            await asyncio.sleep(0.005)
        assert filled, "the queue never filled"
        for _ in range(100):
            peak = max(peak, connection.queued_bytes)
            await asyncio.sleep(0.005)
        assert peak <= limit + MAX_IN_FLIGHT * answer_size
        ids = set()
        while len(ids) < count:
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert answer["result"]["openrpc"]
            ids.add(answer["id"])
        await writer
        assert ids == set(range(count))
        assert connection.close_code is None


async def test_a_client_that_reads_nothing_for_idle_timeout_is_closed_1008(
    state_dir: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="osnova_server.web.websocket")
    config = make_config(state_dir, server={"idle_timeout": 1}, limits={"max_ws_queue_bytes": 65_536})
    async with running_server(config) as server:
        pool = pool_of(server)
        async with http.ws_connect(ws_url(server), headers=bearer(server.admin_token())) as ws:
            assert (await ws.receive_json(timeout=5))["method"] == "connected"
            await ws.send_str(request("events.subscribe", {"topics": ["config.changed"]}))
            assert (await ws.receive_json(timeout=5))["result"] is True
            (connection,) = list(pool)
            data = {"key": "filler", "value": "x" * 4096}
            while connection.has_room:  # the client reads nothing from here on
                server.runtime.events.publish("config.changed", data)
                await asyncio.sleep(0)
            assert connection.close_code is None  # a full queue alone closes nothing
            await eventually(lambda: _true(connection.close_code is not None), timeout=10)
            assert connection.close_code == 1008
            assert len(pool) == 0
            assert "read nothing for 1 s" in caplog.text
            received = 0
            while (message := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.TEXT:
                received += 1
        assert message.type is aiohttp.WSMsgType.CLOSE or message.type is aiohttp.WSMsgType.CLOSED


async def test_a_slow_reader_is_not_closed(state_dir: Path, http: aiohttp.ClientSession) -> None:
    config = make_config(state_dir, server={"idle_timeout": 1}, limits={"max_ws_queue_bytes": 1024})
    async with (
        running_server(config) as server,
        http.ws_connect(ws_url(server), headers=bearer(server.admin_token())) as ws,
    ):
        assert (await ws.receive_json(timeout=5))["method"] == "connected"
        for number in range(25):  # 2.5 s in all, longer than idle_timeout, reading all along
            await ws.send_str(request("rpc.discover", request_id=number))
            assert (await ws.receive_json(timeout=5))["id"] == number
            await asyncio.sleep(0.1)
        assert len(pool_of(server)) == 1
