"""identity.status: the server's own key, which paired devices pin."""

from __future__ import annotations

from typing import Any

from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


@rpc.method("identity.status", role=Role.MEMBER)
async def identity_status(ctx: Context) -> dict[str, Any]:
    """Report whether the server identity exists, its fingerprint and when it was made."""
    return ctx.runtime.identity.status()
