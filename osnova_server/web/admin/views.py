"""The admin page's HTTP views: the page, signing in and out, the RPC bridge and the QR image.

Every view under /admin/ that reads or changes anything runs behind `guarded`: a request from
another origin is 403 before anything else; without a live session it is 401 (the page then
shows how to get a new link); a POST without the session's CSRF token is 403. Nothing else is
trusted: bearer tokens are not accepted here, and no token is ever handed to the browser.
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import string
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import hdrs, web

from osnova_server.logs import audit
from osnova_server.services.admin_sessions import AdminSession
from osnova_server.timestamps import from_epoch
from osnova_server.web.admin.csrf import CSRF_HEADER, cross_origin, token_matches
from osnova_server.web.admin.live import LIVE_KEY
from osnova_server.web.admin.qr import MAX_TEXT_CHARS, QrSeal, qr_svg
from osnova_server.web.admin.session import (
    clear_session_cookie,
    current_session,
    session_claims,
    set_session_cookie,
)
from osnova_server.web.errors import json_error
from osnova_server.web.keys import CLAIMS_KEY, REMOTE_KEY, STATE_KEY
from osnova_server.web.rpc_view import rpc_view

SESSION_KEY: Final = web.RequestKey("admin_session", AdminSession)

STATIC: Final = Path(__file__).parent / "static"
TEMPLATES: Final = Path(__file__).parent / "templates"
HTML: Final = "text/html"
NEW_LINK: Final = "run `osnova-server admin-url` on the server and open the link it prints"
SESSION_ENDED: Final = f"your admin session has ended (logged out, 12 hours passed, or the server restarted); {NEW_LINK}"
CROSS_ORIGIN: Final = "requests to the admin page must come from the admin page itself"
BAD_CSRF: Final = f"this request lacks the session's {CSRF_HEADER} header; reload the admin page"
# The login form's one field; a link secret is 43 characters.
MAX_SECRET_CHARS: Final = 128

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _template(name: str) -> string.Template:
    """One of the page templates, read once."""
    return string.Template((TEMPLATES / name).read_text(encoding="utf-8"))


_NOTICE: Final = _template("notice.html")


def notice(status: int, title: str, message: str) -> web.Response:
    """A small HTML page that says what happened and what to do; every value is escaped."""
    body = _NOTICE.substitute(title=html.escape(title), message=html.escape(message))
    return web.Response(status=status, text=body, content_type=HTML)


def guarded(*, csrf: bool) -> Callable[[Handler], Handler]:
    """Admit a same-origin request with a live session (and, with `csrf`, its CSRF token)."""

    def wrap(view: Handler) -> Handler:
        @functools.wraps(view)
        async def guarded_view(request: web.Request) -> web.StreamResponse:
            if cross_origin(request):
                return json_error(403, CROSS_ORIGIN)
            session = await current_session(request)
            if session is None:
                return json_error(401, SESSION_ENDED, signed_out=True)
            if csrf and not token_matches(request, session.csrf_token):
                audit("admin", outcome="refused", reason="csrf token", remote=request[REMOTE_KEY])
                return json_error(403, BAD_CSRF)
            request[SESSION_KEY] = session
            return await view(request)

        return guarded_view

    return wrap


async def root_view(request: web.Request) -> web.StreamResponse:
    """GET /admin: the page lives at /admin/."""
    raise web.HTTPPermanentRedirect("/admin/")


async def page_view(request: web.Request) -> web.StreamResponse:
    """GET /admin/: the application for a signed-in browser, else how to sign in."""
    if await current_session(request) is None:
        return notice(401, "Sign in to the admin page", "You are not signed in, or your session has ended.")
    return web.FileResponse(TEMPLATES / "index.html")


async def login_page_view(request: web.Request) -> web.StreamResponse:
    """GET /admin/login: the link's landing page; its script posts the link's secret."""
    return web.FileResponse(TEMPLATES / "login.html")


async def login_view(request: web.Request) -> web.StreamResponse:
    """POST /admin/login: spend a link's secret, open a session, and go to the page."""
    if cross_origin(request):
        return notice(403, "Sign-in refused", "This sign-in did not come from the admin page's own sign-in link.")
    form = await request.post()
    secret = form.get("secret")
    runtime = request.app[STATE_KEY].runtime
    opened = None
    if isinstance(secret, str) and 0 < len(secret) <= MAX_SECRET_CHARS:
        opened = await runtime.admin_sessions.redeem_link(secret)
    remote = request[REMOTE_KEY]
    if opened is None:
        audit("admin.login", outcome="refused", remote=remote)
        runtime.record_auth_failure(remote, "admin_login_link")
        return notice(
            403, "This sign-in link does not work",
            "The link was already used or has expired: each link works once, and only for a while.",
        )
    audit("admin.login", outcome="ok", remote=remote, session=opened.session.key[:16])
    response = web.Response(status=303, headers={hdrs.LOCATION: "/admin/"})
    set_session_cookie(request, response, opened.cookie)
    return response


@guarded(csrf=True)
async def logout_view(request: web.Request) -> web.StreamResponse:
    """POST /admin/logout: end the session on the server and drop the cookie."""
    session = request[SESSION_KEY]
    await request.app[STATE_KEY].runtime.admin_sessions.end(session.key)
    request.app[LIVE_KEY].sign_out(session)
    audit("admin.logout", outcome="ok", remote=request[REMOTE_KEY], session=session.key[:16])
    response = web.json_response({"signed_out": True})
    clear_session_cookie(request, response)
    return response


@guarded(csrf=False)
async def session_view(request: web.Request) -> web.StreamResponse:
    """GET /admin/api/session: the CSRF token and expiry the page keeps in memory."""
    session = request[SESSION_KEY]
    return web.json_response({"csrf_token": session.csrf_token, "expires_at": from_epoch(session.expires_at)})


@guarded(csrf=True)
async def admin_rpc_view(request: web.Request) -> web.StreamResponse:
    """POST /admin/rpc: JSON-RPC as admin, with the session standing in for a bearer token.

    The request goes through the very view that serves /rpc (size limit, rate limit, batches,
    the one dispatcher), so no method is written twice.
    """
    request[CLAIMS_KEY] = session_claims(request[SESSION_KEY])
    return await rpc_view(request)


@guarded(csrf=True)
async def qr_seal_view(request: web.Request) -> web.StreamResponse:
    """POST /admin/qr: the same-origin URL of an SVG QR code of the posted text."""
    try:
        body: Any = json.loads(await request.text())
    except ValueError:
        return json_error(400, 'the body must be JSON: {"text": "..."}')
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT_CHARS:
        return json_error(400, f'"text" must be a string of 1 to {MAX_TEXT_CHARS} characters')
    return web.json_response({"url": f"/admin/qr/{_seal(request).seal(text)}.svg"})


@guarded(csrf=False)
async def qr_image_view(request: web.Request) -> web.StreamResponse:
    """GET /admin/qr/{sealed}.svg: the QR code image."""
    text = _seal(request).open(request.match_info["sealed"])
    if text is None:
        return json_error(404, "this QR code has expired; start the pairing again")
    svg = await asyncio.to_thread(qr_svg, text)
    return web.Response(body=svg, content_type="image/svg+xml", headers={hdrs.CACHE_CONTROL: "private, max-age=3600"})


def _seal(request: web.Request) -> QrSeal:
    """The QR seal under the server's current secret (cheap; a rotated secret voids old images)."""
    return QrSeal(request.app[STATE_KEY].runtime.secret)
