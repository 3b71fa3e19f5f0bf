"""The admin session as the web layer sees it: the cookie, and the admin claims a session acts with.

The cookie is CONTRACT 7's: `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's
page sends it), `Path=/admin` (no other route sees it), `Secure` when served over TLS, and
12 hours long. It holds only a random id; what it opens lives in the server's session store.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from osnova_server.security.tokens import ADMIN_SUBJECT, Claims, Scope
from osnova_server.services.admin_sessions import SESSION_LIFETIME, AdminSession
from osnova_server.web.keys import STATE_KEY

COOKIE_NAME: Final = "osnova_admin"
COOKIE_PATH: Final = "/admin"
# A cookie longer than this was not set by us; it is not even hashed.
MAX_COOKIE_CHARS: Final = 128


async def current_session(request: web.Request) -> AdminSession | None:
    """The live session the request's cookie names, or None."""
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie or len(cookie) > MAX_COOKIE_CHARS:
        return None
    return await request.app[STATE_KEY].runtime.admin_sessions.get(cookie)


def session_claims(session: AdminSession) -> Claims:
    """The admin claims a session's calls run with: the dispatcher sees an admin, as CONTRACT 7 says.

    The `jti` names the session (by a prefix of its key), so the rate limiter gives each
    signed-in browser its own bucket, as it gives each admin token one.
    """
    return Claims(
        subject=ADMIN_SUBJECT,
        device_id=None,
        scope=Scope.ADMIN,
        jti=f"admin-session:{session.key[:16]}",
        issued_at=session.created_at,
        expires_at=session.expires_at,
    )


def set_session_cookie(request: web.Request, response: web.StreamResponse, cookie: str) -> None:
    """Hand the browser its session cookie."""
    response.set_cookie(
        COOKIE_NAME, cookie, max_age=SESSION_LIFETIME, path=COOKIE_PATH,
        httponly=True, samesite="Strict", secure=request.secure,
    )


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Tell the browser to forget its session cookie."""
    response.del_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.secure)
