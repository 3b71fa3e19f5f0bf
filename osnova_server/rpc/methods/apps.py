"""apps.list, apps.install, apps.uninstall: the Osnova apps this server keeps."""

from __future__ import annotations

from typing import Any

from osnova_server.errors import (
    FetchFailed,
    Forbidden,
    ManifestInvalid,
    RateLimited,
    UnsupportedScheme,
)
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


@rpc.method("apps.list", role=Role.MEMBER)
async def apps_list(ctx: Context) -> list[dict[str, Any]]:
    """List the installed apps, oldest install first."""
    return ctx.runtime.apps.installed()


@rpc.method("apps.install", role=Role.OWNER, errors=(Forbidden, ManifestInvalid, UnsupportedScheme, FetchFailed, RateLimited))
async def apps_install(ctx: Context, manifest_uri: str) -> str:
    """Install (or upgrade) the app whose manifest is at `manifest_uri`; return its id.

    `https://` manifests are fetched for owners and admins, `http://` only with `[apps] allow_http`,
    `ant://` through `[apps] ant_gateway`, and `file://` for admin tokens only (-32003 otherwise).
    At most `[limits] max_concurrent_fetches` fetches run at once, 2 per caller; past that the
    call is -32029 with `data.retry_after`.
    """
    # Fetch slots are counted as the rate limiter counts: per device, and per admin token.
    claims = ctx.claims
    principal = ctx.device_id or (f"admin token {claims.jti}" if claims is not None else ctx.principal)
    return await ctx.runtime.apps.install(manifest_uri, allow_file=ctx.role is Role.ADMIN, principal=principal)


@rpc.method("apps.uninstall", role=Role.OWNER)
async def apps_uninstall(ctx: Context, app_id: str) -> bool:
    """Remove an installed app; false if it was not installed."""
    return await ctx.runtime.apps.uninstall(app_id)
