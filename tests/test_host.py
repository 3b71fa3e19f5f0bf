"""The Host check: names this server does not answer to get 421 and nothing runs (web/host.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from osnova_server.web.host import KNOWN_HEADERS_MAX, HostNames, host_name, is_ip_literal, machine_names
from tests.conftest import RunningServer, make_config, running_server


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[RunningServer]:
    """A server with one extra allowed name and a configured advertised address."""
    config = make_config(state_dir, server={
        "bind_address": "127.0.0.1:0", "state_dir": str(state_dir),
        "allowed_hosts": ["Osnova.Example."], "advertised_address": "https://box.lan:8443",
    })
    async with running_server(config) as running:
        yield running


async def _request(server: RunningServer, host: str | None, path: str = "/status", body: bytes = b"",
                   headers: str = "") -> tuple[int, bytes]:
    """Send one request with exactly this Host header (or none); its status and body."""

    def run() -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", server.server.port), timeout=10) as sock:
            method = "POST" if body else "GET"
            host_line = f"Host: {host}\r\n" if host is not None else ""
            version = "1.1" if host is not None else "1.0"
            sock.sendall(f"{method} {path} HTTP/{version}\r\n{host_line}{headers}Content-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split()[1]), rest

    return await asyncio.to_thread(run)


async def test_a_foreign_host_gets_421(server: RunningServer) -> None:
    status, body = await _request(server, "evil.example")
    assert status == 421
    assert json.loads(body) == {"error": "this server does not answer to the host name 'evil.example'; use its "
                                         "IP address or add the name to [server] allowed_hosts"}


async def test_a_rebinding_page_runs_nothing(server: RunningServer) -> None:
    call = json.dumps({"jsonrpc": "2.0", "method": "config.setServer",
                       "params": {"address": "http://evil.example"}, "id": 1}).encode()
    status, _ = await _request(server, "evil.example:8080", "/rpc", call,
                               f"Authorization: Bearer {server.admin_token()}\r\n")
    assert status == 421
    assert await server.runtime.settings.get_server() == "https://box.lan:8443"


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.0.0.1:8080", "[::1]:8080", "[::1]", "192.168.1.20", "localhost", "LOCALHOST.:80",
    "osnova.example", "box.lan", "box.lan:8443",
])
async def test_names_this_server_answers_to(server: RunningServer, host: str) -> None:
    status, _ = await _request(server, host)
    assert status == 200


async def test_this_machines_names_and_no_host_at_all_are_served(server: RunningServer) -> None:
    for name in machine_names():
        assert (await _request(server, name))[0] == 200
    assert (await _request(server, None))[0] == 200


async def test_config_set_server_adds_its_host_at_once(server: RunningServer) -> None:
    assert (await _request(server, "home.example"))[0] == 421
    async with server.client(admin=True) as admin:
        await admin.call("config.setServer", {"address": "http://home.example:8080"})
    assert (await _request(server, "home.example:8080"))[0] == 200


async def test_a_stored_address_is_honoured_after_a_restart(state_dir: Path) -> None:
    config = make_config(state_dir)
    async with running_server(config) as server, server.client(admin=True) as admin:
        await admin.call("config.setServer", {"address": "https://house.example"})
    async with running_server(config) as server:
        assert (await _request(server, "house.example"))[0] == 200
        assert (await _request(server, "other.example"))[0] == 421


async def test_names_that_a_reload_or_set_server_takes_away_are_refused_at_once(
    server: RunningServer, state_dir: Path,
) -> None:
    for _ in range(2):  # served twice, so a remembered verdict would be the one used next
        assert (await _request(server, "osnova.example"))[0] == 200
        assert (await _request(server, "box.lan:8443"))[0] == 200
    async with server.client(admin=True) as admin:
        await admin.call("config.setServer", {"address": "http://home.example:8080"})
        assert (await _request(server, "home.example:8080"))[0] == 200
        await admin.call("config.setServer", {"address": "http://house.example"})
    assert (await _request(server, "home.example:8080"))[0] == 421
    server.runtime.reload(make_config(state_dir, server={"bind_address": "127.0.0.1:0", "state_dir": str(state_dir)}))
    assert (await _request(server, "osnova.example"))[0] == 421
    assert (await _request(server, "box.lan:8443"))[0] == 421
    assert (await _request(server, "127.0.0.1:8080"))[0] == 200


def test_only_verdicts_that_cannot_change_are_remembered_and_only_so_many() -> None:
    names = HostNames(machine_names("box.lan"))
    names.stored = "home.example"
    for header, host in (("10.0.0.1:80", "10.0.0.1"), ("Box.lan", "box.lan"), ("home.example", "home.example"),
                         ("osnova.example", "osnova.example")):
        names.note(header, host)
    assert names.known == {"10.0.0.1:80", "Box.lan"}
    for n in range(KNOWN_HEADERS_MAX * 2):
        names.note(f"10.1.{n // 256}.{n % 256}", f"10.1.{n // 256}.{n % 256}")
    assert len(names.known) == KNOWN_HEADERS_MAX


@pytest.mark.parametrize(("header", "name"), [
    ("Example.COM", "example.com"), ("example.com.:8080", "example.com"), ("[fe80::1]:80", "fe80::1"),
    ("::1", "::1"), ("host:notaport", "host:notaport"),
])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_machine_names() -> None:
    assert machine_names("Box.lan") == {"box.lan", "box", "box.local", "localhost"}


@pytest.mark.parametrize(("host", "is_ip"), [
    ("127.0.0.1", True), ("192.168.1.20", True), ("::1", True), ("fe80::1%eth0", True), ("::ffff:1.2.3.4", True),
    ("1.2.3", False), ("999.1.1.1", False), ("evil.example", False), ("", False),
])
def test_ip_literals(host: str, is_ip: bool) -> None:
    assert is_ip_literal(host) is is_ip
