"""Connections on a hostile LAN: caps at accept, header/body/keep-alive timeouts, dual stack,
descriptor limits, and clients that leave mid-request (web/connections.py, web/timeouts.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from osnova_server import config as config_module
from osnova_server.security.tls import generate_self_signed
from osnova_server.web.connections import (
    LISTEN_BACKLOG,
    RESERVED_DESCRIPTORS,
    ConnectionLimits,
    LogThrottle,
    listening_socket,
    plain_address,
)
from tests.clock import FakeClock
from tests.conftest import ServerProcess, cli, free_port, make_config, running_server, write_config

Start = Callable[..., ServerProcess]
WAIT: Final = 10.0


def _server_config(tmp_path: Path, port: int, **sections: dict[str, Any]) -> Path:
    """Write a config for a server process on 127.0.0.1:`port` logging text lines to stderr."""
    config = make_config(tmp_path / "state", logging={"level": "info", "format": "text"}, **sections)
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}")
    return write_config(tmp_path / "server.toml", config)


def _health(port: int, source: str = "127.0.0.2", timeout: float = 5.0) -> float:
    """GET /health from `source`; the seconds it took (raises if it did not answer 200)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = _read_all(sock, timeout)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    return time.monotonic() - started


def _read_all(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Everything the peer sends until it closes (or `timeout` passes)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer has closed `sock` (readable with nothing, or reset)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Let this test process hold a few thousand sockets (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2600:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for a 1,100-connection flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _flood(port: int, count: int) -> list[socket.socket]:
    """Open `count` TCP connections from 127.0.0.1 that send nothing.

    The server resets connections past a cap in `accept()`, which can come before a connect with a
    timeout (non-blocking underneath) has read its result, so some connects fail with a reset:
    those were refused, and are not held.
    """
    sockets = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        except ConnectionResetError:
            continue
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


# -- caps at accept ---------------------------------------------------------------------------


def test_a_1100_connection_flood_from_one_address_leaves_others_served(
    tmp_path: Path, server_process: Start, many_descriptors: None,
) -> None:
    port = free_port()
    cap = 20
    limits = {"max_connections_per_address": cap, "max_connections": 200, "header_timeout": 60.0}
    process = server_process(_server_config(tmp_path, port, limits=limits))
    process.wait_ready(f"http://127.0.0.1:{port}")
    flood = _flood(port, 1100)
    try:
        health = [_health(port) for _ in range(5)]  # answered while 127.0.0.1 floods
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            held = [sock for sock in flood if not _closed_by_peer(sock)]
            if len(held) == cap:
                break
            time.sleep(0.1)
        assert len(held) == cap
        # The held ones are still served: a request on one of them is answered.
        held[0].settimeout(WAIT)
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _read_all(held[0]).startswith(b"HTTP/1.1 200")
        assert len(health) == 5
    finally:
        for sock in flood:
            sock.close()
    # Once the flood is gone the address is served again.
    assert _health(port, source="127.0.0.1") > 0
    code, stderr = process.stop()
    assert code == 0
    refusals = [line for line in stderr.splitlines() if "closing new connections at accept" in line]
    assert len(refusals) == 1, refusals  # once a minute at most, not once per connection
    assert "max_connections_per_address = 20" in refusals[0]
    assert "Traceback" not in stderr


async def test_past_max_connections_every_address_is_refused(state_dir: Path) -> None:
    config = make_config(state_dir, limits={"max_connections": 3, "max_connections_per_address": 10})
    async with running_server(config) as server:
        port = server.server.port
        held = [socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{i}", 0)) for i in (1, 2, 3)]
        try:
            for source in ("127.0.0.4", "127.0.0.1"):
                extra = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
                assert await asyncio.to_thread(_read_all, extra) == b""  # closed at once
                extra.close()
            assert server.server.connections.total == 3
        finally:
            for sock in held:
                sock.close()
        await _eventually(lambda: server.server.connections.total == 0)
        assert await asyncio.to_thread(_health, port) > 0


async def test_on_asyncios_loop_connections_past_the_address_cap_are_reset_at_accept(state_dir: Path) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("asyncio")  # uvloop accepts in C
    config = make_config(state_dir, limits={"max_connections": 50, "max_connections_per_address": 2})
    async with running_server(config) as server:
        port = server.server.port
        held = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) for _ in range(2)]
        try:
            await _eventually(lambda: server.server.connections.total == 2)
            for _ in range(5):
                extra = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
                extra.settimeout(WAIT)
                # A reset (SO_LINGER 0) in accept(), not the guard's orderly close after a transport was made.
                with pytest.raises(ConnectionResetError):
                    await asyncio.to_thread(extra.recv, 1)
                extra.close()
            assert server.server.connections.total == 2  # the refused were never counted
            assert server.server.connections.of("127.0.0.2") == 2
            assert await asyncio.to_thread(_health, port, "127.0.0.1") > 0  # others are served meanwhile
        finally:
            for sock in held:
                sock.close()


def test_accept_stops_after_a_listen_backlog_of_refusals_and_leaves_the_rest_queued() -> None:
    # The event loop calls accept() until it raises BlockingIOError; a flood of refused
    # connections must end that loop after LISTEN_BACKLOG of them, or it would hold the loop.
    limits = ConnectionLimits(max_total=0, max_per_address=10)  # every connection is past a cap
    listener = listening_socket("127.0.0.1", 0, limits)
    assert listener is not None
    listener.listen(LISTEN_BACKLOG * 2)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(LISTEN_BACKLOG + 2)]
    for client in clients:
        client.setblocking(False)
    try:
        with pytest.raises(BlockingIOError, match="refused a listen backlog"):
            listener.accept()
        # The first LISTEN_BACKLOG were reset there and then; the last two wait in the queue.
        deadline = time.monotonic() + WAIT
        while sum(_closed_by_peer(c) for c in clients) < LISTEN_BACKLOG and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [_closed_by_peer(c) for c in clients] == [True] * LISTEN_BACKLOG + [False, False]
        limits.max_total = 10  # room again: the next accept hands over the next queued connection
        conn, address = listener.accept()
        with conn:
            assert address[0] == "127.0.0.1"
            conn.sendall(b"x")
            clients[LISTEN_BACKLOG].settimeout(WAIT)
            assert clients[LISTEN_BACKLOG].recv(1) == b"x"
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_connection_limits_count_per_address_and_exempt_trusted_proxies() -> None:
    import ipaddress

    limits = ConnectionLimits(5, 2, [ipaddress.ip_network("10.0.0.1/32")])
    assert limits.admit("192.168.1.9") and limits.admit("192.168.1.9")
    assert not limits.admit("192.168.1.9")
    assert limits.admit("192.168.1.10")
    assert limits.admit("10.0.0.1") and limits.admit("10.0.0.1")
    assert not limits.admit("10.0.0.1")  # the total (5) applies even to a proxy
    limits.release("192.168.1.9")
    assert limits.of("192.168.1.9") == 1 and limits.total == 4
    assert limits.admit("192.168.1.9")


def test_log_throttle_reports_once_per_interval_with_the_count() -> None:
    clock = FakeClock(100.0)
    throttle = LogThrottle(60.0, clock)
    assert throttle.due() == 1
    assert [throttle.due() for _ in range(1000)] == [0] * 1000
    clock.advance(60.0)
    assert throttle.due() == 1001


def test_ipv4_clients_of_a_dual_stack_socket_are_named_by_their_ipv4_address() -> None:
    assert plain_address("::ffff:192.168.1.20") == "192.168.1.20"
    assert plain_address("::ffff:7f00:1") == "127.0.0.1"
    assert plain_address("fe80::1") == "fe80::1"
    assert plain_address("192.168.1.20") == "192.168.1.20"


# -- timeouts ---------------------------------------------------------------------------------


async def _eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll `check` until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _exchange(port: int, data: bytes, timeout: float = WAIT) -> tuple[bytes, float]:
    """Send `data` on a new connection; what came back until the server closed, and how long it took."""

    def run() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            started = time.monotonic()
            if data:
                sock.sendall(data)
            return _read_all(sock, timeout), time.monotonic() - started

    return await asyncio.to_thread(run)


async def test_slow_headers_get_408_and_the_connection_closes(state_dir: Path) -> None:
    config = make_config(state_dir, limits={"header_timeout": 0.5, "keepalive_timeout": 60.0})
    async with running_server(config) as server:
        answer, took = await _exchange(server.server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout")
        assert b"Connection: close" in head
        assert json.loads(body) == {"error": "the request line and headers did not arrive in time; send them at once"}
        assert took < WAIT
        # A connection that says nothing at all is closed the same way.
        answer, _ = await _exchange(server.server.port, b"")
        assert answer.startswith(b"HTTP/1.1 408")
        await _eventually(lambda: server.server.connections.total == 0)


async def test_headers_trickled_on_a_kept_alive_connection_get_408(state_dir: Path) -> None:
    config = make_config(state_dir, limits={"header_timeout": 0.5, "keepalive_timeout": 60.0})
    async with running_server(config) as server:

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", server.server.port)) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                sock.settimeout(WAIT)
                first = sock.recv(65536)
                assert first.startswith(b"HTTP/1.1 200")
                time.sleep(0.8)  # idle longer than header_timeout: keep-alive allows it
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                return _read_all(sock)

        assert (await asyncio.to_thread(run)).startswith(b"HTTP/1.1 408")


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(state_dir: Path) -> None:
    config = make_config(state_dir, limits={"header_timeout": 60.0, "keepalive_timeout": 0.5})
    async with running_server(config) as server:
        answer, took = await _exchange(server.server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.count(b"HTTP/1.1") == 1  # nothing more was sent: just closed
        assert took < WAIT
        await _eventually(lambda: server.server.connections.total == 0)


async def test_a_slow_body_gets_408_and_runs_nothing(state_dir: Path) -> None:
    config = make_config(state_dir, limits={"body_timeout": 0.5})
    async with running_server(config) as server:
        body = json.dumps({"jsonrpc": "2.0", "method": "config.setServer",
                           "params": {"address": "http://evil.example"}, "id": 1}).encode()
        head = (f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.admin_token()}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        answer, _ = await _exchange(server.server.port, head + body[:10])
        status, _, rest = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408")
        assert b"Connection: close" in status
        assert json.loads(rest) == {"error": "the request body did not arrive within 0.5 s; send it at once"}
        assert await server.runtime.settings.get_server() is None


async def test_a_client_leaving_mid_body_is_a_debug_line_not_an_error(
    state_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server(make_config(state_dir)) as server:

        def run() -> None:
            with socket.create_connection(("127.0.0.1", server.server.port)) as sock:
                sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"jsonrpc\"")
                time.sleep(0.2)

        await asyncio.to_thread(run)
        await _eventually(lambda: any("left in the middle" in r.getMessage() for r in caplog.records))
        assert await asyncio.to_thread(_health, server.server.port) > 0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    left = [r for r in caplog.records if "left in the middle" in r.getMessage()]
    assert left[0].levelno == logging.DEBUG and left[0].exc_info is None


async def test_a_tls_handshake_that_never_comes_is_closed_and_uncounted(state_dir: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert, key)
    config = make_config(
        state_dir, tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)},
        limits={"header_timeout": 0.5},
    )
    async with running_server(config) as server:
        silent = socket.create_connection(("127.0.0.1", server.server.port))
        await _eventually(lambda: server.server.connections.total == 1)
        assert await asyncio.to_thread(_read_all, silent) == b""
        silent.close()
        await _eventually(lambda: server.server.connections.total == 0)
        # A real client is served over TLS through the same guard.
        context = ssl.create_default_context(cafile=str(cert))

        def fetch() -> int:
            with urllib.request.urlopen(f"https://localhost:{server.server.port}/health", context=context) as answer:
                return int(answer.status)

        assert await asyncio.to_thread(fetch) == 200


# -- descriptors ------------------------------------------------------------------------------


def test_max_connections_that_cannot_fit_under_the_descriptor_limit_is_refused(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    ceiling = hard if hard != resource.RLIM_INFINITY else 1 << 20
    path = _server_config(tmp_path, free_port(), limits={"max_connections": ceiling})
    result = cli("--config", str(path), "serve")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    usable = ceiling - RESERVED_DESCRIPTORS
    assert f"[limits] max_connections = {ceiling} does not fit under this process's open-file limit" in lines[0]
    assert f"lower it to {usable}" in lines[0]
    assert not (tmp_path / "state" / "osnova.db").exists()  # refused before any state was made


_FLOOD_CLIENT: Final = """
import socket, sys, time
held = []
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1.0))
    except OSError:
        pass
    time.sleep(0.005)
"""


async def test_running_out_of_descriptors_is_logged_once_a_minute(
    state_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # The server runs in this process on asyncio's loop, which reports every failed accept to the
    # loop's exception handler (about once a second per listening socket, for as long as it lasts).
    caplog.set_level(logging.INFO)
    async with running_server(make_config(state_dir, limits={"header_timeout": 60.0})) as server:
        port = server.server.port
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        flood = await asyncio.create_subprocess_exec(sys.executable, "-c", _FLOOD_CLIENT, str(port), "3.5")
        try:
            in_use = len(list(Path("/proc/self/fd").iterdir()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 2, hard))
            try:
                await asyncio.sleep(3.0)  # accepts keep failing all this time
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        finally:
            await flood.wait()
        await _eventually(lambda: server.server.connections.total == 0)
        assert await asyncio.to_thread(_health, port, "127.0.0.1") > 0  # and it serves again
    shortages = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(shortages) == 1, [r.getMessage() for r in caplog.records]
    assert shortages[0].levelno == logging.WARNING and shortages[0].exc_info is None
    assert "raise LimitNOFILE or lower [limits] max_connections" in shortages[0].getMessage()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_systemd_unit_allows_more_descriptors_than_max_connections() -> None:
    unit = (Path(__file__).parent.parent / "osnova_server" / "units" / "osnova-server.service").read_text()
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(values) == 1
    default = config_module.LimitsSection().max_connections
    assert int(values[0]) >= default + RESERVED_DESCRIPTORS


# -- dual stack -------------------------------------------------------------------------------


def _has_ipv6() -> bool:
    """Whether this machine can bind an IPv6 socket."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="this machine has no IPv6")
async def test_a_wildcard_ipv6_bind_serves_ipv4_too(state_dir: Path) -> None:
    config = make_config(state_dir, ban={"ignore": []})
    config = config_module.replace(config, "server", bind_address="[::]:0")
    async with running_server(config) as server:
        port = server.server.port
        assert await asyncio.to_thread(_health, port, "127.0.0.1") > 0

        def over_ipv6() -> bytes:
            with socket.create_connection(("::1", port)) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
                return _read_all(sock)

        assert (await asyncio.to_thread(over_ipv6)).startswith(b"HTTP/1.1 200")
        # An IPv4 client is known by its IPv4 address (bans, limits and logs agree).
        answer, _ = await _exchange(port, b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic eA==\r\n"
                                          b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401")
        assert server.runtime.bans.failures("127.0.0.1") == 1
        assert server.runtime.bans.failures("::ffff:127.0.0.1") == 0
