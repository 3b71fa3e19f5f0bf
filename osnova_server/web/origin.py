"""The Origin check on /rpc and /ws: a web page from elsewhere gets 403 before anything is read.

A browser sends `Origin` with every cross-site POST (even a CORS-"simple" `text/plain` one that
needs no preflight) and with every WebSocket upgrade. Unless that origin is one of `[cors]
allowed_origins` (or `*` is) or the server's own (`scheme://Host`), the request is refused
here: before its body is read, before the socket is upgraded, before its token is looked at,
so it runs nothing and counts nothing towards a ban. Requests without `Origin` (curl, phone
apps, the CLI) are not affected; preflights (OPTIONS) are aiohttp-cors's to answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from osnova_server.web.cors import ANY_ORIGIN
from osnova_server.web.errors import json_error

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

CHECKED_PATHS: Final = frozenset({"/rpc", "/ws"})
_SHOWN_CHARS: Final = 100


def origin_allowed(origin: str, own: str, allowed: Sequence[str]) -> bool:
    """Whether a browser page at `origin` may call this server."""
    origin = origin.strip().rstrip("/").lower()
    if origin == own.lower():
        return True
    return any(entry == ANY_ORIGIN or entry.rstrip("/").lower() == origin for entry in allowed)


def origin_refusal(request: web.Request, runtime: Runtime) -> web.Response | None:
    """The 403 answer for a cross-origin call or upgrade on /rpc or /ws, else None."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or request.path not in CHECKED_PATHS or request.method == hdrs.METH_OPTIONS:
        return None
    own = f"{request.scheme}://{request.host}"
    if origin_allowed(origin, own, runtime.config.cors.allowed_origins):
        return None
    return json_error(
        403,
        f"web pages from {origin[:_SHOWN_CHARS]} may not call this server; if you trust that page, "
        "add its origin to [cors] allowed_origins",
    )
