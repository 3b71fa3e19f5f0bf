"""The servers osnova-server is measured against, on the same stack and event loop.

`bare`: the ceiling of this stack, an aiohttp handler that parses a JSON-RPC request, looks the
method up in a dict and answers (plus a WebSocket echo). `jsonrpcserver`: aiohttp with the
jsonrpcserver library's dispatch, what a user might pick instead of writing a server.
Run: python bench/peers.py {bare|jsonrpcserver} PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aiohttp import WSMsgType, web

APPS = [{"id": f"app{i}", "name": f"App {i}", "version": "1.0.0"} for i in range(50)]


async def status() -> dict[str, Any]:
    """A trivial method answering a small object."""
    return {"initialized": True, "fingerprint": "sha256:" + "0" * 64, "created_at": "2026-11-26T10:00:00Z"}


BARE_METHODS = {"identity.status": status}


async def bare_call(message: dict[str, Any]) -> dict[str, Any] | None:
    """Run one call of the bare server."""
    func = BARE_METHODS.get(message.get("method", ""))
    if func is None:
        return {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": message.get("id")}
    return {"jsonrpc": "2.0", "result": await func(), "id": message.get("id")}


async def bare_rpc(request: web.Request) -> web.Response:
    """POST /rpc of the bare server: parse, dispatch by dict, answer."""
    message = json.loads(await request.read())
    if isinstance(message, list):
        answer: Any = [await bare_call(m) for m in message]
    else:
        answer = await bare_call(message)
    return web.json_response(answer)


async def bare_ws(request: web.Request) -> web.WebSocketResponse:
    """GET /ws of the bare server: echo each text frame as a JSON-RPC answer."""
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for frame in socket:
        if frame.type == WSMsgType.TEXT:
            message = json.loads(frame.data)
            await socket.send_str(json.dumps(await bare_call(message)))
    return socket


def bare_app() -> web.Application:
    """The bare aiohttp JSON-RPC server."""
    app = web.Application()
    app.router.add_post("/rpc", bare_rpc)
    app.router.add_get("/ws", bare_ws)
    app.router.add_get("/health", lambda request: web.json_response({"status": "healthy"}))
    return app


def jsonrpcserver_app() -> web.Application:
    """aiohttp with jsonrpcserver's dispatch."""
    from jsonrpcserver import Result, Success, async_dispatch, method

    @method(name="identity.status")
    async def identity_status() -> Result:
        return Success(await status())

    async def handle(request: web.Request) -> web.Response:
        answer = await async_dispatch(await request.text())
        return web.Response(text=answer, content_type="application/json") if answer else web.Response(status=204)

    app = web.Application()
    app.router.add_post("/rpc", handle)
    return app


def main() -> None:
    """Serve the named peer on 127.0.0.1:PORT until killed."""
    kind, port = sys.argv[1], int(sys.argv[2])
    if "--uvloop" in sys.argv:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = bare_app() if kind == "bare" else jsonrpcserver_app()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
