"""config.getServer / config.setServer through a real server: validation, persistence, events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from osnova_server.client import OsnovaClient, RpcCallError
from osnova_server.errors import INVALID_PARAMS
from osnova_server.events import CONFIG_CHANGED, Event
from osnova_server.services.settings import SERVER_ADDRESS_KEY, normalize_server_address
from tests.conftest import RunningServer, make_config, running_server
from tests.test_pairing import pair_device

# Run on SQLite and on PostgreSQL (tests/conftest.py).
BOTH_ENGINES = True

ORIGINAL = "https://osnova.lan:8443"


async def call(server: RunningServer, method: str, params: Any = None) -> Any:
    """Call a method as admin."""
    async with server.client(admin=True) as client:
        return await client.call(method, params)


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("https://osnova.lan:8443", "https://osnova.lan:8443"),
        ("http://192.168.1.20:8080", "http://192.168.1.20:8080"),
        ("https://osnova.local", "https://osnova.local"),
        ("http://localhost:1", "http://localhost:1"),
        ("https://home-server:65535", "https://home-server:65535"),
        ("HTTPS://Osnova.LAN:8443/", "https://osnova.lan:8443"),  # a lone "/" is no path
        ("http://[fe80::0001]:8080", "http://[fe80::1]:8080"),
        ("http://[::1]", "http://[::1]"),
    ],
)
async def test_good_addresses_are_stored_normalized(
    osnova: RunningServer, events: list[Event], address: str, stored: str
) -> None:
    assert await call(osnova, "config.setServer", {"address": address}) is True
    assert await call(osnova, "config.getServer") == stored
    assert await osnova.runtime.store.setting(SERVER_ADDRESS_KEY) == stored
    assert [(e.topic, e.data) for e in events] == [(CONFIG_CHANGED, {"key": SERVER_ADDRESS_KEY, "value": stored})]


BAD_ADDRESSES = [
    pytest.param("https://osnova.lan:8443/pair", "must not have a path", id="path"),
    pytest.param("https://osnova.lan//", "must not have a path", id="double-slash"),
    pytest.param("https://osnova.lan?x=1", "must not have a query", id="query"),
    pytest.param("https://osnova.lan/?", "must not have a query", id="empty-query"),
    pytest.param("https://osnova.lan#top", "must not have a fragment", id="fragment"),
    pytest.param("https://admin:hunter2@osnova.lan", "must not contain user info", id="user-info"),
    pytest.param("https://admin@osnova.lan", "must not contain user info", id="user-only"),
    pytest.param("ftp://osnova.lan", "must start with http:// or https://", id="ftp"),
    pytest.param("ws://osnova.lan", "must start with http:// or https://", id="ws"),
    pytest.param("osnova.lan:8443", "must start with http:// or https://", id="no-scheme"),
    pytest.param("http:osnova.lan", "must start with http:// or https://", id="no-slashes"),
    pytest.param("", "must start with http:// or https://", id="empty"),
    pytest.param("https://", "must name a host", id="no-host"),
    pytest.param("https://:8443", "must name a host", id="port-no-host"),
    pytest.param("https://osnova.lan:0", "port", id="port-0"),
    pytest.param("https://osnova.lan:65536", "port", id="port-too-big"),
    pytest.param("https://osnova.lan:http", "port", id="port-not-a-number"),
    pytest.param("https://osnova.lan:", "port", id="empty-port"),
    pytest.param("https://osnova lan", "spaces", id="space"),
    pytest.param(" https://osnova.lan", "spaces", id="leading-space"),
    pytest.param("https://osnova.lan\n", "control characters", id="newline"),
    pytest.param("https://osnova.lan\\x", "backslashes", id="backslash"),
    pytest.param("https://osnova_lan.-bad", "not a valid host name", id="bad-label"),
    pytest.param("https://999.1.1.1", "not a valid IPv4 address", id="bad-ipv4"),
    pytest.param("https://[not-v6]:80", "not an IPv6 address", id="bad-ipv6"),
    pytest.param("https://[::1:80", "not an IPv6 address", id="unclosed-bracket"),
    pytest.param("https://[::1]x:80", "between the bracketed host and the port", id="junk-after-bracket"),
    pytest.param("https://[::1]:99999", "port", id="ipv6-port-too-big"),
    pytest.param("https://" + "a" * 3000, "longer than 2048", id="too-long"),
]


@pytest.mark.parametrize(("address", "fragment"), BAD_ADDRESSES)
async def test_bad_addresses_are_refused_and_change_nothing(
    osnova: RunningServer, events: list[Event], address: str, fragment: str
) -> None:
    await call(osnova, "config.setServer", [ORIGINAL])
    with pytest.raises(RpcCallError) as refused:
        await call(osnova, "config.setServer", {"address": address})
    assert refused.value.code == INVALID_PARAMS
    assert refused.value.message.startswith("Invalid params: 'address' ")
    assert fragment in refused.value.message
    assert "hunter2" not in refused.value.message
    assert await call(osnova, "config.getServer") == ORIGINAL
    assert len(events) == 1  # only the original set


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"address": None}, id="null"),
        pytest.param({"address": 8443}, id="number"),
        pytest.param({"address": ["https://osnova.lan"]}, id="list"),
        pytest.param({"address": True}, id="bool"),
        pytest.param({}, id="missing"),
    ],
)
async def test_an_address_that_is_not_a_string_is_refused(
    osnova: RunningServer, events: list[Event], params: dict[str, Any]
) -> None:
    await call(osnova, "config.setServer", [ORIGINAL])
    with pytest.raises(RpcCallError) as refused:
        await call(osnova, "config.setServer", params)
    assert refused.value.code == INVALID_PARAMS
    assert "'address'" in refused.value.message
    assert await call(osnova, "config.getServer") == ORIGINAL
    assert len(events) == 1


async def test_get_server_is_null_without_any_address(osnova: RunningServer) -> None:
    assert await call(osnova, "config.getServer") is None


async def test_the_stored_address_overrides_the_config_and_survives_restart(state_dir: Path) -> None:
    config = make_config(state_dir, server={"advertised_address": "http://from-config:8080"})
    async with running_server(config) as first:
        assert await call(first, "config.getServer") == "http://from-config:8080"
        assert await call(first, "config.setServer", {"address": ORIGINAL}) is True
    async with running_server(config) as second:
        assert await call(second, "config.getServer") == ORIGINAL


async def test_an_owner_device_may_read_and_set_the_address(osnova: RunningServer) -> None:
    device_token = (await pair_device(osnova, role="owner"))["access_token"]
    async with OsnovaClient(osnova.url, device_token) as client:
        assert await client.call("config.setServer", [ORIGINAL]) is True
        assert await client.call("config.getServer") == ORIGINAL


@pytest.mark.parametrize(
    ("address", "normalized"),
    [("http://A.B.C", "http://a.b.c"), ("https://10.0.0.1:443/", "https://10.0.0.1:443"), ("http://host.", "http://host.")],
)
def test_normalize_server_address(address: str, normalized: str) -> None:
    assert normalize_server_address(address) == normalized
