"""/admin/live (web/admin/live.py): the admin page's WebSocket, opened with the session cookie."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from osnova_server.web.admin.live import OVERVIEW_TOPIC
from tests.admin_client import SAME_ORIGIN, AdminPage
from tests.conftest import RunningServer

OVERVIEW_FIELDS = {
    "status", "version", "uptime", "services", "tls", "certificate_expires_at", "connections",
    "max_connections", "active_devices", "paired_devices", "apps", "timestamp",
}


@pytest.fixture
async def page(osnova: RunningServer) -> Any:
    async with AdminPage(osnova) as signed_in:
        yield await signed_in.sign_in()


def live_url(page: AdminPage) -> str:
    return page.server.url.replace("http://", "ws://") + "/admin/live"


async def next_event(socket: aiohttp.ClientWebSocketResponse, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    """The data of the next event of `topic` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await socket.receive_json()
            if message["method"] == "event" and message["params"]["topic"] == topic:
                data: dict[str, Any] = message["params"]["data"]
                return data


async def test_the_socket_opens_with_an_overview_and_forwards_events(page: AdminPage) -> None:
    async with page.http.ws_connect(live_url(page), headers=SAME_ORIGIN) as socket:
        overview = await next_event(socket, OVERVIEW_TOPIC)
        assert set(overview) == OVERVIEW_FIELDS
        assert overview["tls"] is False and overview["certificate_expires_at"] is None
        assert {service["name"] for service in overview["services"]} >= {"database", "scheduler"}
        assert overview["connections"] == 0  # the admin page takes none of the household's slots
        await page.call("config.setServer", {"address": "http://live.example:8080"})
        assert await next_event(socket, "config.changed") == {"key": "server.address", "value": "http://live.example:8080"}
        # ...and a fresh overview follows the change, without the page asking.
        assert set(await next_event(socket, OVERVIEW_TOPIC)) == OVERVIEW_FIELDS


async def test_the_overview_counts_household_sockets(page: AdminPage) -> None:
    async with page.http.ws_connect(live_url(page), headers=SAME_ORIGIN) as socket:
        await next_event(socket, OVERVIEW_TOPIC)
        async with page.server.client(admin=True) as client, client.websocket():
            # The next push (after the interval) shows the new connection.
            async with asyncio.timeout(15):
                while (await next_event(socket, OVERVIEW_TOPIC, 15))["connections"] != 1:
                    pass


async def test_logout_closes_the_socket_with_4401(page: AdminPage) -> None:
    async with page.http.ws_connect(live_url(page), headers=SAME_ORIGIN) as socket:
        await next_event(socket, OVERVIEW_TOPIC)
        assert (await page.post("/admin/logout", {}))[0] == 200
        async with asyncio.timeout(10):
            while (await socket.receive()).type is not aiohttp.WSMsgType.CLOSE:
                pass
        assert socket.close_code == 4401


async def test_server_shutdown_closes_the_socket_with_1001(osnova: RunningServer) -> None:
    async with AdminPage(osnova) as page:
        await page.sign_in()
        socket = await page.http.ws_connect(live_url(page), headers=SAME_ORIGIN)
        await next_event(socket, OVERVIEW_TOPIC)
        stopping = asyncio.create_task(osnova.server.stop())
        async with asyncio.timeout(10):
            while (message := await socket.receive()).type is not aiohttp.WSMsgType.CLOSE:
                pass
        assert socket.close_code == 1001
        assert "stopping" in message.extra
        await stopping


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
    {"Origin": "http://evil.example"},
])
async def test_a_cross_origin_socket_is_refused(page: AdminPage, headers: dict[str, str]) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await page.http.ws_connect(live_url(page), headers=headers)
    assert refused.value.status == 403


async def test_without_a_session_the_socket_is_refused(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(osnova.url.replace("http://", "ws://") + "/admin/live")
    assert refused.value.status == 401
