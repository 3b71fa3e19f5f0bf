"""The servers osnova-server is measured against, on the same stack and event loop.

`bare`: the ceiling of this stack, an aiohttp handler that parses a JSON-RPC request, looks the
method up in a dict and answers (plus a WebSocket echo). `jsonrpcserver`: aiohttp with the
jsonrpcserver library's dispatch, what a user might pick instead of writing a server.

    python bench/peers.py {bare|jsonrpcserver} PORT [--uvloop] [--orjson]

`--uvloop` runs it on uvloop and `--orjson` makes the bare server parse and serialise with
orjson instead of the standard library's json: bench/run.py passes both for its `speedups`
rows, so the bare server is measured as the issue measured it, with and without the extra.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

# The same shape as osnova-server's apps.list answer for 50 installed apps.
APPS = [
    {
        "id": f"ant://bench-app-{i}", "name": f"Bench app {i}", "version": "1.0.0",
        "description": "An app for the benchmark.", "icon_uri": "ant://icon",
        "manifest_uri": f"file:///tmp/manifests/app{i}.json", "installed_at": "2026-11-26T10:00:00Z",
        "components": [{"id": "ant://ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
    }
    for i in range(50)
]

def _json_dumps(value: Any) -> bytes:
    """Serialise an answer with the standard library."""
    return json.dumps(value).encode()


loads: Callable[[bytes], Any] = json.loads
dumps: Callable[[Any], bytes] = _json_dumps


async def identity_status() -> dict[str, Any]:
    """A trivial method answering a small object, like osnova-server's identity.status."""
    return {"initialized": True, "fingerprint": "sha256:" + "0" * 64, "created_at": "2026-11-26T10:00:00Z"}


async def apps_list() -> list[dict[str, Any]]:
    """Fifty apps from memory."""
    return APPS


BARE_METHODS = {"identity.status": identity_status, "apps.list": apps_list}


async def bare_call(message: dict[str, Any]) -> dict[str, Any] | None:
    """Run one call of the bare server."""
    func = BARE_METHODS.get(message.get("method", ""))
    if func is None:
        return {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": message.get("id")}
    return {"jsonrpc": "2.0", "result": await func(), "id": message.get("id")}


async def bare_rpc(request: web.Request) -> web.Response:
    """POST /rpc of the bare server: parse, dispatch by dict, answer."""
    message = loads(await request.read())
    if isinstance(message, list):
        answer: Any = [await bare_call(m) for m in message]
    else:
        answer = await bare_call(message)
    return web.Response(body=dumps(answer), content_type="application/json")


async def bare_ws(request: web.Request) -> web.WebSocketResponse:
    """GET /ws of the bare server: answer each text frame as a JSON-RPC call."""
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for frame in socket:
        if frame.type == WSMsgType.TEXT:
            answer = await bare_call(loads(frame.data))
            await socket.send_str(dumps(answer).decode())
    return socket


async def health(request: web.Request) -> web.Response:
    """GET /health, for the readiness poll."""
    return web.json_response({"status": "healthy"})


def bare_app() -> web.Application:
    """The bare aiohttp JSON-RPC server."""
    app = web.Application()
    app.router.add_post("/rpc", bare_rpc)
    app.router.add_get("/ws", bare_ws)
    app.router.add_get("/health", health)
    return app


def jsonrpcserver_app() -> web.Application:
    """aiohttp with jsonrpcserver's dispatch."""
    from jsonrpcserver import Result, Success, async_dispatch, method

    @method(name="identity.status")
    async def status() -> Result:
        """identity.status through jsonrpcserver."""
        return Success(await identity_status())

    @method(name="apps.list")
    async def apps() -> Result:
        """apps.list through jsonrpcserver."""
        return Success(await apps_list())

    async def handle(request: web.Request) -> web.Response:
        """POST /rpc: jsonrpcserver parses, dispatches and serialises."""
        answer = await async_dispatch(await request.text())
        return web.Response(text=answer, content_type="application/json") if answer else web.Response(status=204)

    app = web.Application()
    app.router.add_post("/rpc", handle)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    """Serve the named peer on 127.0.0.1:PORT until SIGTERM."""
    global loads, dumps
    kind, port = sys.argv[1], int(sys.argv[2])
    if "--orjson" in sys.argv:
        import orjson

        loads, dumps = orjson.loads, orjson.dumps
    if "--uvloop" in sys.argv:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = bare_app() if kind == "bare" else jsonrpcserver_app()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
