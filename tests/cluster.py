"""Two osnova-server instances, A and B, sharing one Redis (and, given a URL, one PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from osnova_server.client import RpcCallError
from tests.conftest import RunningServer, make_config, running_server


def cluster_config(state_dir: Path, redis_url: str, store_url: str = "", name: str = "", **sections: dict[str, Any]) -> Any:
    """A test config in cluster mode: Redis at `redis_url`, the store at `store_url` (or SQLite)."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    return make_config(
        state_dir,
        cluster={"redis_url": redis_url, "instance_name": name},
        store={"url": store_url},
        **sections,
    )


@asynccontextmanager
async def two_servers(
    tmp_path: Path, redis_url: str, store_url: str = "", **sections: dict[str, Any],
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Instances A and B in this event loop, each with its own state dir, sharing the engines."""
    async with AsyncExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            config = cluster_config(tmp_path / name, redis_url, store_url, name, **sections)
            servers.append(await stack.enter_async_context(running_server(config)))
        yield servers[0], servers[1]


async def call(server: RunningServer, method: str, params: Any = None, token: str | None = None) -> Any:
    """Call `method` on `server` (as admin unless `token` is given) and return its result."""
    async with server.client(token, admin=token is None) as client:
        return await client.call(method, params)


async def call_error(server: RunningServer, method: str, params: Any = None, token: str | None = None) -> RpcCallError:
    """Call `method` expecting an RPC error; return it."""
    try:
        await call(server, method, params, token)
    except RpcCallError as err:
        return err
    raise AssertionError(f"{method} succeeded")


async def pair(issuer: RunningServer, redeemer: RunningServer, **params: Any) -> dict[str, Any]:
    """Issue a code on `issuer`, redeem it on `redeemer`; the grant."""
    payload = await call(issuer, "pairing.start", params or None)
    grant = await call(redeemer, "pairing.complete", {"token": payload["pairing"]["code"]}, token="")
    assert isinstance(grant, dict)
    return grant


async def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll an (async or plain) condition every 20 ms until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(0.02)


def is_connected(message: dict[str, Any]) -> bool:
    """Whether a first server message is the `connected` notification (either shape)."""
    return message.get("method") == "connected" or message.get("type") == "connected"


@asynccontextmanager
async def socket(server: RunningServer, token: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An authenticated WebSocket to `server`, past its `connected` message."""
    async with aiohttp.ClientSession() as session:
        url = server.url.replace("http", "ws", 1) + "/ws"
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
            assert is_connected(await ws.receive_json(timeout=10))
            yield ws
