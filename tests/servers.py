"""Pieces of the throwaway HTTP servers that manifest-fetching tests stand up."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


def bound_loopback_socket() -> socket.socket:
    """A TCP socket bound to an ephemeral port on 127.0.0.1, ready for web.SockSite."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def stream_forever(request: web.Request) -> web.StreamResponse:
    """Stream chunks until the client hangs up: a body that never ends."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    # A TLS transport swallows writes after the peer leaves instead of raising, and a write
    # that does not wait for the peer never yields: look for the hang-up and yield each round.
    while request.transport is not None and not request.transport.is_closing():
        await response.write(b" " * 65_536)
        await asyncio.sleep(0)
    return response


@asynccontextmanager
async def loopback_app(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on an ephemeral loopback port, without an access log; yield its base URL.

    No access log, so a test that reads the server's log finds only the server's lines.
    """
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
    await runner.setup()
    sock = bound_loopback_socket()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
