"""Security headers on every answer, and a Server header that names no version."""

from __future__ import annotations

from typing import Final

from aiohttp import web

SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Server": "osnova-server",
}


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set the headers just before the answer's head is sent (errors and WebSockets included)."""
    response.headers.update(SECURITY_HEADERS)


def setup_headers(app: web.Application) -> None:
    """Add security headers to every response of `app`."""
    app.on_response_prepare.append(_add_headers)
