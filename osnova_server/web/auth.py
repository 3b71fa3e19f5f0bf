"""Bearer-token authentication for /rpc and /ws, decided before any body is read.

A request with an Authorization header either carries a valid `Bearer` token or is refused with
401 on the spot; a request without one goes on anonymous, and the RPC view lets it call only the
public methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from osnova_server.logs import audit
from osnova_server.security.tokens import TokenInvalid
from osnova_server.web.errors import json_error
from osnova_server.web.keys import CLAIMS_KEY, REMOTE_KEY, TOKEN_KEY

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

PROTECTED_PATHS: Final = frozenset({"/rpc", "/ws"})
CHALLENGE: Final = {"WWW-Authenticate": "Bearer"}


def unauthorized(message: str) -> web.Response:
    """A 401 answer with the Bearer challenge."""
    return json_error(401, message, CHALLENGE)


async def authenticate(request: web.Request, runtime: Runtime) -> web.Response | None:
    """Set the request's claims and token (None without a header); the 401 answer for a bad token."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None or request.path not in PROTECTED_PATHS or request.method == hdrs.METH_OPTIONS:
        request[CLAIMS_KEY] = None
        request[TOKEN_KEY] = None
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        audit("auth", outcome="refused", reason="not a bearer token", remote=request[REMOTE_KEY])
        runtime.record_auth_failure(request[REMOTE_KEY], "authorization_header")
        return unauthorized("the Authorization header must be `Bearer <token>`")
    try:
        try:
            claims = runtime.tokens.verify(token)
        except TokenInvalid as err:
            claims = await runtime.verify_again(token, err)  # paired on another process just now?
    except TokenInvalid as err:
        audit("auth", outcome="refused", reason=err.reason, remote=request[REMOTE_KEY])
        runtime.record_auth_failure(request[REMOTE_KEY], "access_token")
        return unauthorized(f"invalid access token: {err.reason}")
    request[CLAIMS_KEY] = claims
    request[TOKEN_KEY] = token
    runtime.record_seen(claims)
    return None
