"""The admin page under /admin/: a small web application served by the daemon itself (CONTRACT 7).

Plain files (one HTML page, one script, one stylesheet) with no build step and nothing from
another host, so it works on a LAN without internet. `setup_admin` adds its routes and the
headers every /admin answer carries.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web

from osnova_server.web.admin.live import setup_live
from osnova_server.web.admin.views import (
    STATIC,
    admin_rpc_view,
    login_page_view,
    login_view,
    logout_view,
    page_view,
    qr_image_view,
    qr_seal_view,
    root_view,
    session_view,
)

PREFIX: Final = "/admin"
# No inline script or style anywhere, no framing; the page is written to satisfy this.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _add_page_headers(request: web.Request, response: web.StreamResponse) -> None:
    """CSP and friends on every /admin answer; nothing of it is cached but the static files."""
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return
    response.headers.update(PAGE_HEADERS)
    if hdrs.CACHE_CONTROL not in response.headers:
        static = path.startswith(PREFIX + "/static/")
        response.headers[hdrs.CACHE_CONTROL] = "no-cache" if static else "no-store"


def setup_admin(app: web.Application) -> None:
    """Add the admin page's routes, its live socket and its response headers."""
    router = app.router
    router.add_get(PREFIX, root_view)
    router.add_get(f"{PREFIX}/", page_view)
    router.add_get(f"{PREFIX}/login", login_page_view)
    router.add_post(f"{PREFIX}/login", login_view)
    router.add_post(f"{PREFIX}/logout", logout_view)
    router.add_get(f"{PREFIX}/api/session", session_view)
    router.add_post(f"{PREFIX}/rpc", admin_rpc_view)
    router.add_post(f"{PREFIX}/qr", qr_seal_view)
    router.add_get(PREFIX + "/qr/{sealed:[A-Za-z0-9_=-]+}.svg", qr_image_view)
    router.add_static(f"{PREFIX}/static/", STATIC)
    setup_live(app)
    app.on_response_prepare.append(_add_page_headers)
