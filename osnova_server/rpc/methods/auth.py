"""auth.refresh: trade a refresh token for a new access token and a new refresh token."""

from __future__ import annotations

from typing import Any

from osnova_server.errors import Unauthorized
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


@rpc.method("auth.refresh", role=Role.PUBLIC, errors=(Unauthorized,))
async def auth_refresh(ctx: Context, refresh_token: str) -> dict[str, Any]:
    """Rotate a refresh token: the old one stops working, and presenting it again revokes the device.

    A bad refresh token is -32002.
    """
    try:
        grant = await ctx.runtime.devices.refresh(refresh_token, ctx.remote)
    except Unauthorized:
        ctx.runtime.record_auth_failure(ctx.remote, "refresh_token")
        raise
    return grant.to_json()
