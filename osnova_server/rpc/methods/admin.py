"""admin.loginLink: a one-time link that signs a browser into the admin page (/admin/)."""

from __future__ import annotations

from typing import Any, Final

from osnova_server.errors import InvalidParams
from osnova_server.logs import audit
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role
from osnova_server.services.admin_sessions import DEFAULT_LINK_TTL, MAX_LINK_TTL, MIN_LINK_TTL
from osnova_server.services.pairing import server_address
from osnova_server.timestamps import from_epoch

# The secret travels in the fragment, which a browser never sends: it stays out of access logs,
# proxies and Referer headers, and the page's script hands it to the server in a POST.
LOGIN_PATH: Final = "/admin/login#"


@rpc.method("admin.loginLink", role=Role.OWNER, errors=(InvalidParams,))
async def admin_login_link(ctx: Context, ttl: int = DEFAULT_LINK_TTL) -> dict[str, Any]:
    """Issue a single-use link that opens a 12-hour admin session in the browser that follows it.

    Owner devices and admins may ask for one: the session acts as admin, as CONTRACT 7 says.

    `ttl` is how long the link may wait to be opened, from 60 to 3600 seconds (default 600).
    """
    if not MIN_LINK_TTL <= ttl <= MAX_LINK_TTL:
        raise InvalidParams(f"Invalid params: 'ttl' must be from {MIN_LINK_TTL} to {MAX_LINK_TTL} seconds, not {ttl}")
    link = await ctx.runtime.admin_sessions.issue_link(ttl)
    audit("admin.loginLink", principal=ctx.principal, remote=ctx.remote, ttl=ttl)
    return {
        "url": f"{await server_address(ctx.runtime)}{LOGIN_PATH}{link.secret}",
        "expires_at": from_epoch(link.expires_at),
    }
