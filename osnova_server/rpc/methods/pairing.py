"""pairing.start and pairing.complete: how a new device gets its first tokens."""

from __future__ import annotations

from typing import Any

from osnova_server.errors import InvalidParams, Unauthorized
from osnova_server.logs import audit
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.tokens import Scope
from osnova_server.services.pairing import DEFAULT_TTL, pairing_payload


@rpc.method("pairing.start", scope=Scope.DEVICE, errors=(InvalidParams,))
async def pairing_start(ctx: Context, name: str | None = None, ttl: int = DEFAULT_TTL) -> dict[str, Any]:
    """Issue a single-use pairing code and the payload a new device scans.

    `name` names the device to be paired (it wins over the name the device gives itself);
    `ttl` is the code's lifetime in seconds, from 30 to 3600.
    """
    issued = ctx.runtime.pairing.issue(name, ttl)
    audit("pairing.start", principal=ctx.principal, remote=ctx.remote, ttl=ttl, name=issued.record.name)
    return await pairing_payload(ctx.runtime, issued)


@rpc.method("pairing.complete", scope=Scope.PUBLIC, errors=(Unauthorized, InvalidParams))
async def pairing_complete(ctx: Context, token: str, device_name: str | None = None) -> dict[str, Any]:
    """Redeem a pairing code: register this device and return its access and refresh tokens.

    A wrong, used, expired or invalidated code is -32002; five wrong codes in total invalidate
    every outstanding code.
    """
    try:
        grant = await ctx.runtime.devices.pair(token, device_name, ctx.remote)
    except Unauthorized:
        ctx.runtime.record_auth_failure(ctx.remote, "pairing_code")
        raise
    return grant.to_json()
