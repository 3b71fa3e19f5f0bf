"""POST /rpc: JSON-RPC 2.0 over HTTP; and GET /openrpc.json, the document `rpc.discover` answers.

The order of checks is the contract's: the token was verified by the auth check (web/pipeline.py)
before the body was read; then the body is read within its size limit and parsed whatever its Content-Type;
an anonymous caller that names any non-public method gets 401 and nothing runs; the rate limiter
charges one token per batch member; only then does anything run.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from osnova_server.rpc import codec, openrpc, protocol
from osnova_server.rpc.context import Context
from osnova_server.web.auth import unauthorized
from osnova_server.web.keys import CLAIMS_KEY, REMOTE_KEY, STATE_KEY
from osnova_server.web.ratelimit import charge

JSON_CONTENT_TYPE: Final = "application/json"
# Below this, compressing costs more CPU than it saves bytes on a LAN.
COMPRESS_MIN_BYTES: Final = 4096


async def rpc_view(request: web.Request) -> web.StreamResponse:
    """Answer one JSON-RPC request or batch."""
    state = request.app[STATE_KEY]
    runtime = state.runtime
    dispatcher = state.dispatcher
    raw = await request.read()  # over client_max_size aiohttp answers 413 on its own
    envelope = protocol.decode(raw, runtime.config.limits.max_batch)
    del raw
    claims = request[CLAIMS_KEY]
    if claims is None and envelope.error is None:
        registry = dispatcher.registry
        if not all(registry.is_public(name) for name in envelope.method_names()):
            return unauthorized("this method needs a bearer token; pair a device or use `osnova-server token`")
    refusal = await charge(request, envelope.cost)
    if refusal is not None:
        return refusal
    ctx = Context(runtime, claims, request[REMOTE_KEY], "http")
    # Built within [limits] max_response_bytes: members past it are answered -32007.
    body = await dispatcher.respond(envelope, ctx, runtime.config.limits.max_response_bytes)
    if body is None:
        return web.Response(status=204)
    response = web.Response(body=body, content_type=JSON_CONTENT_TYPE)
    if len(body) > COMPRESS_MIN_BYTES:
        # aiohttp picks gzip or deflate from Accept-Encoding, and sends identity without one.
        response.enable_compression()
    return response


async def openrpc_view(request: web.Request) -> web.Response:
    """Serve the OpenRPC document to anyone, as `rpc.discover` does (encoded once, kept)."""
    registry = request.app[STATE_KEY].dispatcher.registry
    body = registry.derived("openrpc.json", lambda built: codec.dumps(openrpc.document(built)))
    response = web.Response(body=body, content_type=JSON_CONTENT_TYPE)
    response.enable_compression()
    return response
