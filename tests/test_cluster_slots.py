"""WebSocket slots of max_clients and max_clients_per_device, counted across instances."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.cluster import socket, two_servers, wait_for


async def _upgrade_status(url: str, token: str) -> int:
    """The HTTP status of a WebSocket upgrade that is refused (101 if it was accepted)."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url.replace("http", "ws", 1) + "/ws", headers={"Authorization": f"Bearer {token}"}):
                return 101
        except aiohttp.WSServerHandshakeError as err:
            return err.status


async def test_max_clients_counts_the_sockets_of_every_instance(tmp_path: Path, redis_url: str) -> None:
    limits = {"server": {"max_clients": 1}}
    async with two_servers(tmp_path, redis_url, **limits) as (a, b):
        async with socket(a, a.admin_token()):
            assert await _upgrade_status(b.url, b.admin_token()) == 503
        # Closed on A: its slot comes free for B.
        await wait_for(lambda: a.runtime.connection_count() == 0, what="A's socket closing")
        async with socket(b, b.admin_token()):
            pass


async def test_one_owner_holds_at_most_max_clients_per_device_over_all(tmp_path: Path, redis_url: str) -> None:
    limits = {"server": {"max_clients": 10, "max_clients_per_device": 1}}
    async with two_servers(tmp_path, redis_url, **limits) as (a, b), socket(a, a.admin_token()):
        assert await _upgrade_status(b.url, b.admin_token()) == 503
